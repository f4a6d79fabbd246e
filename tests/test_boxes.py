"""ops/boxes.py and ops/nms.py against independent references: shapely polygons for the rotated
IoU, hand-written numpy loops for horizontal IoU / GIoU / greedy NMS, a float64 matrix form of
the Bhattacharyya distance for ProbIoU."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shapely.geometry import MultiPoint, Polygon

from ringmoe_jax.ops import boxes as B
from ringmoe_jax.ops import nms as N

HP = math.pi / 2


def _rand_rboxes(rng, n, centre=(0, 32), size=(2, 24)):
  return np.c_[rng.uniform(*centre, (n, 2)), rng.uniform(*size, (n, 2)),
               rng.uniform(-HP, HP, n)]


def _pairs():
  """~200 (a, b) pairs of rotated boxes covering the hard cases, float32 values."""
  rng = np.random.default_rng(0)
  a, b = [], []
  def add(x, y):
    a.append(np.asarray(x, np.float64)), b.append(np.asarray(y, np.float64))
  ra = _rand_rboxes(rng, 110)
  rb = _rand_rboxes(rng, 110)
  rb[:, :2] = ra[:, :2] + rng.normal(0, 6, (110, 2))      # mostly overlapping
  for x, y in zip(ra, rb):
    add(x, y)
  specials = [0.0, -HP, HP, HP - 1e-6, -HP + 1e-6, 1e-7, -1e-7]
  for k in range(35):                                      # angles at / near 0 and +-pi/2
    x, y = _rand_rboxes(rng, 2)
    y[:2] = x[:2] + rng.normal(0, 4, 2)
    x[4] = specials[k % len(specials)]
    y[4] = specials[(3 * k + 1) % len(specials)]
    add(x, y)
  for x in _rand_rboxes(rng, 8):                           # identical
    add(x, x)
  for k, x in enumerate(_rand_rboxes(rng, 6)):             # one exact twin representation
    x[4] = specials[k]
    add(x, [x[0], x[1], x[3], x[2], x[4] + HP] if k % 2 else [*x[:4], x[4] - math.pi])
  for x in _rand_rboxes(rng, 10):                          # nested, any angle
    inner = min(x[2], x[3]) / 2.5
    add(x, [x[0], x[1], inner * rng.uniform(0.3, 1), inner, rng.uniform(-HP, HP)])
  for x in _rand_rboxes(rng, 10):                          # disjoint
    add(x, [x[0] + 60, x[1] - 55, *x[2:]])
  add([10, 10, 4, 6, 0], [14, 10, 4, 6, 0])                # shared edge
  add([10, 10, 4, 6, -HP], [10, 16, 4, 6, HP])             # shared edge, +-pi/2
  add([10, 10, 4, 4, 0], [14, 14, 4, 4, 0])                # shared corner
  x = _rand_rboxes(rng, 1)[0]
  for deg in ([*x[:2], 0, 5, 0.3], [*x[:2], 5, 0, -HP], [0, 0, 0, 0, 0]):   # degenerate
    add(deg, x), add(x, deg), add(deg, deg)
  return np.asarray(a, np.float32), np.asarray(b, np.float32)


def _shapely_iou(x, y):
  p = Polygon(B.rbox_to_corners(np.asarray(x, np.float64)))
  q = Polygon(B.rbox_to_corners(np.asarray(y, np.float64)))
  inter = p.intersection(q).area
  union = p.area + q.area - inter
  return inter / union if union > 0 else 0.0


def test_rotated_iou_matches_shapely():
  a, b = _pairs()
  assert len(a) >= 190
  ref = np.array([_shapely_iou(x, y) for x, y in zip(a, b)])
  pair, aligned = jax.jit(lambda x, y: (B.rotated_iou(x, y), B.rotated_iou_aligned(x, y)))(a, b)
  pair = np.asarray(pair)
  assert pair.shape == (len(a), len(b)) and np.isfinite(pair).all()
  np.testing.assert_allclose(np.diag(pair), ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(aligned), ref, atol=1e-5)
  host = B.rotated_iou_np(a, b)
  np.testing.assert_allclose(np.diag(host), ref, atol=1e-9)
  # Off-diagonal pairs too (mostly disjoint, some overlapping).
  rng = np.random.default_rng(1)
  i, j = rng.integers(0, len(a), 300), rng.integers(0, len(b), 300)
  ref_off = np.array([_shapely_iou(a[u], b[v]) for u, v in zip(i, j)])
  np.testing.assert_allclose(pair[i, j], ref_off, atol=1e-5)
  np.testing.assert_allclose(host[i, j], ref_off, atol=1e-9)
  # The cases whose answer is known without shapely.
  known = np.diag(host)[110 + 35:110 + 35 + 14]
  assert np.all(known[:8] == 1) and np.all(known[8:] > 1 - 1e-6)   # identical; twins (float32)
  assert np.all(np.diag(host)[-9:] == 0)                               # degenerate
  assert np.all(np.diag(pair)[-9:] == 0)


def test_rotated_iou_jit_vmap_and_grad():
  rng = np.random.default_rng(2)
  xa = _rand_rboxes(rng, 2 * 5).reshape(2, 5, 5).astype(np.float32)
  xb = _rand_rboxes(rng, 2 * 7).reshape(2, 7, 5).astype(np.float32)
  # Gradient through the clipping exists and is finite, also for identical boxes.
  grad = jax.grad(lambda x, y: B.rotated_iou_aligned(x, y).sum())
  got, g = jax.jit(lambda x, y: (jax.vmap(B.rotated_iou)(x, y),
                                 grad(jnp.stack([y[0, 0] + 0.5, y[0, 0]]), y[0, 0])))(xa, xb)
  got = np.asarray(got)
  assert got.shape == (2, 5, 7)
  for k in range(2):
    np.testing.assert_allclose(got[k], B.rotated_iou_np(xa[k], xb[k]), atol=1e-5)
  assert np.isfinite(np.asarray(g)).all()


def _same_corner_set(p, q, tol):
  d = np.linalg.norm(p[..., :, None, :] - q[..., None, :, :], axis=-1)
  return np.all(d.min(-1) < tol) and np.all(d.min(-2) < tol)


def test_normalize_le90_round_trip():
  rng = np.random.default_rng(3)
  x = np.c_[rng.uniform(0, 50, (300, 2)), rng.uniform(0.5, 30, (300, 2)),
            rng.uniform(-3 * math.pi, 3 * math.pi, 300)]
  x[:20, 4] = [-HP, HP, 0, math.pi, -math.pi, 3 * HP, -3 * HP,
               np.nextafter(-HP, -np.inf), np.nextafter(HP, np.inf), np.nextafter(HP, 0)] * 2
  x[20:30, 3] = x[20:30, 2]                                              # squares
  y = B.normalize_le90(x)
  assert isinstance(y, np.ndarray)
  assert np.all(y[:, 2] >= y[:, 3]) and np.all(y[:, 4] >= -HP) and np.all(y[:, 4] < HP)
  assert _same_corner_set(B.rbox_to_corners(x), B.rbox_to_corners(y), 1e-9)
  np.testing.assert_allclose(B.normalize_le90(y), y, atol=1e-12)      # idempotent
  # Negative sizes are the same rectangle.
  z = x.copy()
  z[:, 2] *= -1
  assert _same_corner_set(B.rbox_to_corners(x), B.rbox_to_corners(B.normalize_le90(z)), 1e-9)
  # jnp path, float32 (the rounding of mod near -pi/2 must not give +pi/2).
  xf = x.astype(np.float32)
  xf[0, 4] = np.nextafter(np.float32(-HP), np.float32(-np.inf))
  yj = np.asarray(jax.jit(B.normalize_le90)(xf))
  assert np.all(yj[:, 4] >= np.float32(-HP)) and np.all(yj[:, 4] < np.float32(HP))
  assert _same_corner_set(B.rbox_to_corners(xf.astype(np.float64)),
                          B.rbox_to_corners(yj.astype(np.float64)), 1e-4)


def test_corners_to_rbox():
  rng = np.random.default_rng(4)
  x = B.normalize_le90(_rand_rboxes(rng, 200, centre=(0, 1000), size=(1, 100)))
  x[:4, 4] = [-HP, 0.0, HP - 1e-9, -HP + 1e-9]
  pts = B.rbox_to_corners(x)
  # DOTA polygons come in any starting vertex and orientation.
  pts = np.stack([np.roll(p, k, axis=0)[::(1 if k % 2 else -1)] for k, p in enumerate(pts)])
  got = B.corners_to_rbox(pts.reshape(-1, 8))
  np.testing.assert_allclose(got[:, :4], x[:, :4], atol=1e-7)
  dang = np.mod(got[:, 4] - x[:, 4] + HP, math.pi) - HP           # angles modulo pi
  assert np.all(np.abs(dang) < 1e-7)
  assert _same_corner_set(B.rbox_to_corners(got), pts, 1e-6)
  # Non-rectangular quadrilaterals: a rectangle holding all points, no larger than the best
  # bounding rectangle over 3600 directions.
  quads = pts[:20] + rng.normal(0, 2, (20, 4, 2))
  for q, r in zip(quads, B.corners_to_rbox(quads)):
    rect = Polygon(B.rbox_to_corners(r))
    assert rect.buffer(1e-6).contains(MultiPoint(q).convex_hull)
    th = np.linspace(0, HP, 3600)
    u = np.stack([np.cos(th), np.sin(th)], -1)
    s, t = q @ u.T, q @ np.stack([-u[:, 1], u[:, 0]], -1).T
    brute = np.min((s.max(0) - s.min(0)) * (t.max(0) - t.min(0)))
    assert r[2] * r[3] <= brute + 1e-9 and r[2] * r[3] > 0.99 * brute
  # Coincident points: zero-size box at the point.
  np.testing.assert_allclose(B.corners_to_rbox(np.full((4, 2), 3.0)), [3, 3, 0, 0, 0])


def test_rbox_to_hbox():
  rng = np.random.default_rng(5)
  x = _rand_rboxes(rng, 50)
  c = B.rbox_to_corners(x)
  np.testing.assert_allclose(B.rbox_to_hbox(x), np.c_[c.min(1), c.max(1)],
                             atol=1e-9)


def _np_iou(p, q):
  iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
  ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
  area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
  union = area(p) + area(q) - iw * ih
  return (iw * ih / union if union > 0 else 0.0), union


def _rand_hboxes(rng, n, span=40):
  xy = rng.uniform(0, span, (n, 2))
  return np.c_[xy, xy + rng.uniform(1, 15, (n, 2))]


def test_box_iou_and_giou_reference():
  rng = np.random.default_rng(6)
  a, b = _rand_hboxes(rng, 30), _rand_hboxes(rng, 20)
  a[0] = 0                                                        # padding box
  b[1] = a[1]
  c = b
  ref_g = []
  for p, q in zip(a[:20], c):
    iou, union = _np_iou(p, q)
    encl = (max(p[2], q[2]) - min(p[0], q[0])) * (max(p[3], q[3]) - min(p[1], q[1]))
    ref_g.append(1 - (iou - (encl - union) / encl) if encl > 0 else 1.0)
  giou_grad = jax.grad(lambda p, q: B.giou_loss(p, q).sum())
  got, got_g, g = jax.jit(lambda x, y: (B.box_iou(x, y), B.giou_loss(x[:20], y),
                                        giou_grad(x[:3], y[:3])))(
      a.astype(np.float32), c.astype(np.float32))
  got, got_g = np.asarray(got), np.asarray(got_g)
  ref = np.array([[_np_iou(p, q)[0] for q in b] for p in a])
  np.testing.assert_allclose(got, ref, atol=1e-6)
  assert np.all(got[0] == 0) and got[1, 1] == pytest.approx(1.0)
  np.testing.assert_allclose(got_g, ref_g, atol=1e-5)
  assert got_g[1] == pytest.approx(0.0, abs=1e-6) and np.all(got_g >= 0) and np.all(got_g <= 2)
  assert np.isfinite(np.asarray(g)).all()


def _probiou_reference(p, q):
  """Float64 Bhattacharyya distance of the two Gaussians in plain matrix form -> Hellinger."""
  def gauss(r):
    rot = np.array([[math.cos(r[4]), -math.sin(r[4])], [math.sin(r[4]), math.cos(r[4])]])
    return np.array(r[:2]), rot @ np.diag([r[2] ** 2 / 12, r[3] ** 2 / 12]) @ rot.T
  m1, s1 = gauss(p)
  m2, s2 = gauss(q)
  s = (s1 + s2) / 2
  d = m1 - m2
  bd = d @ np.linalg.solve(s, d) / 8 + 0.5 * math.log(
      np.linalg.det(s) / math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
  return math.sqrt(1 - math.exp(-bd))


def test_probiou_loss():
  rng = np.random.default_rng(7)
  p, q = _rand_rboxes(rng, 40), _rand_rboxes(rng, 40)
  q[:, :2] = p[:, :2] + rng.normal(0, 5, (40, 2))
  q[:5, 2] *= 8                                                    # elongated boxes
  x = [10.0, 10.0, 20.0, 8.0, 0.3]
  t = [12.0, 9.0, 18.0, 9.0, -0.2]
  rows = [
      (x, x),                                                      # 40: identical
      *(([10.0 + d, *x[1:]], x) for d in (1, 3, 9, 27)),           # 41-44: growing offset
      (x, t), ([10.0, 10.0, 8.0, 20.0, 0.3 + HP], t),              # 45-47: one rectangle in
      ([10.0, 10.0, 20.0, 8.0, 0.3 - math.pi], t),                 #   three representations
      # 48-53: +-pi/2, w == h, identical squares, twin at pi/2, zero-size target.
      ([5, 5, 10, 4, -HP], [5, 6, 10, 4, HP - 1e-6]), ([5, 5, 10, 4, HP], [5, 5, 10, 4, -HP]),
      ([5, 5, 6, 6, 0.4], [6, 5, 6, 6, -1.0]), ([5, 5, 6, 6, 0.4], [5, 5, 6, 6, 0.4]),
      ([5, 5, 10, 4, HP - 1e-6], [5, 5, 4, 10, 0.0]), ([5, 5, 3, 3, 0], [0, 0, 0, 0, 0]),
  ]
  pred = np.concatenate([p, np.array([r[0] for r in rows])]).astype(np.float32)
  tgt = np.concatenate([q, np.array([r[1] for r in rows])]).astype(np.float32)
  fn = jax.jit(jax.vmap(jax.value_and_grad(B.probiou_loss)))
  loss, grad = (np.asarray(v) for v in fn(pred, tgt))
  assert np.isfinite(loss).all() and np.isfinite(grad).all()
  ref = np.array([_probiou_reference(u, v) for u, v in zip(p, q)])
  np.testing.assert_allclose(loss[:40], ref, atol=2e-4)
  assert loss[40] < 1e-3
  assert loss[41] > 1e-3 and np.all(np.diff(loss[40:45]) > 0)
  np.testing.assert_allclose(loss[46:48], loss[45], atol=1e-5)    # no periodicity jump
  assert loss[49] < 1e-3 and loss[51] < 1e-3 and loss[52] < 1e-3 and loss[53] > 0.99
  np.testing.assert_allclose(
      np.asarray(B.probiou(pred[:40], tgt[:40])), 1 - loss[:40], atol=1e-6)


def _greedy_reference(iou, scores, valid, classes, thr, max_out):
  order = [i for i in np.argsort(-scores, kind="stable") if valid[i]]
  kept = []
  for i in order:
    if all(classes[i] != classes[j] or iou[i, j] <= thr for j in kept):
      kept.append(i)
  return kept[:max_out]


def _check_nms(fn, boxes, iou_np, scores, valid, classes, thr, max_out):
  idx, keep = jax.jit(fn, static_argnums=(4,))(boxes, scores, valid, thr, max_out,
                                               classes=classes)
  idx, keep = np.asarray(idx), np.asarray(keep)
  ref = _greedy_reference(iou_np, scores, valid, classes, thr, max_out)
  assert idx.shape == (max_out,) and keep.shape == (max_out,)
  assert keep.sum() == len(ref) and list(idx[keep]) == ref
  assert np.all(idx[~keep] == 0) and np.all(keep[:len(ref)])
  return ref


@pytest.mark.parametrize("rotated", [False, True])
def test_nms_matches_greedy_reference(rotated):
  rng = np.random.default_rng(8 + rotated)
  n = 80
  if rotated:
    boxes = _rand_rboxes(rng, n, centre=(0, 40), size=(4, 16)).astype(np.float32)
  else:
    boxes = _rand_hboxes(rng, n).astype(np.float32)
  # Exact duplicates (IoU 1) and ties in score: the lower index must win.
  boxes[5], boxes[6] = boxes[4], boxes[4]
  if rotated:
    iou, fn = B.rotated_iou_np(boxes, boxes), N.rotated_nms
  else:
    iou, fn = np.array([[_np_iou(p, q)[0] for q in boxes] for p in boxes]), N.nms
  scores = np.round(rng.uniform(0, 1, n), 1).astype(np.float32)
  scores[4:7] = 0.5
  classes = rng.integers(0, 3, n).astype(np.int32)
  classes[4:7] = [1, 1, 2]                         # 6 survives: another class
  valid = rng.uniform(size=n) > 0.15
  valid[4:7] = True
  boxes[~valid] = np.nan                           # padding may hold anything
  scores[~valid] = 2.0
  thr = 0.3
  assert np.all(np.abs(iou[valid][:, valid] - thr) > 1e-4)   # no float32 / float64 flips
  ref = _check_nms(fn, boxes, iou, scores, valid, classes, thr, 12)
  assert len(ref) == 12                            # max_out truncates
  full = _check_nms(fn, boxes, iou, scores, valid, classes, thr, n + 5)   # more slots than kept
  assert 4 in full and 5 not in full and 6 in full


def test_topk_detections_vmapped():
  rng = np.random.default_rng(10)
  b, n, c = 2, 50, 3
  scores = rng.uniform(0, 1, (b, n, c)).astype(np.float32)
  hb = np.stack([_rand_hboxes(rng, n, span=30) for _ in range(b)]).astype(np.float32)
  valid = rng.uniform(size=(b, n)) > 0.2
  kw = dict(score_threshold=0.3, pre_nms_top_k=60, iou_threshold=0.5, max_out=25)
  # Rotated, per-class boxes (N, C, 5) in the same program: shapes and padding only.
  rb = np.tile(_rand_rboxes(rng, n)[:, None, :], (1, c, 1)).astype(np.float32)
  out, r = jax.jit(lambda s, x, v, y: (
      N.batched_topk_detections(s, x, v, **kw),
      N.topk_detections(s[0], y, v[0], score_threshold=0.3, pre_nms_top_k=40, max_out=10)))(
          scores, hb, valid, rb)
  assert r["boxes"].shape == (10, 5) and bool(r["valid"].any())
  assert np.all(np.asarray(r["scores"])[~np.asarray(r["valid"])] == 0)
  out = {k: np.asarray(v) for k, v in out.items()}
  assert out["boxes"].shape == (b, 25, 4) and out["classes"].dtype == np.int32
  for i in range(b):
    # Reference: the same three steps with numpy.
    flat = np.where(valid[i][:, None], scores[i], -np.inf).reshape(-1)
    top = np.argsort(-flat, kind="stable")[:60]
    top = top[flat[top] > 0.3]
    loc, cls = top // c, top % c
    cand = hb[i][loc]
    iou = np.array([[_np_iou(p, q)[0] for q in cand] for p in cand])
    kept = _greedy_reference(iou, flat[top], np.ones(len(top), bool), cls, 0.5, 25)
    k = len(kept)
    assert out["valid"][i].sum() == k and np.all(out["valid"][i][:k])
    np.testing.assert_allclose(out["boxes"][i][:k], cand[kept])
    np.testing.assert_allclose(out["scores"][i][:k], flat[top][kept])
    np.testing.assert_array_equal(out["classes"][i][:k], cls[kept])
    assert np.all(out["scores"][i][k:] == 0) and np.all(out["boxes"][i][k:] == 0)
