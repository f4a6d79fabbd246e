"""Config validation: every mistake found before anything is built or compiled.

Each error names the config field, the value and what was expected.
"""
from __future__ import annotations

import jax.numpy as jnp

from ringmoe_jax.errors import UserError
from ringmoe_jax.moe.dispatch import DISPATCHERS
from ringmoe_jax.objectives.physics import INDICES
from ringmoe_jax.objectives.targets import KIND_MODALITIES, TARGET_KINDS, target_channels
from ringmoe_jax.sensors.modalities import MODALITIES


class ConfigError(UserError):
  """An invalid configuration value."""


SOURCES = ("synthetic", "simulator", "arrayrecord")  # data.source (data/sources.make_source)


def _check(cond: bool, msg: str) -> None:
  if not cond:
    raise ConfigError(msg)


def validate(c) -> None:
  """Raises ConfigError naming the first invalid field of config `c`."""
  m, moe, mim = c.model, c.moe, c.mim
  for name in m.in_channels:
    _check(name in MODALITIES, f"model.in_channels: unknown modality {name!r}; expected one "
           f"of {', '.join(MODALITIES)}")
  for name in MODALITIES:
    _check(name in m.in_channels and int(m.in_channels[name]) > 0,
           f"model.in_channels.{name} must be a positive channel count")
  for name, kind in mim.targets.items():
    _check(name in MODALITIES, f"mim.targets: unknown modality {name!r}; expected one of "
           f"{', '.join(MODALITIES)}")
    _check(kind in TARGET_KINDS, f"mim.targets.{name}={kind!r}; expected one of {TARGET_KINDS}")
    allowed = KIND_MODALITIES[kind]
    _check(allowed is None or name in allowed, f"mim.targets.{name}={kind!r} is only for "
           f"modalities {allowed}")
    try:
      target_channels(kind, int(m.in_channels[name]))
    except ValueError as e:
      raise ConfigError(f"mim.targets.{name}: {e}") from None
  _validate_objective(c)

  depths, heads = tuple(m.depths), tuple(m.num_heads)
  _check(len(depths) == len(heads) and len(depths) > 0,
         f"model.depths {depths} and model.num_heads {heads} must have the same length")
  n = len(depths)
  stride = m.patch_size * 2 ** (n - 1)
  _check(m.img_size % stride == 0, f"model.img_size={m.img_size} must be divisible by "
         f"patch_size * 2^(stages-1) = {stride}")
  _check(m.window_size >= 1, f"model.window_size={m.window_size} must be >= 1")
  for i in range(n):
    dim = m.embed_dim * 2**i
    size = m.img_size // m.patch_size // 2**i
    _check(dim % heads[i] == 0, f"model.num_heads[{i}]={heads[i]} does not divide the stage "
           f"dim {dim} (embed_dim * 2^{i})")
    if m.window_size > size:
      _check(m.allow_window_shrink, f"model.window_size={m.window_size} is larger than the "
             f"{size}x{size} map of stage {i} and model.allow_window_shrink is False")
    else:
      _check(size % m.window_size == 0, f"model.window_size={m.window_size} does not divide "
             f"the {size}x{size} map of stage {i}")
  for f in ("dtype", "param_dtype"):
    try:
      jnp.dtype(m[f])
    except TypeError:
      raise ConfigError(f"model.{f}={m[f]!r} is not a dtype name") from None

  for f in ("num_special", "num_collab", "num_shared"):
    _check(moe[f] >= 0, f"moe.{f}={moe[f]} must be >= 0")
  _check(moe.num_special + moe.num_collab + moe.num_shared > 0,
         "moe: num_special, num_collab and num_shared are all 0 (the block would have no FFN)")
  _check(moe.top_k >= 1, f"moe.top_k={moe.top_k} must be >= 1")
  for f in ("num_special", "num_collab"):
    if moe[f]:
      _check(moe.top_k <= moe[f], f"moe.top_k={moe.top_k} is larger than moe.{f}={moe[f]}")
  for f in ("capacity_factor", "eval_capacity_factor"):
    _check(moe[f] > 0, f"moe.{f}={moe[f]} must be > 0")
  _check(moe.dispatcher in DISPATCHERS,
         f"moe.dispatcher={moe.dispatcher!r}, expected one of {DISPATCHERS}")
  _check(moe.dispatcher != "dropless_native" or m.dtype == "float32",
         f"moe.dispatcher='dropless_native' computes in float32, not model.dtype={m.dtype!r}")

  _check(0.0 < mim.mask_ratio <= 1.0, f"mim.mask_ratio={mim.mask_ratio} must be in (0, 1]")
  _check(mim.mask_cell % m.patch_size == 0, f"mim.mask_cell={mim.mask_cell} px must be a "
         f"multiple of model.patch_size={m.patch_size}")
  _check(m.img_size % mim.mask_cell == 0, f"mim.mask_cell={mim.mask_cell} px must divide "
         f"model.img_size={m.img_size}")

  d = c.data
  _check(d.batch_size >= 1, f"data.batch_size={d.batch_size} must be >= 1")
  source = d.get("source", "synthetic")
  _check(source in SOURCES, f"data.source={source!r}; expected one of {', '.join(SOURCES)}")
  if source == "arrayrecord":
    _check(len(d.get("paths", ())) > 0, "data.source='arrayrecord' needs data.paths: ingestion "
           "output directories (with manifest.json) or shard files")
  else:  # arrayrecord with data.sensors empty trains on the sensors of the shards' manifests
    _check(len(d.sensors) > 0, f"data.sensors is empty; list the sensors to generate for "
           f"data.source={source!r} (only 'arrayrecord' takes them from the shards)")
  if d.weights is not None:
    _check(len(d.weights) == len(d.sensors) and all(w >= 0 for w in d.weights)
           and sum(d.weights) > 0, f"data.weights={tuple(d.weights)} must be one non-negative "
           f"weight per sensor in data.sensors ({len(d.sensors)}), not all zero")
  _check(d.tile_size >= m.img_size, f"data.tile_size={d.tile_size} must be >= "
         f"model.img_size={m.img_size}")
  _check(c.train.total_steps >= 1, f"train.total_steps={c.train.total_steps} must be >= 1")
  _check(c.optim.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
  sched = int(c.optim.get("schedule_steps", 0))
  _check(sched >= 0, f"optim.schedule_steps={sched} must be >= 0 (0: train.total_steps)")
  for ax in ("data", "fsdp", "expert", "tensor"):
    _check(c.mesh[ax] == -1 or c.mesh[ax] >= 1, f"mesh.{ax}={c.mesh[ax]} must be -1 or >= 1")
  if c.get("task", None) is not None and str(c.task.name) == "detection":
    _validate_detection(c.task, int(m.img_size))


def _validate_detection(t, img_size: int) -> None:
  _check(len(t.get("box_classes", ())) > 0, "task.box_classes is empty; name the object "
         "classes to detect (the simulator's 'building', 'ship', or a reader's classes)")
  _check(int(t.max_boxes) >= 1, f"task.max_boxes={t.max_boxes} must be >= 1 (ground-truth "
         "slots per tile)")
  _check(img_size % 4 == 0, f"model.img_size={img_size} must be a multiple of the detector's "
         "stride 4")
  _check(int(t.max_candidates) >= 1, f"task.max_candidates={t.max_candidates} must be >= 1 "
         "(top-k (cell, class) pairs before NMS; capped at the cells x classes of a crop)")
  _check(1 <= int(t.max_detections) <= int(t.max_candidates),
         f"task.max_detections={t.max_detections} must be in [1, task.max_candidates="
         f"{t.max_candidates}]")
  _check(0.0 <= float(t.score_threshold) < 1.0,
         f"task.score_threshold={t.score_threshold} must be in [0, 1)")
  _check(0.0 < float(t.nms_iou) <= 1.0, f"task.nms_iou={t.nms_iou} must be in (0, 1]")
  _check(float(t.box_weight) >= 0, f"task.box_weight={t.box_weight} must be >= 0")


def _validate_objective(c) -> None:
  """mim.masking, physics.* and contrastive.* (objectives/objective.py)."""
  mim = c.mim
  _check(mim.get("masking", "simmim") in ("simmim", "pimask"),
         f"mim.masking={mim.get('masking')!r}; expected 'simmim' or 'pimask'")
  r = mim.get("pimask_in_cell_ratio", 0.5)
  _check(0.0 < r <= 1.0, f"mim.pimask_in_cell_ratio={r} must be in (0, 1]")
  if "physics" in c:
    p = c.physics
    _check(p.reflectance_unit > 0, f"physics.reflectance_unit={p.reflectance_unit} must be > 0")
    _check(p.default_looks > 0, f"physics.default_looks={p.default_looks} must be > 0")
    for f in ("sar_l1_complex_weight", "sam_weight", "index_weight"):
      _check(p[f] >= 0, f"physics.{f}={p[f]} must be >= 0")
    for name in p.indices:
      _check(name in INDICES, f"physics.indices: unknown index {name!r}; expected one of "
             f"{', '.join(INDICES)}")
    for name in p.spectral_modalities:
      _check(name in ("opt", "ms"), f"physics.spectral_modalities: {name!r} is not an optical "
             "modality (opt, ms)")
  if "contrastive" in c:
    k = c.contrastive
    _check(k.weight >= 0, f"contrastive.weight={k.weight} must be >= 0")
    _check(0 < k.min_temperature <= k.max_temperature,
           f"contrastive: need 0 < min_temperature ({k.min_temperature}) <= max_temperature "
           f"({k.max_temperature})")
    co = int(c.data.get("co_registered", 1) or 1)
    if k.enabled and co > 1:
      _check(c.data.batch_size % co == 0, f"data.batch_size={c.data.batch_size} must be a "
             f"multiple of data.co_registered={co} so that groups stay whole in a batch")
