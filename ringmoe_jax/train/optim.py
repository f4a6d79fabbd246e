"""AdamW with warmup-cosine and global-norm clipping (the paper's values are the defaults).

No weight decay on the mask token, the position-bias tables (CPB MLP) and the attention logit
scales (as in the paper), nor on biases and norm parameters (1-D), as usual for Swin.
"""
from __future__ import annotations

from typing import Any

import jax
import optax

_NO_DECAY_NAMES = ("mask_token", "cpb", "logit_scale")


def learning_rate(optim_cfg, batch_size: int, total_steps: int) -> optax.Schedule:
  """Warmup (linear from 0) then cosine to min_lr; peak = base_lr * batch / base_batch.

  The schedule spans optim.schedule_steps steps, or total_steps where that is 0.
  """
  total_steps = int(optim_cfg.get("schedule_steps", 0) or total_steps)
  peak = optim_cfg.base_lr * batch_size / optim_cfg.base_batch
  warmup = min(int(optim_cfg.warmup_steps), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      0.0, peak, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
      end_value=min(optim_cfg.min_lr, peak))


def decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay: >= 2-D and not a no-decay table."""
  def one(path, leaf):
    name = jax.tree_util.keystr(path)
    return leaf.ndim >= 2 and not any(n in name for n in _NO_DECAY_NAMES)
  return jax.tree_util.tree_map_with_path(one, params)


def make_optimizer(optim_cfg, batch_size: int, total_steps: int) -> optax.GradientTransformation:
  lr = learning_rate(optim_cfg, batch_size, total_steps)
  return optax.chain(
      optax.clip_by_global_norm(optim_cfg.grad_clip),
      optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                  weight_decay=optim_cfg.weight_decay, mask=decay_mask))
