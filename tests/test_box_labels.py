"""Boxes in task records: the simulator's boxes in le90, crops / flips that move boxes exactly
as they move the pixels, dropped boxes counted (data/box_labels.py, task_pipeline)."""
import numpy as np
import pytest

from ringmoe_jax.data import box_labels, simulator, task_pipeline
from ringmoe_jax.data.task_sources import SimulatorTaskSource
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import default_registry


def _mask_of(box, size):
  """Pixels (H, W) whose centre lies in le90 `box` (through its corners: a half-plane test)."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
  c = box_labels.corners(np.asarray(box)[None])[0]
  crosses = []
  for i in range(4):
    (x0, y0), (x1, y1) = c[i], c[(i + 1) % 4]
    crosses.append((x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0))
  crosses = np.stack(crosses)  # inside: on the same side of all 4 edges (either orientation)
  return np.all(crosses >= -1e-9, 0) | np.all(crosses <= 1e-9, 0)


def test_simulator_boxes_in_le90_cover_the_simulator_masks():
  rng = np.random.default_rng(0)
  for _ in range(20):
    cy, cx = rng.uniform(20, 44, 2)
    h, w = rng.uniform(4, 20, 2)
    a = rng.uniform(-np.pi, np.pi)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32) + 0.5
    want = simulator._rotated_rect_mask(yy, xx, cy, cx, h, w, a)  # pylint: disable=protected-access
    box = box_labels.from_simulator(np.array([[cy, cx, h, w, a]]))[0]
    assert -np.pi / 2 <= box[4] < np.pi / 2
    got = _mask_of(box, 64)
    assert np.sum(got != want) <= 2, np.sum(got != want)  # boundary pixels only


@pytest.mark.parametrize("flip_h, flip_v", [(False, False), (True, False), (False, True),
                                            (True, True)])
def test_window_moves_boxes_like_pixels(flip_h, flip_v):
  box = np.array([[40.0, 30.0, 18.0, 7.0, 0.6]], np.float32)
  image = _mask_of(box[0], 80)
  y, x, size = 8, 12, 48
  cut = image[y:y + size, x:x + size]
  if flip_h:
    cut = cut[:, ::-1]
  if flip_v:
    cut = cut[::-1]
  b, c, d, dropped = box_labels.window(box, np.array([0]), np.array([False]), y, x, size,
                                       flip_h, flip_v)
  assert dropped == 0 and len(b) == 1
  assert np.sum(_mask_of(b[0], size) != cut) <= 2


def test_boxes_leaving_the_crop_are_dropped_and_counted():
  boxes = np.array([[10, 10, 8, 8, 0], [46, 10, 8, 8, 0], [60, 60, 8, 8, 0.3]], np.float32)
  b, _, _, dropped = box_labels.window(boxes, np.arange(3), np.zeros(3, bool), 0, 0, 48,
                                       False, False)
  # box 1 has half its area inside (kept: >= MIN_VISIBLE), box 2 none.
  assert len(b) == 2 and dropped == 1
  out = box_labels.pad_boxes(b, np.arange(2), np.zeros(2, bool), max_boxes=1, dropped=dropped)
  assert out["gt_valid"].tolist() == [1.0] and int(out["gt_dropped"]) == 2


def test_detection_batches_from_the_simulator_count_every_box():
  reg = default_registry()
  src = SimulatorTaskSource("detection", 16, 80, ("gaofen2_pms",), reg, box_classes=("building",))
  total = sum(len(src[i]["boxes"]) for i in range(16))
  ds = task_pipeline.make_task_eval_dataset(src, registry=reg, num_views=1, batch_size=8,
                                            crop_size=64, max_channels=4, num_classes=1,
                                            max_boxes=4)
  kept = dropped = 0
  for i in range(len(ds)):
    batch = ds[i]
    assert batch["gt_boxes"].shape == (8, 4, 5)
    kept += int(batch["gt_valid"].sum())
    dropped += int(batch["gt_dropped"].sum())
  assert total > 0 and kept + dropped == total and dropped > 0
  with pytest.raises(ValueError, match="task.box_classes"):
    SimulatorTaskSource("detection", 4, 80, ("gaofen2_pms",), reg, box_classes=("tree",))


def test_bad_boxes_name_the_record():
  reg = default_registry()
  view = {"sensor": "gaofen2_pms", "pixels": np.zeros((32, 32, 3), np.float32),
          "valid": np.ones((32, 32), bool)}
  prep = task_pipeline.PrepareViews(reg, 1, 4)
  with pytest.raises(ReaderError, match="rec7: box 0 .* size <= 0"):
    prep.map({"views": [view], "name": "rec7", "boxes": np.array([[5, 5, 0, 3, 0]]),
              "box_classes": np.array([0])})
  with pytest.raises(ReaderError, match="rec8: 1 boxes but 2 box_classes"):
    prep.map({"views": [view], "name": "rec8", "boxes": np.array([[5, 5, 2, 3, 0]]),
              "box_classes": np.array([0, 1])})
  ex = task_pipeline.ToTaskExample(reg, 4, num_classes=1, max_boxes=2)
  rec = prep.map({"views": [view], "name": "rec9", "boxes": np.array([[5, 5, 2, 3, 0]]),
                  "box_classes": np.array([3])})
  with pytest.raises(ReaderError, match="rec9: box class 3 is not a class id in \\[0, 1\\)"):
    ex.map(rec)
