"""What every downstream task shares: the model container, data, and the fine-tuning modes.

A task (one module per task, registered in `tasks/__init__.TASKS`) is a `Task` subclass; the one
trainer (`train/trainer.py`) and `ringmoe_jax.evaluate` run any of them. See
docs/ARCHITECTURE.md ("the task interface").

Modes (`config.finetune.mode`):
  full     every parameter trains; layer-wise learning-rate decay `finetune.layer_decay`.
  frozen   only the head trains; the encoder runs in evaluation mode and its features are cut
           from the gradient (`encode_views(frozen=True)`), so no encoder gradient is computed
           and its parameters stay bit-identical.
  adapter  the head and the Convpass adapters in every block (`model.adapter_dim`) train; the
           encoder is otherwise frozen but runs in training mode (its adapters need gradients
           through the blocks).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ringmoe_jax.data import task_pipeline
from ringmoe_jax.data.task_sources import SimulatorTaskSource
from ringmoe_jax.errors import UserError
from ringmoe_jax.models.features import encode_views
from ringmoe_jax.train.model import make_encoder

MODES = ("full", "frozen", "adapter")


class FinetuneModel(nnx.Module):
  """encoder (RingMoEEncoder) + head (+ fusion of views). Params: {'encoder', 'head', ...}."""

  def __init__(self, encoder, head, fusion=None):
    self.encoder = encoder
    self.head = head
    self.fusion = fusion


def mode(config) -> str:
  m = str(config.finetune.mode)
  if m not in MODES:
    raise UserError(f"finetune.mode={m!r}; expected one of {MODES}")
  return m


def encoder_config(config):
  """The config the encoder is built from: in 'adapter' mode with model.adapter_dim set to
  finetune.adapter_dim (the other modes build the pre-training encoder unchanged)."""
  if mode(config) != "adapter":
    return config
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.model.adapter_dim = int(config.finetune.adapter_dim)
  return c


def stage_dims(config) -> tuple[int, ...]:
  d = int(config.model.embed_dim)
  return tuple(d * 2**i for i in range(len(config.model.depths)))


def num_views(config) -> int:
  """Views per record, from task.views (all specs have the same count; change: 2)."""
  if config.task.name == "change_detection":
    return 2
  return len(task_pipeline.view_sensors(config.task.views[0]))


def max_channels(config, registry=None) -> int:
  """Cmax of the pixel tensor: the largest model.in_channels ('fixed') or the largest band count
  of the sensors in use ('spectral'); train/model.input_channels."""
  from ringmoe_jax.train.model import input_channels  # pylint: disable=import-outside-toplevel
  return input_channels(config, registry)


def weighted_mean(x: jax.Array, w: jax.Array) -> jax.Array:
  """Sum(x w) / max(sum(w), 1): padding examples (w = 0) do not count."""
  w = w.astype(jnp.float32)
  return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


class Task:
  """The interface (docs/ARCHITECTURE.md); subclasses set the class attributes and the heads."""
  name: str = ""
  kind: str = ""          # SimulatorTaskSource label kind
  main_metric: str = ""
  batch_keys: tuple[str, ...] = ()
  log_keys: tuple[str, ...] = ()  # scalar aux values printed with the loss
  registry = None         # the run's SensorRegistry (get_task); None: training_registry(config)

  # --- model -----------------------------------------------------------------------------
  def make_head(self, config, rngs: nnx.Rngs):
    """-> (head, fusion or None)."""
    raise NotImplementedError

  def make_model(self, config) -> FinetuneModel:
    rngs = nnx.Rngs(config.seed)
    with nnx.use_eager_sharding(False):
      encoder = make_encoder(encoder_config(config), rngs, self.registry)
      head, fusion = self.make_head(config, nnx.Rngs(config.seed + 1))
      return FinetuneModel(encoder, head, fusion)

  def features(self, model: FinetuneModel, batch, *, train: bool, config):
    """encode_views with this config's mode."""
    return encode_views(model.encoder, batch, train=train, frozen=mode(config) == "frozen")

  def encoder_loss(self, enc_aux, config) -> jax.Array:
    """The MoE balancing term where the routers train (full mode), else 0."""
    if mode(config) != "full":
      return jnp.zeros((), jnp.float32)
    return float(config.moe.balance_weight) * enc_aux["balance_loss"]

  def loss(self, model, batch, key, config, *, train: bool = True):
    raise NotImplementedError

  def predict(self, model, batch, config) -> dict[str, jax.Array]:
    raise NotImplementedError

  def metrics(self, config):
    """A fresh host-side accumulator with `update(pred, batch)` and `compute()`."""
    raise NotImplementedError

  # --- data --------------------------------------------------------------------------------
  def num_classes(self, config) -> int:
    return int(config.task.num_classes)

  def make_source(self, config, registry, split: str):
    t = config.task
    if t.source == "simulator":
      n = int(t.num_records if split == "train" else t.eval_records)
      return SimulatorTaskSource(self.kind, n, int(t.tile_size), tuple(t.views), registry,
                                 seed=int(config.seed), split=split,
                                 nodata_fraction=float(t.nodata_fraction),
                                 box_classes=tuple(t.get("box_classes", ())))
    if t.source == "reader":
      from ringmoe_jax.data.readers import make_reader  # pylint: disable=import-outside-toplevel
      return make_reader(t.reader, registry, split)
    raise UserError(f"task.source={t.source!r}; expected 'simulator' or 'reader'")

  def make_dataset(self, config, registry, split: str, *, batch_size: int, shard_index: int = 0,
                   shard_count: int = 1):
    """Training (infinite, shuffled) or evaluation (one padded pass) batches of this shard."""
    source = self.make_source(config, registry, split)
    kw = dict(registry=registry, num_views=num_views(config), batch_size=batch_size,
              crop_size=int(config.model.img_size), max_channels=max_channels(config, registry),
              num_classes=self.num_classes(config) if self.kind != "height" else 0,
              shard_index=shard_index, shard_count=shard_count,
              min_tile_size=int(config.model.patch_size),
              max_boxes=int(config.task.get("max_boxes", 0)))
    if split == "train":
      return task_pipeline.make_task_dataset(source, seed=int(config.seed), **kw)
    return task_pipeline.make_task_eval_dataset(source, **kw)


def host(x) -> np.ndarray:
  return np.asarray(jax.device_get(x))
