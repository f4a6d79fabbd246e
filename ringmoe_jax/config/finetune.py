"""The fine-tuning config tree: a pre-training config's encoder + task / finetune / eval sections.

The encoder fields (model.*, moe.*) must match the pre-training run given as `init_checkpoint`,
so each fine-tuning config starts from the pre-training config of its size: `size=tiny` from
configs/pretrain_tiny.py, `size=14b` from configs/pretrain_14b.py.
"""
from __future__ import annotations

import ml_collections

from ringmoe_jax.config.load import load_config
from ringmoe_jax.data.simulator import CLASSES
from ringmoe_jax.data.task_pipeline import view_sensors
from ringmoe_jax.errors import UserError

SIZES = ("tiny", "14b")


def reader_defaults() -> ml_collections.ConfigDict:
  """config.task.reader: a dataset in a format users have (data/readers/; task.source='reader')."""
  return ml_collections.ConfigDict(dict(format="", root="", sensor="", sensor_after="",
                                        classes=(), val_fraction=0.2, bands=()))


def finetune_config(task: str, views, a) -> ml_collections.ConfigDict:
  """The config of `task` with records of `views` at size a['size'], a['mode'], a['steps']."""
  size = a["size"]
  if size not in SIZES:
    raise UserError(f"size={size!r}; expected one of {SIZES}")
  c = load_config("pretrain_tiny" if size == "tiny" else "pretrain_14b")
  c.task = ml_collections.ConfigDict(dict(
      name=task, source="simulator", views=tuple(views), num_classes=len(CLASSES),
      class_names=CLASSES, multilabel=False, label_smoothing=0.1,
      num_records=2048, eval_records=256, tile_size=80, nodata_fraction=0.1,
      head_channels=64, dice_weight=1.0, num_bins=32, max_height=64.0, min_height=1.0,
      loss="l1_balanced", reader=reader_defaults()))
  # mode: 'full' | 'frozen' | 'adapter' (tasks/base.py); layer_decay: full mode's LLRD.
  # adapter_dim: Convpass width, used in mode 'adapter' only (tasks/base.encoder_config).
  # head_warmup_steps: the first K steps train the head only (LP-FT; train/finetune_optim.py).
  c.finetune = ml_collections.ConfigDict(dict(
      mode=a["mode"], layer_decay=0.9, head_warmup_steps=0,
      adapter_dim=int(a.get("adapter_dim", 8 if size == "tiny" else 64))))
  c.init_checkpoint = ""  # a pre-training --workdir: its encoder and sensor registry
  c.eval = ml_collections.ConfigDict(dict(batch_size=0))  # 0: data.batch_size
  sensors = sorted({s for v in views for s in view_sensors(v)})
  c.data.update(sensors=tuple(sensors), co_registered=1)
  c.contrastive.enabled = False
  if size == "tiny":
    c.data.batch_size = 16
    c.optim.update(base_lr=1e-3, base_batch=16, warmup_steps=10, weight_decay=0.05)
    c.train.update(total_steps=a["steps"], log_every=10, checkpoint_every=100, eval_every=100)
  else:
    c.data.batch_size = 512
    c.task.update(head_channels=512, tile_size=256, num_records=1_000_000, eval_records=10_000)
    c.optim.update(base_lr=1e-4, base_batch=512, warmup_steps=1000)
    c.train.update(total_steps=a["steps"], log_every=100, checkpoint_every=2000,
                   eval_every=2000)
  return c
