"""Anchor-free one-stage detector head (CenterNet style) for horizontal and rotated boxes.

Axes: B batch, h/w the stride-4 grid (H/4, W/4), K classes, G ground-truth slots, R box
parameters (4 horizontal, 6 rotated), N = h * w locations.

Why CenterNet and not FCOS: remote-sensing objects are small (most 8-50 px) and dense, and the
encoder's finest map already has stride 4. One centre cell per object on the stride-4 grid of the
fused FPN (LightFPN over the strides 4 / 8 / 16 / 32) needs no anchor shapes, no object-size ranges
per pyramid level and no centre-ness branch; the targets are a pure function of the padded
ground truth (a (B, G, h, w) broadcast), so the loss has one static shape and shards over the
batch like every other head. Peaks are then decoded and NMS'd (ops/nms.py): adjacent cells of
one large object may both peak.

Head: LightFPN -> (cls tower: 3x3 ConvNormAct -> 1x1 conv to K, bias -log(99) so p = 0.01 at
start) and (box tower: 3x3 ConvNormAct -> 1x1 conv to R).
Box parameters at cell (i, j) with centre (x0, y0) = ((j + 0.5) s, (i + 0.5) s), s = 4:
  horizontal: (l, t, r, b) = s * exp(raw) distances to the edges -> (x1, y1, x2, y2);
  rotated:    (cx, cy) = (x0, y0) + s * raw[0:2], (w, h) = s * exp(raw[2:4]),
              angle = atan2(raw[5], raw[4]) / 2 (le90; the double angle makes w/h order and
              the angle's period pi agree, so the encoding has no jump at +-pi/2).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ringmoe_jax.heads.layers import F32, ConvNormAct, LightFPN, conv
from ringmoe_jax.ops.boxes import rbox_to_hbox

STRIDE = 4
_MAX_LOG = 6.0  # exp(6) * 4 = 1614 px: a box-size clamp far past any tile, keeps exp finite


class DetectionHead(nnx.Module):
  """levels [(B, H/4, W/4, dims[0]), ...] -> (heat logits (B, h, w, K), box raw (B, h, w, R))."""

  def __init__(self, dims: Sequence[int], channels: int, num_classes: int, *, rotated: bool,
               rngs: nnx.Rngs):
    self.rotated = rotated
    self.fpn = LightFPN(dims, channels, rngs=rngs)
    self.cls_tower = ConvNormAct(channels, channels, 3, rngs=rngs)
    self.box_tower = ConvNormAct(channels, channels, 3, rngs=rngs)
    self.cls_out = conv(channels, num_classes, 1, rngs=rngs,
                        kernel_init=nnx.initializers.normal(0.01))
    # Focal-loss prior: every location starts as background with p = 0.01 (RetinaNet).
    self.cls_out.bias.value = jnp.full((num_classes,), -jnp.log(99.0), F32)
    self.box_out = conv(channels, 6 if rotated else 4, 1, rngs=rngs,
                        kernel_init=nnx.initializers.normal(0.01))

  def __call__(self, feats: Sequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    x = self.fpn(feats)
    return self.cls_out(self.cls_tower(x)), self.box_out(self.box_tower(x))


def cell_centres(h: int, w: int) -> jax.Array:
  """(h * w, 2) pixel centres (x, y) of the stride-4 cells, row-major."""
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=F32), jnp.arange(w, dtype=F32), indexing="ij")
  return jnp.stack([(xs.ravel() + 0.5) * STRIDE, (ys.ravel() + 0.5) * STRIDE], -1)


def decode_boxes(raw: jax.Array, centres: jax.Array, rotated: bool) -> jax.Array:
  """raw (..., R) at cells with pixel centres (..., 2) -> (..., 4) xyxy or (..., 5) le90."""
  raw = raw.astype(F32)
  x0, y0 = centres[..., 0], centres[..., 1]
  if not rotated:
    d = STRIDE * jnp.exp(jnp.clip(raw, -_MAX_LOG, _MAX_LOG))
    return jnp.stack([x0 - d[..., 0], y0 - d[..., 1], x0 + d[..., 2], y0 + d[..., 3]], -1)
  size = STRIDE * jnp.exp(jnp.clip(raw[..., 2:4], -_MAX_LOG, _MAX_LOG))
  angle = 0.5 * jnp.arctan2(raw[..., 5], raw[..., 4] + 1e-12)
  angle = jnp.where(angle >= jnp.pi / 2, angle - jnp.pi, angle)  # [-pi/2, pi/2)
  return jnp.stack([x0 + STRIDE * raw[..., 0], y0 + STRIDE * raw[..., 1], size[..., 0],
                    size[..., 1], angle], -1)


def centre_cells(gt_boxes: jax.Array, h: int, w: int) -> jax.Array:
  """(B, G, 5) le90 -> (B, G, 2) int32 (row, col) of the cell holding each box centre."""
  col = jnp.clip(jnp.floor(gt_boxes[..., 0] / STRIDE), 0, w - 1).astype(jnp.int32)
  row = jnp.clip(jnp.floor(gt_boxes[..., 1] / STRIDE), 0, h - 1).astype(jnp.int32)
  return jnp.stack([row, col], -1)


def heatmap_targets(gt_boxes: jax.Array, gt_classes: jax.Array, gt_valid: jax.Array,
                    num_classes: int, h: int, w: int) -> jax.Array:
  """CenterNet targets (B, h, w, K) in [0, 1]: 1 at each object's centre cell, a Gaussian of
  the object's envelope size (sigma = size / 6 in cells, at least 0.5) around it, the max over
  objects. gt_boxes (B, G, 5) le90, gt_classes (B, G), gt_valid (B, G)."""
  env = rbox_to_hbox(gt_boxes)
  cell = centre_cells(gt_boxes, h, w).astype(F32)                       # (B, G, 2)
  sig_x = jnp.maximum((env[..., 2] - env[..., 0]) / STRIDE / 6, 0.5)
  sig_y = jnp.maximum((env[..., 3] - env[..., 1]) / STRIDE / 6, 0.5)
  rows = jnp.arange(h, dtype=F32)[None, None, :, None]
  cols = jnp.arange(w, dtype=F32)[None, None, None, :]
  g = jnp.exp(-((cols - cell[..., 1, None, None]) ** 2 / (2 * sig_x[..., None, None] ** 2)
                + (rows - cell[..., 0, None, None]) ** 2 / (2 * sig_y[..., None, None] ** 2)))
  g = g * gt_valid[..., None, None]                                      # (B, G, h, w)
  onehot = jax.nn.one_hot(gt_classes, num_classes, dtype=F32)            # (B, G, K)
  return jnp.max(g[..., None] * onehot[:, :, None, None, :], axis=1)


def focal_loss(logits: jax.Array, target: jax.Array, weight: jax.Array, *, alpha: float = 2.0,
               beta: float = 4.0) -> jax.Array:
  """CenterNet's penalty-reduced focal loss over (B, h, w, K), normalised by the number of
  objects (target == 1 cells); weight (B,) excludes padding examples."""
  logits = logits.astype(F32)
  p = jax.nn.sigmoid(logits)
  log_p, log_1p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
  pos = (target >= 1.0 - 1e-6).astype(F32)
  wb = weight.astype(F32)[:, None, None, None]
  pos_term = pos * (1 - p) ** alpha * log_p
  neg_term = (1 - pos) * (1 - target) ** beta * p ** alpha * log_1p
  n = jnp.maximum(jnp.sum(pos * wb), 1.0)
  return -jnp.sum((pos_term + neg_term) * wb) / n


def gather_cells(x: jax.Array, cells: jax.Array) -> jax.Array:
  """x (B, h, w, R) at cells (B, G, 2) (row, col) -> (B, G, R)."""
  b, h, w, r = x.shape
  flat = x.reshape(b, h * w, r)
  idx = cells[..., 0] * w + cells[..., 1]
  return jnp.take_along_axis(flat, idx[..., None], axis=1)


def peaks(heat_logits: jax.Array) -> jax.Array:
  """Sigmoid scores (B, h, w, K) where a cell is the maximum of its 3x3 neighbourhood (in its
  class), else 0: CenterNet's max-pool 'NMS' before the top-k."""
  p = jax.nn.sigmoid(heat_logits.astype(F32))
  m = jax.lax.reduce_window(p, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")
  return jnp.where(p >= m, p, 0.0)
