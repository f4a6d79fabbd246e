"""Static-shape, jittable non-maximum suppression and top-K detection decoding (one image;
`jax.vmap` over the batch).

API: `nms` / `rotated_nms` return `(indices (max_out,) int32, keep (max_out,) bool)`: indices
into the input of the kept boxes, best score first, `keep` False for the padding slots (whose
index is 0). `topk_detections` returns the padded detection dict that the evaluators read.

Semantics (torchvision's `batched_nms`, checked against a plain greedy numpy loop in
tests/test_boxes.py):
- candidates are the valid boxes with a finite score, visited by descending score, ties by the
  lower input index (`lax.top_k`'s order);
- a box is removed when a kept, better box of the SAME class overlaps it with IoU > threshold
  (strictly); boxes of different classes never suppress each other (`classes=None`: one class);
- only the `top_k` best candidates enter (static K; default all N): the IoU matrix is (K, K)
  and the greedy pass is K sequential steps of O(K) work.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from ringmoe_jax.ops.boxes import box_iou, rotated_iou


def _greedy_nms(iou_fn: Callable, boxes, scores, valid, iou_threshold, max_out: int,
                classes, top_k: int | None):
  n = boxes.shape[0]
  k = n if top_k is None else min(int(top_k), n)
  ok = jnp.asarray(valid, bool) & jnp.isfinite(scores)
  masked = jnp.where(ok, scores, -jnp.inf)
  _, order = lax.top_k(masked, k)                    # descending, ties: lower index first
  cand = ok[order]
  b = boxes[order]
  iou = iou_fn(b, b)
  if classes is not None:
    cls = jnp.asarray(classes)[order]
    iou = jnp.where(cls[:, None] == cls[None, :], iou, 0)
  later = jnp.arange(k)[None, :] > jnp.arange(k)[:, None]
  suppress = (iou > iou_threshold) & later           # (K, K): row i removes these later boxes

  def body(i, keep):
    return keep & ~(keep[i] & suppress[i])

  keep = lax.fori_loop(0, k, body, cand)
  # Kept candidates first, in score order (stable sort of the "not kept" flag).
  pos = jnp.argsort(~keep, stable=True)
  num = jnp.sum(keep)
  slots = jnp.arange(max_out)
  take = pos[jnp.minimum(slots, k - 1)]
  out_keep = slots < jnp.minimum(num, k)
  return jnp.where(out_keep, order[take], 0).astype(jnp.int32), out_keep


def nms(boxes, scores, valid, iou_threshold, max_out: int, *, classes=None,
        top_k: int | None = None):
  """Per-class greedy NMS of horizontal boxes (N, 4) xyxy; scores (N,), valid (N,) bool,
  classes (N,) int or None. Returns (indices (max_out,) int32, keep (max_out,) bool).
  `max_out` and `top_k` are static; `iou_threshold` may be traced."""
  return _greedy_nms(box_iou, jnp.asarray(boxes), jnp.asarray(scores), valid, iou_threshold,
                     int(max_out), classes, top_k)


def rotated_nms(boxes, scores, valid, iou_threshold, max_out: int, *, classes=None,
                top_k: int | None = None):
  """`nms` for rotated boxes (N, 5) (cx, cy, w, h, angle) with the exact polygon IoU."""
  return _greedy_nms(rotated_iou, jnp.asarray(boxes), jnp.asarray(scores), valid, iou_threshold,
                     int(max_out), classes, top_k)


def topk_detections(scores, boxes, valid=None, *, score_threshold=0.05, pre_nms_top_k: int = 1000,
                    iou_threshold=0.5, max_out: int = 300, nms_top_k: int | None = None):
  """Decode one image's dense predictions into at most `max_out` detections (static shapes).

  scores: (N, C) per-location class probabilities; boxes: (N, D) shared by the classes or
  (N, C, D) per class, D = 4 (xyxy, horizontal NMS) or 5 (rotated NMS); valid: (N,) bool
  locations (None: all). Steps: the `pre_nms_top_k` best (location, class) pairs with score >
  `score_threshold` -> per-class NMS -> the `max_out` best survivors.

  Returns {"boxes": (max_out, D), "scores": (max_out,), "classes": (max_out,) int32,
  "valid": (max_out,) bool}; padding slots have valid False and zero boxes / scores / class.
  `nms_top_k` bounds the NMS candidates further (default: all pre-NMS pairs).
  """
  scores, boxes = jnp.asarray(scores), jnp.asarray(boxes)
  n, c = scores.shape
  d = boxes.shape[-1]
  if d not in (4, 5):
    raise ValueError(f"boxes must have 4 (xyxy) or 5 (rotated) coordinates, got {d}")
  loc_ok = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
  flat = jnp.where(loc_ok[:, None], scores, -jnp.inf).reshape(-1)
  k = min(int(pre_nms_top_k), n * c)
  top, idx = lax.top_k(flat, k)
  loc, cls = idx // c, (idx % c).astype(jnp.int32)
  cand_boxes = boxes[loc] if boxes.ndim == 2 else boxes[loc, cls]
  cand_ok = jnp.isfinite(top) & (top > score_threshold)
  fn = nms if d == 4 else rotated_nms
  keep_idx, keep = fn(cand_boxes, top, cand_ok, iou_threshold, max_out, classes=cls,
                      top_k=nms_top_k)
  return {
      "boxes": jnp.where(keep[:, None], cand_boxes[keep_idx], 0),
      "scores": jnp.where(keep, top[keep_idx], 0),
      "classes": jnp.where(keep, cls[keep_idx], 0).astype(jnp.int32),
      "valid": keep,
  }


def batched_topk_detections(scores, boxes, valid=None, **kwargs):
  """`topk_detections` over a batch: scores (B, N, C), boxes (B, N[, C], D), valid (B, N)."""
  fn = lambda s, b, v: topk_detections(s, b, v, **kwargs)  # noqa: E731
  if valid is None:
    valid = jnp.ones(scores.shape[:2], bool)
  return jax.vmap(fn)(scores, boxes, valid)
