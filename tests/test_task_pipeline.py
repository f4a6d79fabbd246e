"""The fine-tuning input pipeline: shared crops, ignore handling, padded eval, bad records."""
import numpy as np
import pytest

from ringmoe_jax.data import pipeline as pipeline_lib
from ringmoe_jax.data.task_pipeline import (IGNORE, make_task_dataset, make_task_eval_dataset)
from ringmoe_jax.data.task_sources import SimulatorTaskSource
from ringmoe_jax.errors import ReaderError, UserError
from ringmoe_jax.sensors.registry import default_registry

REG = default_registry()


def _ds(source, **kw):
  args = dict(registry=REG, num_views=source.num_views if hasattr(source, "num_views") else 1,
              batch_size=4, crop_size=32, max_channels=8, seed=0, num_classes=7)
  args.update(kw)
  return make_task_dataset(source, **args)


class _Records:
  def __init__(self, records):
    self.records = records

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]


def _record(h=40, w=40, mask=None, **extra):
  rng = np.random.default_rng(0)
  px = rng.uniform(0, 0.3, (h, w, 3)).astype(np.float32)
  rec = {"views": [{"sensor": "gaofen2_pms", "pixels": px, "valid": np.ones((h, w), bool)}],
         "name": "fixture.tif", "mask": np.zeros((h, w), np.int32) if mask is None else mask}
  rec.update(extra)
  return rec


def test_views_and_labels_share_one_crop_and_flip():
  # Views of a fused record are the same ground: the class map must stay aligned with both.
  src = SimulatorTaskSource("segmentation", 8, 40, ("gaofen2_pms+gaofen1_wfv",), REG,
                            nodata_fraction=0.0)
  ds = _ds(src)
  b = ds[0]
  assert b["pixels"].shape == (4, 2, 32, 32, 8) and b["mask"].shape == (4, 32, 32)
  # The optical tiles' brightest class (ships / buildings) coincide in both views: correlation
  # of the per-pixel mean of the two views (same scene, two sensors) is high after the crop.
  for i in range(4):
    a = b["pixels"][i, 0, ..., :3].mean(-1).ravel()
    c = b["pixels"][i, 1, ..., :3].mean(-1).ravel()
    assert np.corrcoef(a, c)[0, 1] > 0.5
  # Deterministic: the same seed gives the same batch; another seed another crop.
  np.testing.assert_array_equal(_ds(src)[0]["pixels"], b["pixels"])
  assert not np.array_equal(_ds(src, seed=1)[0]["pixels"], b["pixels"])


def test_nodata_of_any_view_is_ignored_in_the_label_maps():
  rec = _record()
  rec["views"][0]["valid"][:, :10] = False
  rec["height"] = np.full((40, 40), 5.0, np.float32)
  rec["height"][0, :] = np.nan
  ds = make_task_eval_dataset(_Records([rec]), registry=REG, num_views=1, batch_size=2,
                              crop_size=40, max_channels=8, num_classes=7)
  b = ds[0]
  assert (b["mask"][0, :, :10] == IGNORE).all() and (b["mask"][0, :, 10:] == 0).all()
  assert b["height_valid"][0, 0].sum() == 0 and b["height_valid"][0, 1:, :10].sum() == 0
  assert b["height_valid"][0, 1:, 10:].all()
  # Padded to the batch size with an example of weight 0 and ignored labels.
  np.testing.assert_array_equal(b["weight"], [1, 0])
  assert (b["mask"][1] == IGNORE).all()


def test_small_tiles_are_padded_as_invalid_not_resampled():
  ds = make_task_eval_dataset(_Records([_record(20, 24)]), registry=REG, num_views=1,
                              batch_size=1, crop_size=32, max_channels=8, num_classes=7)
  b = ds[0]
  assert b["valid"][0, 0, :20, :24].all() and not b["valid"][0, 0, 20:].any()
  assert (b["mask"][0, 20:] == IGNORE).all()


@pytest.mark.parametrize("record, message", [
    (_record(mask=np.full((40, 40), 9, np.int32)), "fixture.tif: mask value 9"),
    (_record(mask=np.zeros((40, 30), np.int32)), "fixture.tif: mask is"),
    ({**_record(), "views": []}, "expected 1 view"),
])
def test_bad_records_name_the_file_and_what_was_expected(record, message):
  ds = make_task_eval_dataset(_Records([record]), registry=REG, num_views=1, batch_size=1,
                              crop_size=32, max_channels=8, num_classes=7)
  with pytest.raises(ReaderError, match=message):
    ds[0]  # pylint: disable=pointless-statement


def test_task_iterator_resumes_exactly():
  src = SimulatorTaskSource("change", 16, 40, ("gaofen2_pms+gaofen3_amp",), REG)
  assert src.num_views == 2
  it = pipeline_lib.make_iterator(_ds(src))
  next(it)
  state = it.get_state()
  want = next(it)
  it2 = pipeline_lib.make_iterator(_ds(src))
  it2.set_state(state)
  got = next(it2)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])
  assert set(np.unique(want["change"])) <= {0, 1, IGNORE}
  # Cross-modal pair: view 0 optical, view 1 SAR.
  np.testing.assert_array_equal(want["modality"][:, 0], 0)
  assert (want["modality"][:, 1] == 3).all()


def test_eval_scenes_are_held_out():
  tr = SimulatorTaskSource("classification", 4, 40, ("gaofen2_pms",), REG, split="train")
  ev = SimulatorTaskSource("classification", 4, 40, ("gaofen2_pms",), REG, split="eval")
  assert not np.array_equal(tr[0]["views"][0]["pixels"], ev[0]["views"][0]["pixels"])
  with pytest.raises(UserError, match="task.views"):
    SimulatorTaskSource("change", 4, 40, ("a+b+c",), REG)
