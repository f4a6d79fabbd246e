"""Experts -> one dense FFN: KC (truncated SVD), KS (sum), KA (average), MC-SMoE, and the
concatenation that folds FFNs into one.

An FFN is (w1 (D, F), b1 (F,), w2 (F, D), b2 (D,)): y = gelu(x w1 + b1) w2 + b2 (exact GELU,
as experts.py). All maths in float64 numpy; callers cast back to the parameter dtype.

KC (`merge_svd`), the reading taken: one truncated SVD per expert of its stacked (up, down)
weights in the expert's hidden space, M = [w1; w2^T] (2D x F) = U S V^T. The top-K right
singular vectors V_K (F x K) are the K hidden directions that carry most of both the input and
the output weights; the expert's rank-K factors are
    up = w1 V_K (D x K),  bias = V_K^T b1 (K,),  down = V_K^T w2 (K x D),
i.e. w1 ~ up V_K^T and w2 ~ V_K down, the best rank-K approximation of M (Eckart-Young:
||M - M V_K V_K^T||_F = sqrt(sum of the discarded s_i^2)); at K = F (full V) they reproduce the
expert exactly. The dense FFN takes each expert's K = d_ff / N factors as K hidden units
(GELU applied to the K coordinates, the one approximation beyond the truncation) and
concatenates them: width N * K = d_ff. The shared FFN is folded in as one of the N members
(plan.py; `:beside` keeps it whole next to them instead). Why not the other readings: an SVD
of the product w1 w2 (D x D) skips the GELU, so even at full rank its factors give back only
the expert's linear part; separate SVDs of w1 and w2 give two unrelated bases of the hidden
units, so a dense unit's input and output weights would not belong to one hidden direction.
Output bias: the one a token gets on average (transforms.expected_bias: the shared b2 + per
router the usage-weighted mean b2). Gates are not folded in (they vary per token); the recovery
fine-tune absorbs the scale.

KS / KA (OneS's summation and averaging): weights and biases summed / averaged element-wise.
MC-SMoE (Li et al. 2023, "Merge, then compress"): hidden units of every member are permuted to
match the group's most-used (dominant) expert (weight matching: a linear assignment on the
inner products of the units' (input, output) weight profiles, scipy), then averaged weighted by
routing frequency. The assignment is O(F^3): fine up to F of a few thousand (the 14.7B model's
last stage, F = 14336, takes hours).

Folding (`fuse`): FFNs summed == one FFN with their hidden units concatenated and b2 summed;
how the shared FFN is kept beside the merged experts inside one dense FFN.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

FFN = tuple  # (w1 (D, F), b1 (F,), w2 (F, D), b2 (D,))


def _f64(ffn: FFN) -> FFN:
  return tuple(np.asarray(a, np.float64) for a in ffn)


def stacked(ffn: FFN) -> np.ndarray:
  """M = [w1; w2^T] (2D, F): each column is one hidden unit's input and output weights."""
  w1, _, w2, _ = _f64(ffn)
  return np.concatenate([w1, w2.T], axis=0)


def svd_factors(ffn: FFN, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                              np.ndarray]:
  """(up (D, K), bias (K,), down (K, D), basis V_K (F, K), singular values s (min(2D, F),))
  of the expert's rank-K truncated SVD (module docstring). K may reach F (full V, exact)."""
  w1, b1, w2, _ = _f64(ffn)
  f = w1.shape[1]
  if not 1 <= rank <= f:
    raise ValueError(f"rank {rank} outside [1, {f}]")
  m = stacked(ffn)
  _, s, vt = np.linalg.svd(m, full_matrices=rank > min(m.shape))
  v = vt[:rank].T  # (F, K)
  return w1 @ v, v.T @ b1, v.T @ w2, v, s


def reconstruct(ffn: FFN, rank: int) -> FFN:
  """The expert with its weights replaced by their rank-K factors, in its own hidden space:
  (up V_K^T, b1, V_K down, b2). Equal to the expert at full rank."""
  up, _, down, v, _ = svd_factors(ffn, rank)
  _, b1, _, b2 = _f64(ffn)
  return up @ v.T, b1, v @ down, b2


def merge_svd(members: Sequence[FFN], ranks: Sequence[int], b2=None) -> FFN:
  """KC: each member's rank-K_i factors as K_i hidden units, concatenated (width sum K_i);
  output bias b2 (None: the members' mean). A single member keeping all F units is kept as it
  is (exact)."""
  if len(members) == 1 and ranks[0] >= np.shape(members[0][0])[1]:
    return _f64(members[0])
  ups, biases, downs = [], [], []
  for ffn, k in zip(members, ranks):
    up, bias, down, _, _ = svd_factors(ffn, int(k))
    ups.append(up)
    biases.append(bias)
    downs.append(down)
  if b2 is None:
    b2 = np.mean([np.asarray(m[3], np.float64) for m in members], axis=0)
  return np.concatenate(ups, 1), np.concatenate(biases), np.concatenate(downs, 0), b2


def _same_width(members: Sequence[FFN], what: str) -> None:
  widths = sorted({np.shape(m[0])[1] for m in members})
  if len(widths) > 1:
    raise ValueError(f"{what} needs FFNs of one hidden width, got {widths} (use svd)")


def merge_sum(members: Sequence[FFN]) -> FFN:
  """KS: every weight and bias summed (the FFN of all experts' parameters added)."""
  _same_width(members, "sum")
  return tuple(np.sum([_f64(m)[i] for m in members], axis=0) for i in range(4))


def merge_average(members: Sequence[FFN], weights: Sequence[float] | None = None) -> FFN:
  """KA: every weight and bias averaged (weights: a weighted average)."""
  _same_width(members, "averaging")
  w = np.ones(len(members)) if weights is None else np.asarray(weights, np.float64)
  w = w / w.sum() if w.sum() > 0 else np.full(len(members), 1.0 / len(members))
  return tuple(np.tensordot(w, np.stack([_f64(m)[i] for m in members]), axes=1)
               for i in range(4))


def align_to(reference: FFN, ffn: FFN) -> FFN:
  """`ffn` with its hidden units permuted to best match `reference`'s (the same function)."""
  from scipy.optimize import linear_sum_assignment  # pylint: disable=import-outside-toplevel
  w1, b1, w2, b2 = _f64(ffn)
  ref, own = stacked(reference), stacked(ffn)
  sim = ref.T @ own  # (F, F): unit i of the reference vs unit j of ffn
  _, perm = linear_sum_assignment(-sim)
  return w1[:, perm], b1[perm], w2[perm], b2


def merge_mcsmoe(members: Sequence[FFN], weights: Sequence[float]) -> FFN:
  """MC-SMoE: members aligned to the most-used one, then frequency-weighted averaging."""
  dominant = int(np.argmax(weights))
  aligned = [m if i == dominant else align_to(members[dominant], m)
             for i, m in enumerate(members)]
  return merge_average(aligned, weights)


def fuse(ffns: Sequence[FFN]) -> FFN:
  """sum_i FFN_i(x) as one FFN: hidden units concatenated, output biases summed (exact)."""
  ffns = [_f64(f) for f in ffns]
  return (np.concatenate([f[0] for f in ffns], 1), np.concatenate([f[1] for f in ffns]),
          np.concatenate([f[2] for f in ffns], 0), np.sum([f[3] for f in ffns], axis=0))


def merge(method: str, members: Sequence[FFN], weights: Sequence[float],
          ranks: Sequence[int] | None = None, b2=None) -> FFN:
  """One block's experts -> one FFN by `method` (plan.MERGES but shared_only); b2: svd's
  output bias (None: the members' mean)."""
  if method == "svd":
    return merge_svd(members, ranks, b2)
  if method == "sum":
    return merge_sum(members)
  if method == "average":
    return merge_average(members)
  if method == "mcsmoe":
    return merge_mcsmoe(members, weights)
  raise ValueError(f"unknown merge {method!r}")


def ffn_apply(x: np.ndarray, ffn: FFN) -> np.ndarray:
  """Reference forward of one FFN in float64 (exact erf GELU): x (T, D) -> (T, D)."""
  from scipy.special import erf  # pylint: disable=import-outside-toplevel
  w1, b1, w2, b2 = _f64(ffn)
  h = np.asarray(x, np.float64) @ w1 + b1
  return (0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))) @ w2 + b2
