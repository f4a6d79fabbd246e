"""Routing counts from a calibration pass (`--calibration=`), for `frequency`.

When a checkpoint has no routing counts (meta['routing_counts'] missing or all zero, e.g. a
pruned or converted checkpoint), or the user asks for fresh ones, the checkpoint's own model
runs in evaluation mode (no mask, eval routing) on calibration tiles and every router's
`tokens_per_expert` is summed over the batches: {router: (L, E)} in the layout of
meta['routing_counts'] (train/step.py adds the same statistic every step). Every valid token of
a block counts top_k times in each router it passes (collab: every token; special: the tokens
of each router's modality, among that modality's Es columns).

The tiles (at most `calibration_batches` batches of 32, centre-cropped to model.img_size by the
evaluation pipeline, data/pipeline.make_eval_dataset):
  simulator           unseen simulator tiles of the run's sensors (`tools/linear_probe.
                      probe_sensors`; another simulator seed than the probe's and the training's)
  DIR                 an ingestion output (`python -m ringmoe_jax.data.ingest`: manifest.json +
                      .array_record shards; what data.source=arrayrecord, data.paths=(DIR,) reads)
  FORMAT:ROOT:SENSOR  a dataset of a fine-tuning reader (data/readers: the fields format / root /
                      sensor of `task.reader`, e.g. class_folders:/data/eurosat:sentinel2_l2a),
                      every record of it (both splits); each view of a record is one tile
Every tile's sensor must be one of the run's registry whose modality the model has.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringmoe_jax.errors import UserError

CALIBRATIONS = ("simulator", "DIR (an ingestion output)", "FORMAT:ROOT:SENSOR (a reader dataset)")
CALIBRATION_SEED = 20_000  # neither the training scenes nor the linear probe's (10_000)


def parse_calibration(calibration: str) -> tuple[str, dict[str, str] | None]:
  """'simulator' -> ('simulator', None); DIR -> ('arrayrecord', {'root'});
  FORMAT:ROOT:SENSOR -> ('reader', {'format', 'root', 'sensor'}); a missing path -> UserError."""
  from ringmoe_jax.data.readers import READERS  # pylint: disable=import-outside-toplevel
  if calibration == "simulator":
    return "simulator", None
  fmt, _, rest = calibration.partition(":")
  if fmt in READERS and rest:
    root, _, sensor = rest.rpartition(":")
    if not root or not sensor:
      raise UserError(f"--calibration={calibration}: a reader dataset is FORMAT:ROOT:SENSOR, "
                      "e.g. class_folders:/data/eurosat:sentinel2_l2a")
    kind, spec = "reader", {"format": fmt, "root": root, "sensor": sensor}
  else:
    kind, spec = "arrayrecord", {"root": calibration}
  if not os.path.exists(spec["root"]):
    raise UserError(f"--calibration={calibration}: {spec['root']} does not exist; expected one "
                    f"of {', '.join(CALIBRATIONS)}")
  return kind, spec


def check_calibration(calibration: str | None, batches: int) -> None:
  if calibration is not None:
    parse_calibration(calibration)
  if int(batches) < 1:
    raise UserError(f"--calibration_batches={batches}: must be >= 1")


def bind(config, task, params) -> nnx.Module:
  """`task`'s model of `config` holding `params` (built abstractly: nothing initialised)."""
  from ringmoe_jax.train.setup import abstract_task_model  # pylint: disable=import-outside-toplevel
  graphdef, state = nnx.split(abstract_task_model(config, task), nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


def simulator_batches(config, registry, num_batches: int, batch_size: int = 32):
  """`num_batches` full evaluation batches of unseen simulated tiles of the run's sensors."""
  from ringmoe_jax.tools import linear_probe  # pylint: disable=import-outside-toplevel
  if not linear_probe.probe_sensors(config, registry):
    raise UserError("--calibration=simulator: the run's config names no sensors (data.sensors)")
  batches = linear_probe.probe_batches(config, num_batches * batch_size, batch_size=batch_size,
                                       seed=CALIBRATION_SEED, registry=registry)
  return batches[:num_batches]


def _dataset_tiles(kind: str, spec: dict[str, str], registry):
  """The calibration dataset's tile records ({sensor, pixels (H, W, C), valid (H, W)}) as a
  random-access source."""
  from ringmoe_jax.data import sources  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.data.readers import make_reader  # pylint: disable=import-outside-toplevel
  if kind == "arrayrecord":
    return sources.open_tiles(spec["root"])
  cfg = dict(spec, val_fraction=0.0)  # every record in 'train'
  return _Views(make_reader(cfg, registry, "train"))


class _Views:
  """A reader's task records as tiles: record i's views -> tiles (each {sensor, pixels,
  valid}); the view count is read off the first record."""

  def __init__(self, records):
    self.records = records
    self.views = len(records[0]["views"]) if len(records) else 1

  def __len__(self) -> int:
    return len(self.records) * self.views

  def __getitem__(self, i: int) -> dict[str, Any]:
    v = self.records[i // self.views]["views"][i % self.views]
    return {"sensor": v["sensor"], "pixels": v["pixels"], "valid": v["valid"]}


def dataset_batches(config, registry, calibration: str, num_batches: int,
                    batch_size: int = 32) -> list[dict[str, np.ndarray]]:
  """Up to `num_batches` evaluation batches of the tiles of the dataset `calibration` (DIR or
  FORMAT:ROOT:SENSOR, module docstring); bad input -> UserError naming it."""
  from ringmoe_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.prune.plan import source_modalities  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.model import input_channels  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.errors import ReaderError  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.data.tiles import TileFormatError  # pylint: disable=import-outside-toplevel
  kind, spec = parse_calibration(calibration)
  try:
    tiles = _dataset_tiles(kind, spec, registry)
  except (ReaderError, TileFormatError) as e:  # the reader's message, naming the file
    raise UserError(f"--calibration={calibration}: {e}") from None
  n = min(len(tiles), num_batches * batch_size)
  if n == 0:
    raise UserError(f"--calibration={calibration}: the dataset holds no tiles")
  have = source_modalities(config)
  for name in sorted({tiles[i]["sensor"] for i in range(n)}):
    if name not in registry:
      raise UserError(f"--calibration={calibration}: sensor {name!r} is not one of the run's "
                      f"sensors ({', '.join(registry.names())})")
    if registry.get(name).modality not in have:
      raise UserError(f"--calibration={calibration}: sensor {name!r} is "
                      f"{registry.get(name).modality} but this model has only {', '.join(have)}")
  ds = pipeline.make_eval_dataset(
      _Prefix(tiles, n), registry=registry, batch_size=batch_size,
      crop_size=int(config.model.img_size), max_channels=input_channels(config, registry))
  return [ds[i] for i in range(len(ds))]


class _Prefix:
  """The first n records of a random-access source."""

  def __init__(self, source, n: int):
    self.source, self.n = source, n

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.source[i]


@functools.partial(jax.jit, static_argnums=0)
def _count(graphdef, state, b):
  """One batch's {router: (L, E)} tokens per expert (module-level: one program per encoder
  and batch shape, whichever calibration calls it)."""
  enc = nnx.merge(graphdef, state)
  _, aux = enc(b["pixels"], b["modality"], sensor=b["sensor"], mask=None, valid=b["valid"],
               train=False, channels=b.get("channels"))
  return {k: r["tokens_per_expert"] for k, r in aux["routing"].items()}


def routing_counts(model, batches) -> dict[str, np.ndarray]:
  """{router: (L, E) float64} tokens each expert received over `batches` (eval mode)."""
  graphdef, state = nnx.split(model.encoder)
  keys = ("pixels", "modality", "valid", "sensor", "channels")
  total: dict[str, Any] = {}
  for b in batches:
    got = _count(graphdef, state, {k: jnp.asarray(b[k]) for k in keys if k in b})
    for k, v in got.items():
      total[k] = total.get(k, 0) + np.asarray(v, np.float64)
  return total


def calibration_counts(calibration: str, config, registry, task, params, num_batches: int,
                       batch_size: int = 32) -> dict[str, np.ndarray]:
  """The calibration pass of the module docstring on the tiles `calibration` names."""
  if parse_calibration(calibration)[0] == "simulator":
    batches = simulator_batches(config, registry, num_batches, batch_size)
  else:
    batches = dataset_batches(config, registry, calibration, num_batches, batch_size)
  return routing_counts(bind(config, task, params), batches)
