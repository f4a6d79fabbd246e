"""The fine-tuning optimizer: the mode's trainable parameters, layer-wise learning-rate decay.

Params are the pure dict of a `tasks.base.FinetuneModel`: {'encoder': ..., 'head': ...,
'fusion': ...}; every top-level key but 'encoder' is head-side. Works on abstract params
(ShapeDtypeStructs): nothing here needs values, so the 14.7B model's optimizer is built from
shapes (`jax.eval_shape(tx.init, params)`).

Modes (tasks/base.py): 'full' every leaf; 'frozen' head-side leaves only; 'adapter' head-side
leaves + encoder leaves whose path holds 'adapter' (Convpass, models/adapters.py).
Frozen leaves go through `optax.set_to_zero` inside `optax.multi_transform`: they get no AdamW
moments (no optimizer memory) and no update; gradient clipping sees the trainable gradients
only. (The step also keeps frozen leaves as they were, so they stay bit-identical.)

Layer-wise lr decay (BEiT / Swin fine-tuning convention, mode 'full'): layer id 0 = patch
embedding + mask token; blocks 1..N in order over the stages (N = sum(depths)); patch merging
after stage i counts with the last block of stage i (it feeds the next stage, and the Swin LLRD
implementations of mmpretrain group it so); the final norm and the head are N + 1. A leaf's lr is
scaled by decay ** (N + 1 - id). A stage's scanned pairs store blocks (2k, 2k+1) stacked on a
leading axis of length L2 under 'pairs/even' and 'pairs/odd': their scale is a vector over that
axis, shaped (L2, 1, ..., 1) to broadcast.

Head warm-up (`finetune.head_warmup_steps` K > 0, modes 'full' / 'adapter'; LP-FT, Kumar et al.
2022): the encoder's updates are multiplied by 0 for the first K steps, so a randomly initialised
head is first fitted on the pre-trained features instead of pushing its early, large gradients
into the encoder; from step K on every trainable leaf moves. AdamW's moments of the encoder keep
accumulating during the K steps (the encoder starts with warm moments, not a cold-start jump).
The gate adds one step counter to the optimizer state; K = 0 leaves the state as it was.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ringmoe_jax.errors import UserError
from ringmoe_jax.train.optim import decay_mask, learning_rate

MODES = ("full", "frozen", "adapter")


def _keys(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]


def trainable_mask(params: Any, mode: str) -> Any:
  """Pytree of Python bools like `params`: True where the mode trains the leaf."""
  if mode not in MODES:
    raise UserError(f"finetune.mode={mode!r}; expected one of {MODES}")

  def one(path, _):
    keys = _keys(path)
    if keys[0] != "encoder" or mode == "full":
      return True
    return mode == "adapter" and any("adapter" in k for k in keys)
  return jax.tree_util.tree_map_with_path(one, params)


def _layer_id(keys: list[str], leaf, depths: Sequence[int], tail_len: dict[str, int]):
  """Layer id (int, or an int vector over a scanned pair's leading axis) of an encoder leaf.

  tail_len: stage index -> blocks stored unscanned ('tail'): they are the stage's last ones."""
  n = sum(depths)
  if len(keys) < 2 or keys[1] in ("patch_embed", "mask_token"):
    return 0
  if keys[1] == "final_norm":
    return n + 1
  i = int(keys[2])
  offset = sum(depths[:i])
  if keys[1] == "merges":
    return offset + depths[i]
  if keys[1] == "stages" and keys[3] == "pairs":
    first = 1 if keys[4] == "even" else 2
    return offset + first + 2 * np.arange(leaf.shape[0])
  if keys[1] == "stages" and keys[3] == "tail":
    return offset + depths[i] - tail_len[keys[2]] + int(keys[4]) + 1
  raise ValueError(f"no layer id for encoder parameter {'/'.join(keys)}")


def layer_scales(params: Any, depths: Sequence[int], decay: float) -> Any:
  """Per-leaf lr multipliers (module docstring): float, or (L2, 1, ...) arrays for pairs."""
  depths = tuple(int(d) for d in depths)
  n = sum(depths)
  stages = params.get("encoder", {}).get("stages", {})
  tail_len = {str(i): len(st.get("tail", {}) or {}) for i, st in stages.items()}

  def one(path, leaf):
    keys = _keys(path)
    if keys[0] != "encoder":
      return np.float32(1.0)
    lid = np.asarray(_layer_id(keys, leaf, depths, tail_len), np.float32)
    scale = (np.float32(decay) ** (n + 1 - lid)).astype(np.float32)
    if scale.ndim:
      return scale.reshape((-1,) + (1,) * (len(leaf.shape) - 1))
    return np.float32(scale)
  return jax.tree_util.tree_map_with_path(one, params)


def _scale_by_tree(scales: Any) -> optax.GradientTransformation:
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * s, updates, scales), state
  return optax.GradientTransformation(init, update)


def _gate_encoder(params: Any, steps: int) -> optax.GradientTransformation:
  """Encoder updates x 0 while the step count is below `steps` (head warm-up), else x 1."""
  is_encoder = jax.tree_util.tree_map_with_path(lambda p, _: _keys(p)[0] == "encoder", params)

  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params=None):
    del params
    gate = (state.count >= steps).astype(jnp.float32)
    updates = jax.tree.map(lambda u, e: u * gate.astype(u.dtype) if e else u, updates,
                           is_encoder)
    return updates, optax.ScaleByScheduleState(count=optax.safe_int32_increment(state.count))
  return optax.GradientTransformation(init, update)


def make_finetune_optimizer(optim_cfg, params: Any, *, mode: str, layer_decay: float,
                            depths: Sequence[int], batch_size: int, total_steps: int,
                            head_warmup_steps: int = 0) -> optax.GradientTransformation:
  """AdamW + warmup-cosine + global-norm clipping on the trainable leaves (module docstring)."""
  mask = trainable_mask(params, mode)
  labels = jax.tree.map(lambda t: "train" if t else "freeze", mask)
  lr = learning_rate(optim_cfg, batch_size, total_steps)
  train = optax.chain(
      optax.clip_by_global_norm(optim_cfg.grad_clip),
      optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                  weight_decay=optim_cfg.weight_decay, mask=decay_mask))
  tx = optax.multi_transform({"train": train, "freeze": optax.set_to_zero()}, labels)
  if mode == "full" and layer_decay != 1.0:
    tx = optax.chain(tx, _scale_by_tree(layer_scales(params, depths, layer_decay)))
  if head_warmup_steps < 0:
    raise UserError(f"finetune.head_warmup_steps={head_warmup_steps}; expected >= 0")
  if head_warmup_steps and mode != "frozen":
    tx = optax.chain(tx, _gate_encoder(params, int(head_warmup_steps)))
  return tx


def count_trainable(params: Any, mask: Any) -> tuple[int, int]:
  """(trainable, total) parameter counts."""
  sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(params)]
  flags = jax.tree.leaves(mask)
  return sum(s for s, t in zip(sizes, flags) if t), sum(sizes)
