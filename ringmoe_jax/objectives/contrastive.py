"""Cross-modal contrastive loss (InfoNCE) for groups of co-registered tiles.

Axes: N groups (same place and time, one tile per modality when present), M modalities,
D embedding dim (pooled encoder features, optionally through a projection head).

A group's tiles of two modalities form a positive pair; the other groups' tiles of the other
modality in the same batch are the negatives. Groups missing either modality of a pair are
excluded from that pair entirely (neither anchor nor negative). Temperature is learnable through
a log-temperature scalar, clipped to [min_temperature, max_temperature] (CLIP-style: below 0.01
the logits explode; above 1 the loss goes flat).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 1.0
INIT_TEMPERATURE = 0.07  # CLIP's initial value.
# Logit of excluded rows / columns: exp() of it underflows to exactly 0, yet it stays finite, so
# a fully excluded row gives no inf - inf.
_EXCLUDED_LOGIT = -1e9


def init_log_temperature(temperature: float = INIT_TEMPERATURE) -> jax.Array:
  """Initial value of the learnable log-temperature parameter (a float32 scalar)."""
  return jnp.asarray(math.log(temperature), jnp.float32)


def temperature_from_log(log_temperature: jax.Array, min_temperature: float = MIN_TEMPERATURE,
                         max_temperature: float = MAX_TEMPERATURE) -> jax.Array:
  """exp(log_temperature) clipped to [min, max] (the gradient is 0 outside the range)."""
  lt = jnp.clip(jnp.asarray(log_temperature, jnp.float32), math.log(min_temperature),
                math.log(max_temperature))
  return jnp.exp(lt)


def _l2_normalize(z: jax.Array) -> jax.Array:
  """Rows to unit length; zero rows stay zero with a finite (zero) gradient."""
  z = z.astype(jnp.float32)
  n2 = jnp.sum(jnp.square(z), axis=-1, keepdims=True)
  ok = n2 > 0
  return jnp.where(ok, z * jax.lax.rsqrt(jnp.where(ok, n2, 1.0)), 0.0)


def info_nce(z_a: jax.Array, z_b: jax.Array, temperature: jax.Array | float,
             valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Symmetric InfoNCE with cosine similarity between paired rows of z_a and z_b.

  S_ij = cos(z_a[i], z_b[j]) / temperature over valid i, j;
    loss = 1/2 [ mean_i (logsumexp_j S_ij - S_ii) + mean_j (logsumexp_i S_ij - S_jj) ].

  Args:
    z_a, z_b: (N, D) embeddings; row i of both comes from the same group.
    temperature: > 0 scalar (see `temperature_from_log`).
    valid: (N,) bool, the pair i exists (both embeddings present); None for all.
  Returns:
    (loss, number of valid pairs). With fewer than 2 valid pairs there is no negative: the
    pair contributes exactly 0 with count 0 (and a zero gradient).
  """
  if z_a.shape != z_b.shape or z_a.ndim != 2:
    raise ValueError(f"z_a {z_a.shape} and z_b {z_b.shape} must both be (N, D)")
  n = z_a.shape[0]
  v = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid).astype(bool)
  # Rows of absent pairs may hold anything (even NaN): zero them before they reach the matmul.
  a = _l2_normalize(jnp.where(v[:, None], z_a, 0.0))
  b = _l2_normalize(jnp.where(v[:, None], z_b, 0.0))
  logits = (a @ b.T) / jnp.asarray(temperature, jnp.float32)  # (N, N)
  pair = v[:, None] & v[None, :]
  logits = jnp.where(pair, logits, _EXCLUDED_LOGIT)
  diag = jnp.diagonal(logits)
  loss_ab = jax.nn.logsumexp(logits, axis=1) - diag  # anchors in a, candidates in b
  loss_ba = jax.nn.logsumexp(logits, axis=0) - diag
  count = jnp.sum(v.astype(jnp.float32))
  per_row = jnp.where(v, 0.5 * (loss_ab + loss_ba), 0.0)
  enough = count >= 2
  loss = jnp.where(enough, jnp.sum(per_row) / jnp.maximum(count, 1.0), 0.0)
  return loss, jnp.where(enough, count, 0.0)


def multi_modal_info_nce(embeddings: jax.Array, present: jax.Array,
                         log_temperature: jax.Array | float, *,
                         min_temperature: float = MIN_TEMPERATURE,
                         max_temperature: float = MAX_TEMPERATURE,
                         return_pairs: bool = False):
  """InfoNCE averaged over every modality pair (m < n) with at least 2 groups holding both.

  Args:
    embeddings: (N, M, D) pooled embeddings; rows of absent modalities are ignored (any value,
      NaN included).
    present: (N, M) bool, group g has a tile of modality m.
    log_temperature: learnable scalar, see `temperature_from_log`.
    return_pairs: also return the (M, M) per-pair losses and counts (upper triangle) for metrics.
  Returns:
    (loss, pairs): the mean of `info_nce` over contributing pairs (0 if none) and their number;
    with `return_pairs`, also pair_loss (M, M) and pair_count (M, M) (groups per pair, 0 for
    pairs with < 2 groups).
  """
  if embeddings.ndim != 3 or present.shape != embeddings.shape[:2]:
    raise ValueError(f"embeddings {embeddings.shape} must be (N, M, D) and present "
                     f"{present.shape} (N, M)")
  m = embeddings.shape[1]
  temp = temperature_from_log(log_temperature, min_temperature, max_temperature)
  present = jnp.asarray(present).astype(bool)
  pair_loss = jnp.zeros((m, m), jnp.float32)
  pair_count = jnp.zeros((m, m), jnp.float32)
  # M is small (4 modalities -> 6 pairs): a Python loop over static pairs.
  for i in range(m):
    for j in range(i + 1, m):
      loss, cnt = info_nce(embeddings[:, i], embeddings[:, j], temp,
                           present[:, i] & present[:, j])
      pair_loss = pair_loss.at[i, j].set(loss)
      pair_count = pair_count.at[i, j].set(cnt)
  contributing = pair_count > 0
  pairs = jnp.sum(contributing.astype(jnp.float32))
  total = jnp.sum(jnp.where(contributing, pair_loss, 0.0))
  loss = jnp.where(pairs > 0, total / jnp.maximum(pairs, 1.0), 0.0)
  if return_pairs:
    return loss, pairs, pair_loss, pair_count
  return loss, pairs
