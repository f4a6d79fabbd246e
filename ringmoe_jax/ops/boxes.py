"""Box geometry for detection: horizontal and rotated boxes, IoUs and regression losses.

Conventions
- Horizontal boxes: `(x1, y1, x2, y2)` in pixels, image coordinates (x right, y down); a box
  with x2 <= x1 or y2 <= y1 has area 0 (padding boxes are all zeros).
- Rotated boxes: `(cx, cy, w, h, angle)`, le90 (mmrotate's): angle in radians in
  [-pi/2, pi/2); `w` is the side along the direction u = (cos angle, sin angle), i.e. the x axis
  rotated by `angle`; with y down a positive angle turns x toward y (clockwise on screen).
  `h` is the side along v = (-sin angle, cos angle). The canonical form (`normalize_le90`) also
  has w >= h, so a rectangle has one representation (a square keeps its angle modulo pi: its
  angle is only defined modulo pi/2). Every function here accepts any (w, h, angle); IoUs and
  ProbIoU only depend on the rectangle, not on which of its representations is passed.
  Negative sizes are read as their absolute value in `normalize_le90` and as 0 elsewhere; a
  box with w == 0 or h == 0 (padding) has IoU 0 with everything.
- Corners (`rbox_to_corners`): `(..., 4, 2)` in the order c -u w/2 -v h/2, c +u w/2 -v h/2,
  c +u w/2 +v h/2, c -u w/2 +v h/2: positive shoelace area (counter-clockwise in x-right /
  y-up axes) for w, h > 0.

Array API: the jnp functions are jittable with static shapes; `normalize_le90`,
`rbox_to_corners` and `rbox_to_hbox` return numpy for numpy input (host readers, evaluation),
`corners_to_rbox` and `rotated_iou_np` are numpy only, so evaluation needs neither JAX devices nor
shapely.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

_HALF_PI = math.pi / 2
# Clipping leaves at most 8 vertices: each of the 4 half-planes adds at most one to a convex
# polygon (4 -> 5 -> 6 -> 7 -> 8).
_MAX_VERTS = 8
# Rows of a numpy pairwise IoU evaluated at once: bounds the (pairs, 16, 8) intermediates.
_NP_CHUNK_PAIRS = 8192


def _xp(*arrays):
  """numpy for numpy / Python input (host code gets numpy back), jnp otherwise."""
  return np if all(isinstance(a, (np.ndarray, np.generic, float, int, list, tuple))
                   for a in arrays) else jnp


def _safe_div(xp, num, den):
  """num / den where den > 0 else 0; the inner where keeps gradients finite (no 0 / 0)."""
  ok = den > 0
  return xp.where(ok, num / xp.where(ok, den, 1), 0)


# ------------------------------------------------------------------------------ conversions


def normalize_le90(rbox):
  """Canonical le90 form of rotated boxes (..., 5): |w|, |h|, w >= h, angle in [-pi/2, pi/2).

  A box with h > w swaps w and h and turns its angle by pi/2 (the same rectangle); the angle is
  then wrapped modulo pi (turning by pi maps a rectangle onto itself).
  """
  xp = _xp(rbox)
  rbox = xp.asarray(rbox)
  cx, cy, w, h, a = (rbox[..., i] for i in range(5))
  w, h = xp.abs(w), xp.abs(h)
  swap = h > w
  w, h = xp.where(swap, h, w), xp.where(swap, w, h)
  a = xp.where(swap, a + _HALF_PI, a)
  a = xp.mod(a + _HALF_PI, math.pi) - _HALF_PI
  # mod of a tiny negative number rounds to pi itself, which would give +pi/2.
  a = xp.where(a >= _HALF_PI, a - math.pi, a)
  return xp.stack([cx, cy, w, h, a], axis=-1)


def rbox_to_corners(rbox):
  """Rotated boxes (..., 5) -> corners (..., 4, 2) in the order of the module docstring."""
  xp = _xp(rbox)
  rbox = xp.asarray(rbox)
  cx, cy, w, h, a = (rbox[..., i] for i in range(5))
  c, s = xp.cos(a), xp.sin(a)
  hw, hh = w / 2, h / 2
  sx = xp.asarray([-1.0, 1.0, 1.0, -1.0], dtype=rbox.dtype)  # sign of the u (w) offset
  sy = xp.asarray([-1.0, -1.0, 1.0, 1.0], dtype=rbox.dtype)  # sign of the v (h) offset
  du, dv = sx * hw[..., None], sy * hh[..., None]
  x = cx[..., None] + du * c[..., None] - dv * s[..., None]
  y = cy[..., None] + du * s[..., None] + dv * c[..., None]
  return xp.stack([x, y], axis=-1)


def rbox_to_hbox(rbox):
  """Rotated boxes (..., 5) -> enclosing horizontal boxes (..., 4) xyxy."""
  xp = _xp(rbox)
  rbox = xp.asarray(rbox)
  cx, cy, w, h, a = (rbox[..., i] for i in range(5))
  c, s = xp.abs(xp.cos(a)), xp.abs(xp.sin(a))
  ex = (xp.abs(w) * c + xp.abs(h) * s) / 2
  ey = (xp.abs(w) * s + xp.abs(h) * c) / 2
  return xp.stack([cx - ex, cy - ey, cx + ex, cy + ey], axis=-1)


def corners_to_rbox(points: np.ndarray) -> np.ndarray:
  """Minimum-area rectangles of quadrilaterals (DOTA 8-point polygons), numpy, canonical le90.

  points: (..., 4, 2) or (..., 8) as x1, y1, ..., x4, y4 (any vertex order). Returns (..., 5)
  float64. The minimum-area enclosing rectangle has a side along an edge of the convex hull, and
  every hull edge of 4 points joins 2 of them, so trying the 6 directions of all point pairs
  finds it (as cv2.minAreaRect, without the hull): a non-hull direction only gives a larger
  rectangle. Coincident points give a zero-size box at the point.
  """
  p = np.asarray(points, np.float64)
  if p.shape[-1] == 8:
    p = p.reshape(p.shape[:-1] + (4, 2))
  if p.shape[-2:] != (4, 2):
    raise ValueError(f"points must be (..., 4, 2) or (..., 8), got shape {p.shape}")
  i, j = np.array([0, 0, 0, 1, 1, 2]), np.array([1, 2, 3, 2, 3, 3])
  d = p[..., j, :] - p[..., i, :]                            # (..., 6, 2)
  length = np.hypot(d[..., 0], d[..., 1])
  ok = length > 0
  safe = np.where(ok, length, 1.0)
  ux = np.where(ok, d[..., 0] / safe, 1.0)
  uy = np.where(ok, d[..., 1] / safe, 0.0)
  s = ux[..., None] * p[..., None, :, 0] + uy[..., None] * p[..., None, :, 1]   # (..., 6, 4)
  t = -uy[..., None] * p[..., None, :, 0] + ux[..., None] * p[..., None, :, 1]
  ws, hs = s.max(-1) - s.min(-1), t.max(-1) - t.min(-1)
  area = np.where(ok, ws * hs, np.inf)
  k = np.argmin(area, axis=-1)[..., None]                     # all inf -> 0: direction (1, 0)
  pick = lambda x: np.take_along_axis(x, k, axis=-1)[..., 0]  # noqa: E731
  ux, uy, ws, hs = pick(ux), pick(uy), pick(ws), pick(hs)
  ms = pick((s.max(-1) + s.min(-1)) / 2)
  mt = pick((t.max(-1) + t.min(-1)) / 2)
  cx, cy = ux * ms - uy * mt, uy * ms + ux * mt
  return normalize_le90(np.stack([cx, cy, ws, hs, np.arctan2(uy, ux)], axis=-1))


# ------------------------------------------------------------------------- horizontal boxes


def _hbox_area(xp, b):
  return xp.maximum(b[..., 2] - b[..., 0], 0) * xp.maximum(b[..., 3] - b[..., 1], 0)


def _hbox_inter_union(xp, a, b):
  """Intersection and union areas of broadcast boxes (..., 4) -> (...), (...)."""
  iw = xp.maximum(xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0]), 0)
  ih = xp.maximum(xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1]), 0)
  inter = iw * ih
  return inter, _hbox_area(xp, a) + _hbox_area(xp, b) - inter


def box_iou(a, b):
  """Pairwise IoU of horizontal boxes: a (N, 4), b (M, 4) xyxy -> (N, M); 0 if the union is 0."""
  a, b = jnp.asarray(a), jnp.asarray(b)
  inter, union = _hbox_inter_union(jnp, a[:, None, :], b[None, :, :])
  return _safe_div(jnp, inter, union)


def giou_loss(pred, target):
  """1 - GIoU (Rezatofighi et al. 2019) of aligned horizontal boxes: (..., 4), (..., 4) -> (...).

  GIoU = IoU - (C - U) / C with C the area of the smallest enclosing box, in [-1, 1], so the
  loss is in [0, 2] and still has a gradient for disjoint boxes (IoU alone is flat at 0).
  Degenerate pairs (C == 0) give GIoU 0, loss 1.
  """
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  inter, union = _hbox_inter_union(jnp, pred, target)
  cw = jnp.maximum(pred[..., 2], target[..., 2]) - jnp.minimum(pred[..., 0], target[..., 0])
  ch = jnp.maximum(pred[..., 3], target[..., 3]) - jnp.minimum(pred[..., 1], target[..., 1])
  enclose = jnp.maximum(cw, 0) * jnp.maximum(ch, 0)
  giou = _safe_div(jnp, inter, union) - _safe_div(jnp, enclose - union, enclose)
  return 1 - giou


# --------------------------------------------------------------------------- rotated IoU


def _wrap_next(xp, x, n, axis):
  """x[(i + 1) mod n] along `axis` (-2 for points, -1 for scalars) for polygons of n vertices."""
  idx = xp.arange(x.shape[axis])
  last = idx == (n - 1)[..., None]
  first = x[..., :1, :] if axis == -2 else x[..., :1]
  if axis == -2:
    last = last[..., None]
  return xp.where(last, first, xp.roll(x, -1, axis=axis))


def _clip(xp, pts, n, s):
  """Sutherland-Hodgman step: keep the part of polygons (pts (..., P, 2), n (...,) vertices) where
  s >= 0, s (..., P) the signed distance of each vertex to the clipping line.

  Edge i -> i+1 emits vertex i if it is inside, and the crossing point if exactly one end is
  inside; the emitted points are compacted to the front (static shapes: a prefix count and a
  gather, no scatter). Points past P (only possible from rounding on a degenerate sliver) are
  dropped.
  """
  p = pts.shape[-2]
  valid = xp.arange(p) < n[..., None]
  nxt_pts, nxt_s = _wrap_next(xp, pts, n, -2), _wrap_next(xp, s, n, -1)
  inside, nxt_inside = s >= 0, nxt_s >= 0
  emit_p = valid & inside
  emit_x = valid & (inside != nxt_inside)
  # Where the signs differ |s - nxt_s| >= |s|, so t is in [0, 1] and the division is safe.
  t = s / xp.where(emit_x, s - nxt_s, 1)
  cross = pts + t[..., None] * (nxt_pts - pts)
  cand = xp.stack([pts, cross], axis=-2).reshape(pts.shape[:-2] + (2 * p, 2))
  emit = xp.stack([emit_p, emit_x], axis=-1).reshape(s.shape[:-1] + (2 * p,))
  count = xp.cumsum(emit.astype(np.int32), axis=-1)
  # Output slot k takes the candidate where the running count first reaches k + 1.
  src = xp.sum(count[..., None, :] <= xp.arange(p)[:, None], axis=-1)
  src = xp.minimum(src, 2 * p - 1)
  out = xp.take_along_axis(cand, src[..., None], axis=-2)
  return out, xp.minimum(count[..., -1], p)


def _shoelace(xp, pts, n):
  valid = xp.arange(pts.shape[-2]) < n[..., None]
  nxt = _wrap_next(xp, pts, n, -2)
  cross = pts[..., 0] * nxt[..., 1] - nxt[..., 0] * pts[..., 1]
  return 0.5 * xp.sum(xp.where(valid, cross, 0), axis=-1)


def _rotated_iou(xp, a, b):
  """Exact IoU of broadcast rotated boxes (..., 5), (..., 5) -> (...)."""
  shape = np.broadcast_shapes(a.shape, b.shape)
  a, b = xp.broadcast_to(a, shape), xp.broadcast_to(b, shape)
  wa, ha = xp.maximum(a[..., 2], 0), xp.maximum(a[..., 3], 0)
  wb, hb = xp.maximum(b[..., 2], 0), xp.maximum(b[..., 3], 0)
  # Work in A's frame, where A is the axis-aligned [-wa/2, wa/2] x [-ha/2, ha/2]: the clip lines
  # are exact, coordinates are small (no loss from large pixel offsets) and only the difference
  # of the angles enters, so angles near +-pi/2 (or representations a pi apart) cost nothing.
  dx, dy = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
  ca, sa = xp.cos(a[..., 4]), xp.sin(a[..., 4])
  bx, by = ca * dx + sa * dy, -sa * dx + ca * dy
  rel = xp.stack([bx, by, wb, hb, b[..., 4] - a[..., 4]], axis=-1)
  corners = rbox_to_corners(rel)                                 # (..., 4, 2)
  shape = corners.shape[:-2]
  pts = xp.concatenate([corners, xp.zeros(shape + (_MAX_VERTS - 4, 2), corners.dtype)], axis=-2)
  n = xp.full(shape, 4, np.int32)
  for axis, sign, half in ((0, -1, wa), (0, 1, wa), (1, -1, ha), (1, 1, ha)):
    # sign -1: x <= wa / 2 (s = wa/2 - x); sign +1: x >= -wa / 2 (s = wa/2 + x); same for y.
    s = half[..., None] / 2 + sign * pts[..., axis]
    pts, n = _clip(xp, pts, n, s)
  area_a, area_b = wa * ha, wb * hb
  inter = xp.clip(_shoelace(xp, pts, n), 0, xp.minimum(area_a, area_b))
  return _safe_div(xp, inter, area_a + area_b - inter)


def rotated_iou_aligned(a, b):
  """Exact IoU of aligned rotated boxes, jnp: (..., 5), (..., 5) broadcast -> (...)."""
  a, b = jnp.asarray(a), jnp.asarray(b)
  return _rotated_iou(jnp, a, b)


def rotated_iou(a, b):
  """Pairwise exact polygon IoU of rotated boxes, jnp: a (N, 5), b (M, 5) -> (N, M).

  The intersection is B's rectangle clipped by A's 4 half-planes (Sutherland-Hodgman, at most 8
  vertices, fixed shapes with a vertex count), its area by the shoelace formula. Identical,
  nested, touching and disjoint boxes are exact up to rounding; zero-size boxes give 0, never
  NaN. Memory: a few hundred bytes per pair of intermediates (1e6 pairs ~ a few hundred MB).
  """
  a, b = jnp.asarray(a), jnp.asarray(b)
  return _rotated_iou(jnp, a[:, None, :], b[None, :, :])


def rotated_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """`rotated_iou` on the host in float64 numpy (same code): (N, 5), (M, 5) -> (N, M)."""
  a = np.asarray(a, np.float64).reshape(-1, 5)
  b = np.asarray(b, np.float64).reshape(-1, 5)
  out = np.zeros((a.shape[0], b.shape[0]), np.float64)
  if out.size == 0:
    return out
  rows = max(1, _NP_CHUNK_PAIRS // b.shape[0])
  for i in range(0, a.shape[0], rows):
    out[i:i + rows] = _rotated_iou(np, a[i:i + rows, None, :], b[None, :, :])
  return out


# ----------------------------------------------------------------------------- ProbIoU


def probiou(pred, target, eps: float = 1e-7, min_size: float = 1e-3):
  """ProbIoU (Llerena et al. 2021) of aligned rotated boxes: (..., 5), (..., 5) -> (...) in [0, 1].

  Each box is the Gaussian of a uniform rectangle: mean (cx, cy), covariance
  R(angle) diag(w^2, h^2) R(angle)^T / 12. With S = S1 + S2, the Bhattacharyya distance is
    B = d^T S^-1 d / 4 + log(det S / (4 sqrt(det S1 det S2))) / 2,     d = mu1 - mu2,
  the Hellinger distance H = sqrt(1 - exp(-B)) and ProbIoU = 1 - H. det S and d^T adj(S) d are
  written as sums of positive terms in the boxes' own frames (adj is linear for 2x2 matrices),
  so the elongated boxes of remote sensing (ships, bridges) lose nothing to the cancellation of
  a * b - c^2. B is clipped to [eps, 100] and eps added under the root (as the reference
  implementation) so the gradient stays finite at identical boxes; sizes below `min_size`
  pixels are raised to it so padding boxes give ProbIoU ~0 without NaN.
  """
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  p1 = jnp.maximum(pred[..., 2], min_size) ** 2 / 12      # variance along u1
  q1 = jnp.maximum(pred[..., 3], min_size) ** 2 / 12      # variance along v1
  p2 = jnp.maximum(target[..., 2], min_size) ** 2 / 12
  q2 = jnp.maximum(target[..., 3], min_size) ** 2 / 12
  t1, t2 = pred[..., 4], target[..., 4]
  c2d, s2d = jnp.cos(t2 - t1) ** 2, jnp.sin(t2 - t1) ** 2
  # det(S1 + S2) = det S1 + det S2 + tr(adj(S1) S2), the last term evaluated in box 1's frame.
  det_s = p1 * q1 + p2 * q2 + q1 * (p2 * c2d + q2 * s2d) + p1 * (p2 * s2d + q2 * c2d)
  dx, dy = pred[..., 0] - target[..., 0], pred[..., 1] - target[..., 1]

  def adj_quad(p, q, t):  # d^T adj(R diag(p, q) R^T) d = q (d.u)^2 + p (d.v)^2
    du = dx * jnp.cos(t) + dy * jnp.sin(t)
    dv = -dx * jnp.sin(t) + dy * jnp.cos(t)
    return q * du ** 2 + p * dv ** 2

  maha = (adj_quad(p1, q1, t1) + adj_quad(p2, q2, t2)) / det_s   # d^T S^-1 d
  sqrt_dets = jnp.sqrt(p1 * q1) * jnp.sqrt(p2 * q2)
  bd = maha / 4 + jnp.log(det_s / (4 * sqrt_dets)) / 2
  bd = jnp.clip(bd, eps, 100.0)
  hellinger = jnp.sqrt(-jnp.expm1(-bd) + eps)
  return 1 - hellinger


def probiou_loss(pred, target, eps: float = 1e-7, min_size: float = 1e-3):
  """Rotated-box regression loss 1 - ProbIoU = Hellinger distance: (..., 5), (..., 5) -> (...).

  Why this loss for rotated boxes: it is differentiable everywhere (the exact polygon IoU has
  kinks and a flat zero for disjoint boxes), it has no angle-periodicity discontinuity (the
  Gaussian only sees cos^2, sin^2 and cos * sin of the angle, so angle and angle +- pi, and a
  (w, h, angle) and its (h, w, angle + pi/2) twin, give the same loss; a square's angle is
  irrelevant), and it is a few elementwise ops per box. ~0 (sqrt(2 eps)) for identical boxes.
  """
  return 1 - probiou(pred, target, eps, min_size)
