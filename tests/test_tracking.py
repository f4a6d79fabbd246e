"""Tracking (ringmoe_jax/tracking): Kalman filter against a hand-written reference, ByteTracker
on the simulator's moving ships and on crafted gaps / low scores, metrics (motmetrics, HOTA by
hand), MOT txt I/O and its errors.

numpy only (no JAX); the whole file runs in about a second.
"""
import numpy as np
import pytest

from ringmoe_jax.data.simulator import SHIP, SceneSimulator, scene_state
from ringmoe_jax.errors import ReaderError, UserError
from ringmoe_jax.tracking import (ByteTracker, KalmanFilter, TrackingMetrics, envelope,
                                  read_mot_txt, read_sequence_folder, write_mot_txt)
from ringmoe_jax.tracking.bytetrack import TrackOutput

# ---------------------------------------------------------------------------------------------
# Kalman filter


def test_kalman_initiate_predict_update_equal_hand_computation():
  kf = KalmanFilter()  # weights 1/20, 1/160; floors 1 px, 0.1 px / frame; dt 1
  # initiate: a 40 x 10 box. Position std max(w / 20, 1) = (2, 1, 2, 1), x2; velocity std
  # max(w / 160, 0.1) = (0.25, 0.1, 0.25, 0.1), x10.
  mean0, cov0 = kf.initiate(np.array([100.0, 50.0, 40.0, 10.0]))
  np.testing.assert_allclose(mean0, [100, 50, 40, 10, 0, 0, 0, 0])
  np.testing.assert_allclose(cov0, np.diag([4, 2, 4, 2, 2.5, 1, 2.5, 1]) ** 2)

  # predict from a state with velocity and a full covariance.
  rng = np.random.default_rng(0)
  a = rng.normal(size=(8, 8))
  p = a @ a.T + np.eye(8)
  x = np.array([100.0, 50.0, 40.0, 10.0, 1.5, -0.5, 0.2, 0.0])
  i4, z4 = np.eye(4), np.zeros((4, 4))
  f = np.block([[i4, i4], [z4, i4]])  # x' = x + v
  q = np.diag([2.0, 1.0, 2.0, 1.0, 0.25, 0.1, 0.25, 0.1]) ** 2  # from w = 40, h = 10
  x_pred_ref = f @ x
  p_pred_ref = f @ p @ f.T + q
  x_pred, p_pred = kf.predict(x, p)
  np.testing.assert_allclose(x_pred, [101.5, 49.5, 40.2, 10.0, 1.5, -0.5, 0.2, 0.0])
  np.testing.assert_allclose(x_pred, x_pred_ref)
  np.testing.assert_allclose(p_pred, p_pred_ref, rtol=1e-12)

  # update: R from the predicted size (40.2, 10): std (2.01, 1, 2.01, 1).
  z = np.array([102.0, 49.0, 41.0, 10.5])
  h = np.hstack([i4, z4])
  r = np.diag([2.01, 1.0, 2.01, 1.0]) ** 2
  s = h @ p_pred_ref @ h.T + r
  k = p_pred_ref @ h.T @ np.linalg.inv(s)
  x_new_ref = x_pred_ref + k @ (z - h @ x_pred_ref)
  p_new_ref = (np.eye(8) - k @ h) @ p_pred_ref
  x_new, p_new = kf.update(x_pred, p_pred, z)
  np.testing.assert_allclose(x_new, x_new_ref, rtol=1e-10)
  np.testing.assert_allclose(p_new, p_new_ref, rtol=1e-8, atol=1e-10)

  # Batched calls equal one track at a time.
  xs, ps = np.stack([x, x + 3]), np.stack([p, 2 * p])
  bx, bp = kf.update(*kf.predict(xs, ps), np.stack([z, z + 1]))
  for i in range(2):
    ex, ep = kf.update(*kf.predict(xs[i], ps[i]), (z, z + 1)[i])
    np.testing.assert_allclose(bx[i], ex, rtol=1e-12)
    np.testing.assert_allclose(bp[i], ep, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# The simulator's ships, perfect detections


def _ship_sequences(num_scenes=4, frames=8, size=96):
  """[(scene id, [(gt ids, xyxy boxes, le90 rboxes)] per frame)] of scenes with ships."""
  sim = SceneSimulator(8, tile_size=size, seed=0)
  out, scene_id = [], 0
  while len(out) < num_scenes:
    scene = sim.scene(scene_id)
    if len(scene.ships):
      seq = []
      for t in range(frames):
        st = scene_state(scene, 0, t)
        ship = st["box_class"] == SHIP
        boxes = st["boxes"][ship][:, [1, 0, 3, 2]].astype(np.float64)  # (y0 x0 y1 x1) -> xyxy
        cy, cx, h, w, a = st["rboxes"][ship].astype(np.float64).T
        # The simulator's h runs along (dx, dy) = (sin a, cos a): le90's w with angle pi/2 - a.
        angle = (np.pi / 2 - a + np.pi / 2) % np.pi - np.pi / 2
        seq.append((st["ids"][ship], boxes, np.stack([cx, cy, h, w, angle], 1)))
      out.append((scene_id, seq))
    scene_id += 1
  return out


@pytest.mark.parametrize("rotated", [False, True])
def test_perfect_detections_of_simulated_ships_give_mota_idf1_hota_one(rotated):
  seqs = _ship_sequences()
  assert sum(len(f[0]) for _, seq in seqs for f in seq) > 40  # enough ships to mean something
  exact, filtered = TrackingMetrics(), TrackingMetrics()
  for scene_id, seq in seqs:
    frames = [(f[2] if rotated else f[1], np.ones(len(f[0]))) for f in seq]
    for metric, output_box in ((exact, "detection"), (filtered, "kalman")):
      outs = ByteTracker(output_box=output_box).track_sequence(frames)
      for (ids, boxes, _), out in zip(seq, outs):
        if rotated and output_box == "detection":  # le90 envelopes = the simulator's boxes
          np.testing.assert_allclose(envelope(np.stack([o.box for o in out])), boxes, atol=1e-4)
        metric.update_tracks(ids, boxes, out, sequence=str(scene_id))
  r = exact.compute()
  assert r["num_sequences"] == 4 and r["num_frames"] == 32
  for key in ("mota", "idf1", "hota", "deta", "assa", "precision", "recall"):
    assert r[key] == pytest.approx(1.0), key
  assert r["id_switches"] == 0 and r["motp"] < 1e-5  # float32 rboxes -> envelopes: ~1e-7
  # The Kalman-filtered boxes lag a little (HOTA's alpha goes to IoU 0.95) but keep every id.
  r = filtered.compute()
  assert r["mota"] == pytest.approx(1.0) and r["idf1"] == pytest.approx(1.0)
  assert 0.9 < r["hota"] < 1.0


# ---------------------------------------------------------------------------------------------
# Crafted sequences


def _moving_box(t, v=(2.0, 1.0), size=(20.0, 10.0), start=(50.0, 60.0)):
  cx, cy = start[0] + v[0] * t, start[1] + v[1] * t
  return np.array([cx - size[0] / 2, cy - size[1] / 2, cx + size[0] / 2, cy + size[1] / 2])


def _ids_per_frame(outs):
  return [[o.track_id for o in out] for out in outs]


@pytest.mark.parametrize("max_lost, same_id", [(2, True), (1, False)])
def test_missed_detections_within_max_lost_keep_the_id(max_lost, same_id):
  """Two frames without the detection: within max_lost = 2 the track is found again by the
  first association (lost tracks are in it); with max_lost = 1 it died and a new id starts."""
  other = np.array([200.0, 200.0, 215.0, 212.0])  # a static second target, always seen
  frames = []
  for t in range(10):
    boxes = [other] if t in (4, 5) else [_moving_box(t), other]
    frames.append((np.stack(boxes), np.full(len(boxes), 0.9)))
  outs = ByteTracker(max_lost=max_lost).track_sequence(frames)
  ids = _ids_per_frame(outs)
  assert ids[4] == ids[5] == [2]  # the missed target is not reported while lost
  if same_id:
    assert ids[:4] == [[1, 2]] * 4 and ids[6:] == [[1, 2]] * 4
    # The re-found track's box follows the motion (predicted through the gap).
    np.testing.assert_allclose(outs[9][0].box, _moving_box(9), atol=1.0)
  else:
    assert ids[6] == [2]  # the mover is a new track, unconfirmed on its first frame
    assert ids[7:] == [[2, 3]] * 3


@pytest.mark.parametrize("low_score, continued", [(0.1, True), (0.5, False)])
def test_low_score_detection_continues_a_track_in_the_second_association(low_score, continued):
  scores = [0.9, 0.9, 0.9, 0.3, 0.3, 0.9, 0.9]
  frames = [(_moving_box(t)[None], np.array([s])) for t, s in enumerate(scores)]
  # A lone low-score detection elsewhere never starts a track.
  frames = [(np.concatenate([b, [[300, 300, 310, 310]]]), np.append(s, 0.3)) for b, s in frames]
  outs = ByteTracker(low_score=low_score).track_sequence(frames)
  ids = _ids_per_frame(outs)
  if continued:
    assert ids == [[1]] * 7
    assert [o.score for o in outs[3]] == [0.3]
  else:  # the low boxes are dropped: lost for 2 frames, found again by the first pass
    assert ids == [[1]] * 3 + [[]] * 2 + [[1]] * 2


@pytest.mark.parametrize("association, one_id", [("center", True), ("iou", False)])
def test_center_association_links_tiny_fast_targets(association, one_id):
  """A 3 x 3 px target moving 2.5 px / frame: its consecutive boxes have IoU 0.09 (cost 0.91,
  above the IoU gate 0.8) but a centre cost of 0.83 (below 1.0)."""
  frames = [(_moving_box(t, v=(2.5, 0.0), size=(3.0, 3.0))[None], np.ones(1)) for t in range(6)]
  outs = ByteTracker(association=association).track_sequence(frames)
  ids = _ids_per_frame(outs)
  if one_id:
    assert ids == [[1]] * 6
  else:  # every frame starts a new track that never gets confirmed: only frame 1 reported
    assert ids == [[1]] + [[]] * 5


# ---------------------------------------------------------------------------------------------
# Metrics


A, B = np.array([0.0, 0.0, 10.0, 10.0]), np.array([50.0, 50.0, 60.0, 60.0])


def test_swapped_ids_count_as_id_switches():
  """gt 1 at A and 2 at B for 4 frames; the hypothesis swaps its ids after frame 2."""
  m = TrackingMetrics()
  for t in range(4):
    hyp = [10, 20] if t < 2 else [20, 10]
    m.update([1, 2], np.stack([A, B]), hyp, np.stack([A, B]))
  r = m.compute()
  assert r["id_switches"] == 2
  assert r["mota"] == pytest.approx(1 - 2 / 8)
  assert r["idf1"] == pytest.approx(0.5)
  # HOTA by hand: every box a TP (DetA = 1); each pair (g, h) is matched 2 times of 4 + 4 frames
  # with its ids: A(c) = 2 / (4 + 4 - 2) = 1/3 for every TP, so HOTA = sqrt(1/3).
  assert r["deta"] == pytest.approx(1.0)
  assert r["assa"] == pytest.approx(1 / 3)
  assert r["hota"] == pytest.approx(np.sqrt(1 / 3))
  # The same ids throughout: a perfect score.
  m = TrackingMetrics()
  for t in range(4):
    m.update([1, 2], np.stack([A, B]), [10, 20], np.stack([A, B]))
  r = m.compute()
  assert r["id_switches"] == 0 and r["mota"] == 1 and r["hota"] == pytest.approx(1.0)


def test_hota_by_hand_with_imperfect_localisation():
  """One object, 2 frames: the hypothesis exact in frame 1, IoU 0.52 in frame 2.
  alpha <= 0.5 (10 of 19): 2 TP, DetA = AssA = 1, LocA = (1 + 0.52) / 2.
  alpha >= 0.55 (9 of 19): frame 2 is a FN and a FP: DetA = 1 / 3, AssA = 1 / (2 + 2 - 1),
  HOTA_alpha = 1/3, LocA = 1."""
  m = TrackingMetrics()
  m.update([7], A[None], [3], A[None])
  m.update([7], A[None], [3], np.array([[0.0, 0.0, 10.0, 5.2]]))
  r = m.compute()
  assert r["hota"] == pytest.approx((10 + 9 / 3) / 19)
  assert r["deta"] == pytest.approx((10 + 9 / 3) / 19)
  assert r["assa"] == pytest.approx((10 + 9 / 3) / 19)
  assert r["loca"] == pytest.approx((10 * 0.76 + 9) / 19)
  # motmetrics matches both frames (IoU >= 0.5): MOTA 1, MOTP = mean distance (0 + 0.48) / 2.
  assert r["mota"] == 1 and r["motp"] == pytest.approx(0.24)


# ---------------------------------------------------------------------------------------------
# MOT txt and sequence folders


def test_mot_txt_round_trip(tmp_path):
  outs = [[TrackOutput(1, np.array([10.0, 20.0, 30.5, 45.25]), 0.9),
           TrackOutput(4, np.array([0.0, 0.0, 5.0, 5.0]), 0.125)],
          [],
          [TrackOutput(4, np.array([1.5, 2.0, 6.5, 7.0]), 0.75)]]
  path = tmp_path / "seq.txt"
  assert write_mot_txt(path, outs) == 3
  first = path.read_text().splitlines()[0]
  assert first == "1,1,10.000,20.000,20.500,25.250,0.900,-1,-1,-1"
  table = read_mot_txt(path)
  assert table.frame_numbers().tolist() == [1, 3]
  per_frame = table.per_frame()
  assert len(per_frame) == 3 and len(per_frame[1][0]) == 0
  for out, (ids, boxes, scores) in zip(outs, per_frame):
    assert ids.tolist() == [o.track_id for o in out]
    np.testing.assert_allclose(boxes.reshape(-1, 4), np.array([o.box for o in out]).reshape(-1, 4))
    np.testing.assert_allclose(scores, [o.score for o in out])
  assert table.classes.tolist() == [-1, -1, -1]


@pytest.mark.parametrize("bad, expected", [
    ("1,2,3", r"line 2: 3 field\(s\), expected at least 6"),
    ("1,1,ten,0,10,10", r"line 2: field 3 \(x\) is 'ten', expected a number"),
    ("1,1,0,0,-4,10,1", r"line 2: negative box size w=-4"),
    ("0,1,0,0,4,10", r"line 2: frame is '0', expected an integer >= 1"),
])
def test_mot_txt_bad_line_names_file_and_line(tmp_path, bad, expected):
  path = tmp_path / "gt.txt"
  path.write_text(f"1,1,0,0,10,10,1,1,1\n{bad}\n")
  with pytest.raises(UserError, match=expected) as err:
    read_mot_txt(path)
  assert str(path) in str(err.value)


def test_read_sequence_folder_orders_frames_and_loads(tmp_path):
  import warnings  # pylint: disable=import-outside-toplevel

  import rasterio  # pylint: disable=import-outside-toplevel
  for k in (10, 2, 1):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
      with rasterio.open(tmp_path / f"frame_{k}.tif", "w", driver="GTiff", width=4, height=3,
                         count=1, dtype="uint8") as dst:
        dst.write(np.full((1, 3, 4), k, np.uint8))
  (tmp_path / "notes.txt").write_text("not a frame")
  paths, load = read_sequence_folder(tmp_path)
  assert [p.rsplit("/", 1)[1] for p in paths] == ["frame_1.tif", "frame_2.tif", "frame_10.tif"]
  img = load(2)
  assert img.shape == (3, 4, 1) and (img == 10).all()
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ReaderError, match="no frames"):
    read_sequence_folder(empty)
