"""A fine-tuned model on batches of scene windows: the checkpoint, its sensors, one jitted program.

`WindowPredictor.from_workdir(config, workdir)` loads a fine-tuning run as `ringmoe_jax.evaluate`
does (latest or given step, the sensor registry saved with the checkpoint: ids, normalisation
and band order of the training run), on this machine's devices (any mesh). Calling it on a
list of windows, each [(pixels (S, S, C) physical, valid (S, S)) per view], returns

  dense tasks (segmentation, change detection, height):  (n, K, S, S) float32
      class probabilities (softmax of the logits; K classes) or height in metres (K = 1);
      blending averages these, and class ids are the argmax of the blend, never a vote
  detection:  per window (boxes (N, 4) xyxy | (N, 5) le90 in window pixels, scores (N,),
      classes (N,)) of the valid detections of the task's own `predict` (peaks, per-class NMS)

A batch is exactly what the task pipeline's `PrepareViews` (validation, nodata,
normalisation) and `ToTaskExample` (channel padding) make of its windows, i.e. what evaluation
would feed, computed per view on the stacked windows. Batches are
padded to B with all-invalid windows (results dropped) and split over the mesh like evaluation
batches. `dispatch` / `collect` let the caller prepare batch i + 1 while batch i runs.

Routing: evaluation routing (`moe.eval_capacity_factor`). With capacity dispatch a window's
output depends on the other windows of its batch only if tokens are dropped; dropless
dispatchers (the default 'auto') never drop.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ringmoe_jax.errors import UserError

DENSE_TASKS = ("segmentation", "change_detection", "height")
TASKS = DENSE_TASKS + ("detection",)
_SHAPE_KEY = {"segmentation": "mask", "change_detection": "change", "height": "height"}


def read_run(config, workdir: str, step: int | None = None):
  """(step, sensor registry) of the fine-tuning run in `workdir`, from its checkpoint's meta
  only (no arrays: a bad input can be reported before a large model is restored)."""
  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.config.validate import validate
  from ringmoe_jax.tasks import get_task
  from ringmoe_jax.train import init_from
  from ringmoe_jax.train.checkpoint import open_run
  from ringmoe_jax.train.trainer import build_registry
  validate(config)
  task = get_task(config)
  if task.name not in TASKS:
    raise UserError(f"predict takes a {', '.join(TASKS)} config (configs/finetune_*.py), got "
                    f"task {task.name!r}")
  ckpt, step, meta = open_run(workdir, step=step, expected="a fine-tuning run")
  ckpt.close()
  if meta.get("task", task.name) != task.name:
    raise UserError(f"--workdir={workdir} is a {meta.get('task')!r} run but the config's task "
                    f"is {task.name!r}")
  return step, build_registry(config, saved=init_from.saved_registry(meta))


def view_sensors(config, registry):
  """The Sensor of each input view: task.views[0] ('a' or 'a+b'); change detection with one
  sensor named has it before and after (as the task sources read the spec)."""
  from ringmoe_jax.data import task_pipeline  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.tasks.base import num_views  # pylint: disable=import-outside-toplevel
  names = task_pipeline.view_sensors(config.task.views[0])
  if config.task.name == "change_detection" and len(names) == 1:
    names = names * 2
  if len(names) != num_views(config):
    raise UserError(f"task.views[0]={config.task.views[0]!r}: {len(names)} sensor(s) but the "
                    f"task takes {num_views(config)} views")
  return [registry.get(n) for n in names]


class WindowPredictor:
  """See the module docstring. Attributes: task, config, registry, sensors (one per view),
  size (S), batch_size (B), channels (K; 0 for detection), class_names, rotated."""

  def __init__(self, config, task, builder, params, registry, mesh,
               batch_size: int | None = None):
    # pylint: disable=import-outside-toplevel
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from ringmoe_jax.parallel.mesh import batch_size_per_shard
    from ringmoe_jax.sensors.modalities import modality_id
    from ringmoe_jax.tasks.base import max_channels
    from ringmoe_jax.train.evaluation import eval_batch_size
    if task.name not in TASKS:
      raise UserError(f"predict takes a {', '.join(TASKS)} config (configs/finetune_*.py), got "
                      f"task {task.name!r}")
    if jax.process_count() > 1:
      raise UserError("predict runs on one host (its devices as one mesh); got "
                      f"{jax.process_count()} processes")
    self.config, self.task, self.registry, self.mesh = config, task, registry, mesh
    self.params = params
    self.size = int(config.model.img_size)
    self.batch_size = int(batch_size or eval_batch_size(config))
    try:
      batch_size_per_shard(self.batch_size, mesh)
    except ValueError as e:
      raise UserError(f"--batch_size={self.batch_size}: {e}") from None
    self.sensors = view_sensors(config, registry)
    self.rotated = bool(config.task.get("rotated", False))
    if task.name == "detection":
      self.channels = 0
      self.class_names = tuple(config.task.box_classes)
    elif task.name == "height":
      self.channels = 1
      self.class_names = ()
    else:
      self.channels = task.num_classes(config)
      names_cfg = tuple(config.task.get("class_names", ()) or ())
      self.class_names = (names_cfg if len(names_cfg) == self.channels else
                          tuple(str(i) for i in range(self.channels)))
    self._max_channels = max_channels(config, registry)
    if any(s.num_channels > self._max_channels for s in self.sensors):
      s = max(self.sensors, key=lambda s: s.num_channels)
      raise UserError(f"sensor {s.name!r} has {s.num_channels} channels but the model takes at "
                      f"most {self._max_channels}")
    self._modality = [modality_id(s.modality) for s in self.sensors]
    self._fn = jax.jit(self._program(builder), out_shardings=NamedSharding(mesh, P()))

  @classmethod
  def from_workdir(cls, config, workdir: str, step: int | None = None,
                   batch_size: int | None = None) -> "WindowPredictor":
    """The fine-tuning run in `workdir` (its latest checkpoint, or `step`)."""
    # pylint: disable=import-outside-toplevel
    from ringmoe_jax.parallel.mesh import make_mesh
    from ringmoe_jax.parallel.sharding import rules_for
    from ringmoe_jax.tasks import get_task
    from ringmoe_jax.train.checkpoint import Checkpointer
    from ringmoe_jax.train.trainer import programs
    step, registry = read_run(config, workdir, step)
    task = get_task(config, registry)
    mesh = make_mesh(config.mesh)
    setup, _ = programs(config, task, mesh, rules_for(config))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1, async_save=False)
    try:
      state, _, _ = ckpt.restore(step, setup.builder.abstract)
    finally:
      ckpt.close()
    return cls(config, task, setup.builder, state["params"], registry, mesh, batch_size)

  def _program(self, builder):
    """(params, batch) -> the per-window outputs of the module docstring, on the devices."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    task, config = self.task, self.config

    def run(params, batch):
      model = builder.merge(params)
      if task.name == "detection":
        return task.predict(model, batch, config)
      b, _, h, w = batch["valid"].shape
      # The heads up-sample to the label map's shape: a shape-only stand-in (folded away).
      shaped = dict(batch, **{_SHAPE_KEY[task.name]: jnp.zeros((b, h, w), jnp.int32)})
      if task.name == "height":
        height, _ = task.heights(model, shaped, config, train=False)
        return height[:, None].astype(jnp.float32)                       # (B, 1, S, S)
      logits, _ = task.logits(model, shaped, config, train=False)
      probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)       # (B, S, S, K)
      return jnp.moveaxis(probs, -1, 1)                                  # (B, K, S, S)
    return run

  def examples(self, windows: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]]
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Windows -> (host batch padded to B, valid (n, S, S) of all views).

    The batch equals what the task pipeline's `PrepareViews` + `ToTaskExample` make of each
    window (tests/test_predict.py checks it bit for bit), computed on the stacked windows of
    each view at once: per window, validation and normalisation cost more host time than the
    model's forward pass saves by running asynchronously.
    """
    n, b, size, views = len(windows), self.batch_size, self.size, len(self.sensors)
    pixels = np.zeros((b, views, size, size, self._max_channels), np.float32)
    valid = np.zeros((b, views, size, size), np.float32)
    modality = np.zeros((b, views), np.int32)
    sensor_ids = np.zeros((b, views), np.int32)
    for j, sensor in enumerate(self.sensors):
      p = np.stack([np.asarray(w[j][0]) for w in windows])
      v = np.stack([np.asarray(w[j][1]) for w in windows])
      c = sensor.num_channels
      if p.shape != (n, size, size, c) or v.shape != (n, size, size):
        raise ValueError(f"view {j} (sensor {sensor.name!r}): windows of pixels (S, S, {c}) "
                         f"and valid (S, S) with S={size} expected, got {p.shape[1:]} and "
                         f"{v.shape[1:]}")
      p = p.astype(np.float32, copy=False)
      # validate_record's masks: non-finite pixels, and pixels at the sensor's nodata value.
      ok = v.astype(bool) & np.isfinite(p).all(-1)
      if sensor.nodata is not None:
        ok &= ~(p == np.float32(sensor.nodata)).all(-1)
      with np.errstate(invalid="ignore", over="ignore"):
        pixels[:n, j, ..., :c] = np.where(ok[..., None], sensor.normalize(p), np.float32(0))
      valid[:n, j] = ok
      modality[:n, j] = self._modality[j]
      sensor_ids[:n, j] = self.registry.index(sensor.name)
    weight = np.zeros(b, np.float32)
    weight[:n] = 1
    batch = {"pixels": pixels, "valid": valid, "modality": modality, "sensor": sensor_ids,
             "weight": weight}
    return batch, valid[:n].min(1) > 0

  def dispatch(self, windows) -> tuple[Any, int, np.ndarray]:
    """Starts the program on up to B windows; -> (pending result, n, valid (n, S, S))."""
    # pylint: disable=import-outside-toplevel
    import jax
    from ringmoe_jax.parallel.sharding import batch_sharding
    if not 0 < len(windows) <= self.batch_size:
      raise ValueError(f"1 to {self.batch_size} windows per call, got {len(windows)}")
    local, valid = self.examples(windows)
    with jax.set_mesh(self.mesh):
      batch = {k: jax.make_array_from_process_local_data(batch_sharding(self.mesh, v.ndim), v)
               for k, v in local.items()}
      out = self._fn(self.params, batch)   # asynchronous: returns before the devices finish
    return out, len(windows), valid

  def collect(self, pending) -> Any:
    """The host result of `dispatch`: (n, K, S, S) float32, or per window (boxes, scores,
    classes) of the valid detections."""
    import jax  # pylint: disable=import-outside-toplevel
    out, n, _ = pending
    out = jax.device_get(out)
    if self.task.name != "detection":
      return np.asarray(out[:n], np.float32)
    res = []
    for j in range(n):
      keep = np.asarray(out["valid"][j], bool)
      res.append((np.asarray(out["boxes"][j], np.float64)[keep],
                  np.asarray(out["scores"][j], np.float32)[keep],
                  np.asarray(out["classes"][j], np.int32)[keep]))
    return res

  def __call__(self, windows):
    return self.collect(self.dispatch(windows))
