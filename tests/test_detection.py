"""Detection and tracking through the one trainer: CenterNet-style head on the encoder, rotated and
horizontal boxes, COCO / DOTA evaluation, the step on meshes, `track` on simulated video."""
import os

import numpy as np
import pytest

from helpers import (FINETUNE_MESHES, assert_layouts_match_single_device, finetune_one_step,
                     micro_finetune_config)
from ringmoe_jax.data import box_labels
from ringmoe_jax.heads import detection as det
from ringmoe_jax.tasks import get_task
from ringmoe_jax.track import track
from ringmoe_jax.train import trainer


def test_rotated_ship_detector_trains_evaluates_and_tracks(tmp_path):
  c = micro_finetune_config("detection", "target=ships_video,boxes=rotated",
                            **{"train.total_steps": 1, "train.eval_every": 1})
  out = trainer.train(c, str(tmp_path / "det"))
  assert np.isfinite(out["losses"]).all()
  for k in ("map50", "map50_allpoint", "ap50/ship", "gt_dropped"):
    assert k in out["eval"], (k, sorted(out["eval"]))
  for k in ("heat_loss", "box_loss", "gt_dropped"):
    assert k in out["metrics"]
  # The trained detector on held-out simulated video: MOT txt per sequence + metrics.
  r = track(c, str(tmp_path / "det"), str(tmp_path / "trk"), sequences=2, frames=4)
  for k in ("mota", "idf1", "hota", "id_switches"):
    assert k in r and np.isfinite(r[k]), (k, r)
  names = sorted(os.listdir(tmp_path / "trk"))
  assert "track.json" in names and sum(n.endswith(".txt") for n in names) == 2


def test_perfect_detections_track_with_mota_and_idf1_one(tmp_path):
  # min_hits=1: the default (2, ByteTrack's) leaves out the first frame of a ship that enters
  # the tile mid-sequence; output_box='detection': the box as detected, not the filtered one;
  # association='center': the micro tiles' ships are 2-4 px, and a 2 px box moving 1 px a frame
  # overlaps its last position by IoU < 0.2 (with 'iou' two ids switch here).
  for boxes in ("horizontal", "rotated"):
    c = micro_finetune_config("detection", f"target=ships_video,boxes={boxes}")
    r = track(c, None, str(tmp_path / boxes), sequences=3, frames=8, perfect=True,
              tracker_kw={"output_box": "detection", "min_hits": 1, "association": "center"})
    assert r["mota"] == pytest.approx(1.0) and r["idf1"] == pytest.approx(1.0), r
    assert r["id_switches"] == 0 and r["num_gt"] > 0


def test_heatmap_targets_peak_at_centres_and_decode_inverts():
  gt = np.array([[[10.0, 14.0, 8.0, 4.0, 0.3], [30.0, 6.0, 5.0, 5.0, 0.0]]], np.float32)
  heat = np.asarray(det.heatmap_targets(gt, np.array([[0, 1]]), np.array([[1.0, 1.0]]), 2, 8, 8))
  cells = np.asarray(det.centre_cells(gt, 8, 8))[0]
  assert cells.tolist() == [[3, 2], [1, 7]]
  assert heat[0, 3, 2, 0] == 1.0 and heat[0, 1, 7, 1] == 1.0 and (heat == 1.0).sum() == 2
  assert heat[0, 3, 2, 1] < 1e-6  # the other class's map
  # Rotated decode: raw chosen for the box gives the box back (centre offset, log size, 2 angle).
  centre = (cells[0][::-1] + 0.5) * det.STRIDE
  b = gt[0, 0]
  raw = np.array([(b[0] - centre[0]) / 4, (b[1] - centre[1]) / 4, np.log(b[2] / 4),
                  np.log(b[3] / 4), np.cos(2 * b[4]), np.sin(2 * b[4])], np.float32)
  np.testing.assert_allclose(np.asarray(det.decode_boxes(raw, centre, True)), b, rtol=1e-5)


def test_horizontal_accumulator_scores_its_ground_truth_as_perfect():
  c = micro_finetune_config("detection")
  task = get_task(c)
  acc = task.metrics(c)
  rng = np.random.default_rng(0)
  gt = np.zeros((2, 4, 5), np.float32)
  gt[..., :2] = rng.uniform(8, 24, (2, 4, 2))
  gt[..., 2:4] = rng.uniform(3, 8, (2, 4, 2))
  gt[..., 4] = rng.uniform(-1.5, 1.5, (2, 4))
  valid = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
  batch = {"gt_boxes": gt, "gt_classes": np.zeros((2, 4), np.int32), "gt_valid": valid,
           "gt_difficult": np.zeros((2, 4), np.float32), "gt_dropped": np.array([2, 0]),
           "weight": np.ones(2, np.float32)}
  pred = {"boxes": box_labels.envelope(gt).astype(np.float32), "scores": np.ones((2, 4)),
          "classes": np.zeros((2, 4), np.int32), "valid": valid > 0}
  acc.update(pred, batch)
  m = acc.compute()
  assert m["map50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
  assert m["gt_dropped"] == 2.0


def test_detection_step_on_meshes_equals_single_device():
  # Frozen encoder (its sharded backward is the segmentation test's); the head, its targets,
  # focal and GIoU losses and their gradients on the mesh that splits every axis but data
  # (data=8 alone is the segmentation test's).
  meshes = {k: v for k, v in FINETUNE_MESHES.items() if k == "fsdp2_expert2_tensor2"}
  assert_layouts_match_single_device(
      lambda cfg, devices: finetune_one_step(micro_finetune_config("detection", "mode=frozen"),
                                             cfg, devices), meshes)
