"""Metric accumulators (ringmoe_jax/metrics) against scikit-learn and hand-computed references.

numpy only (no JAX): every test runs in milliseconds.
"""
import numpy as np
import pytest
from sklearn import metrics as skm

from ringmoe_jax.metrics import (ChangeMetrics, ConfusionMatrix, DepthAccumulator,
                                 MultiLabelAccumulator, SingleLabelAccumulator)


# ---------------------------------------------------------------------------------------------
# Single-label classification


def _single_label_batch(seed=0, n=200, k=6):
  """Labels / predictions drawn from classes 0..3; class 4 only ever predicted (a real error),
  class 5 absent from both (must leave the macro means). A final padding sample (weight 0) with
  a garbage label and a wrong prediction must change nothing."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, n)
  pred = np.where(rng.random(n) < 0.6, labels, rng.integers(0, 5, n))
  logits = rng.normal(size=(n, k))
  logits[np.arange(n), pred] += 10.0  # argmax == pred
  logits = np.concatenate([logits, np.eye(k)[[2]] * 10])
  labels_pad = np.concatenate([labels, [-1]]).astype(np.int32)
  weight = np.concatenate([np.ones(n), [0.0]])
  return logits, labels_pad, weight, labels, pred


def test_single_label_matches_sklearn_and_skips_padding():
  logits, labels_pad, weight, labels, pred = _single_label_batch()
  acc = SingleLabelAccumulator(6, class_names=list("abcdef"))
  acc.update(logits, labels_pad, weight)
  r = acc.compute()
  assert r["samples"] == len(labels)
  np.testing.assert_allclose(r["oa"], skm.accuracy_score(labels, pred))
  present = [0, 1, 2, 3, 4]  # in labels or predictions; class 5 in neither
  np.testing.assert_allclose(r["macro_f1"],
                             skm.f1_score(labels, pred, average="macro", labels=present))
  # sklearn's default labels are exactly the present ones: the same number.
  np.testing.assert_allclose(r["macro_f1"], skm.f1_score(labels, pred, average="macro"))
  # Counting the absent class as F1 = 0 would lower it: the exclusion is tested, not assumed.
  assert r["macro_f1"] > skm.f1_score(labels, pred, average="macro", labels=range(6),
                                      zero_division=0) + 1e-3
  recall = skm.recall_score(labels, pred, average=None, labels=range(6), zero_division=0)
  for i, name in enumerate("abcd"):
    np.testing.assert_allclose(r[f"acc/{name}"], recall[i])
  f1 = skm.f1_score(labels, pred, average=None, labels=range(6), zero_division=0)
  for i, name in enumerate("abcde"):
    np.testing.assert_allclose(r[f"f1/{name}"], f1[i])
  assert r["f1/e"] == 0.0  # predicted only
  assert np.isnan(r["acc/e"]) and np.isnan(r["acc/f"]) and np.isnan(r["f1/f"])
  np.testing.assert_allclose(r["mean_class_acc"], np.mean(recall[:4]))
  np.testing.assert_allclose(r["mean_class_acc"], skm.recall_score(
      labels, pred, average="macro", labels=[0, 1, 2, 3]))


def test_single_label_fractional_weights_and_int_predictions():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 3, 50)
  pred = rng.integers(0, 3, 50)
  w = rng.random(50) + 0.1
  acc = SingleLabelAccumulator(3)
  acc.update(pred.astype(np.int32), labels, w)
  r = acc.compute()
  np.testing.assert_allclose(r["oa"], skm.accuracy_score(labels, pred, sample_weight=w))
  np.testing.assert_allclose(r["macro_f1"],
                             skm.f1_score(labels, pred, average="macro", sample_weight=w))
  assert set(r) >= {"acc/0", "acc/1", "acc/2", "f1/0", "f1/1", "f1/2"}


def test_single_label_merge_of_halves_equals_one_pass():
  logits, labels_pad, weight, _, _ = _single_label_batch(seed=3)
  one = SingleLabelAccumulator(6)
  one.update(logits, labels_pad, weight)
  h = len(labels_pad) // 2
  a, b = SingleLabelAccumulator(6), SingleLabelAccumulator(6)
  a.update(logits[:h], labels_pad[:h], weight[:h])
  b.update(logits[h:], labels_pad[h:], weight[h:])
  assert a.merge(b) is a
  np.testing.assert_array_equal(a.matrix, one.matrix)
  ra, r1 = a.compute(), one.compute()
  assert ra.keys() == r1.keys()
  np.testing.assert_allclose([ra[k] for k in r1], [r1[k] for k in r1], equal_nan=True)
  with pytest.raises(ValueError, match="num_classes"):
    a.merge(SingleLabelAccumulator(5))


def test_single_label_out_of_range_label_is_named():
  acc = SingleLabelAccumulator(5)
  with pytest.raises(ValueError, match=r"label value\(s\) 10 outside \[0, 5\)"):
    acc.update(np.array([0, 1, 2]), np.array([0, 10, 2]))
  with pytest.raises(ValueError, match=r"-1"):
    acc.update(np.array([0, 1]), np.array([-1, 1]), weight=np.array([1.0, 0.0]))
  acc.update(np.array([0, 1]), np.array([0, 99]), weight=np.array([1.0, 0.0]))  # padding: fine
  assert acc.compute()["samples"] == 1


# ---------------------------------------------------------------------------------------------
# Multi-label classification


def _multi_label_batch(seed=0, n=120, k=5):
  """Scores rounded to 2 decimals (ties, which AP must group); class 3 has no positive but one
  prediction above the threshold (out of mAP, in macro F1); class 4 has neither (out of both)."""
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, k)) < [0.3, 0.5, 0.1, 0.0, 0.0]).astype(np.float32)
  scores = np.clip(0.45 * labels + 0.55 * rng.random((n, k)), 0, 1).round(2)
  scores[:, 3] = 0.3
  scores[7, 3] = 0.9
  scores[:, 4] = 0.2
  # padding row: wrong everywhere, with labels that are not even 0/1
  scores = np.concatenate([scores, np.ones((1, k))])
  labels_pad = np.concatenate([labels, np.full((1, k), 7.0, np.float32)])
  weight = np.concatenate([np.ones(n), [0.0]])
  return scores, labels_pad, weight, labels, scores[:n]


def test_multi_label_matches_sklearn_and_skips_padding():
  scores_pad, labels_pad, weight, y, s = _multi_label_batch()
  acc = MultiLabelAccumulator(5, class_names=["w", "x", "y", "z", "v"])
  acc.update(scores_pad, labels_pad, weight)
  r = acc.compute()
  assert r["samples"] == len(y)
  pos = [0, 1, 2]  # classes with at least one positive
  np.testing.assert_allclose(r["map_macro"],
                             skm.average_precision_score(y[:, pos], s[:, pos], average="macro"))
  np.testing.assert_allclose(r["map_micro"], skm.average_precision_score(y, s, average="micro"))
  ap = skm.average_precision_score(y[:, pos], s[:, pos], average=None)
  for i, name in enumerate("wxy"):
    np.testing.assert_allclose(r[f"ap/{name}"], ap[i])
  assert np.isnan(r["ap/z"]) and np.isnan(r["ap/v"])
  hard = (s > 0.5).astype(int)
  assert hard[:, 3].sum() == 1 and hard[:, 4].sum() == 0
  np.testing.assert_allclose(r["f1_macro@0.5"], skm.f1_score(
      y, hard, average="macro", labels=[0, 1, 2, 3]))
  np.testing.assert_allclose(r["f1_micro@0.5"], skm.f1_score(y, hard, average="micro"))
  f1 = skm.f1_score(y, hard, average=None, zero_division=0)
  for i, name in enumerate("wxyz"):
    np.testing.assert_allclose(r[f"f1/{name}"], f1[i])
  assert r["f1/z"] == 0.0 and np.isnan(r["f1/v"])


def test_multi_label_weighted_ap_and_threshold():
  scores, _, _, y, s = _multi_label_batch(seed=5)
  w = np.random.default_rng(2).random(len(y)) + 0.2
  acc = MultiLabelAccumulator(5, threshold=0.7)
  acc.update(s, y, w)
  r = acc.compute()
  np.testing.assert_allclose(r["map_micro"],
                             skm.average_precision_score(y, s, average="micro", sample_weight=w))
  np.testing.assert_allclose(r["ap/1"], skm.average_precision_score(y[:, 1], s[:, 1],
                                                                    sample_weight=w))
  np.testing.assert_allclose(r["f1_micro@0.7"],
                             skm.f1_score(y, s > 0.7, average="micro", sample_weight=w))


def test_multi_label_merge_of_halves_equals_one_pass():
  scores_pad, labels_pad, weight, _, _ = _multi_label_batch(seed=9)
  one = MultiLabelAccumulator(5)
  one.update(scores_pad, labels_pad, weight)
  h = 50
  a, b = MultiLabelAccumulator(5), MultiLabelAccumulator(5)
  a.update(scores_pad[:h], labels_pad[:h], weight[:h])
  b.update(scores_pad[h:], labels_pad[h:], weight[h:])
  ra, r1 = a.merge(b).compute(), one.compute()
  assert ra.keys() == r1.keys()
  np.testing.assert_allclose([ra[k] for k in r1], [r1[k] for k in r1], equal_nan=True)
  with pytest.raises(ValueError, match="threshold"):
    a.merge(MultiLabelAccumulator(5, threshold=0.3))


def test_multi_label_rejects_non_binary_labels():
  acc = MultiLabelAccumulator(2)
  with pytest.raises(ValueError, match="0 or 1"):
    acc.update(np.array([[0.2, 0.9]]), np.array([[0.0, 2.0]]))


# ---------------------------------------------------------------------------------------------
# Segmentation and change detection


def test_segmentation_matches_hand_computed_confusion_matrix():
  X = 255  # ignore index
  target = np.array([[[0, 0, 1],
                      [1, 2, X],
                      [2, 2, 1]],
                     [[0, 1, 1],
                      [X, 2, 0],
                      [0, 7, 2]]])  # the 7 sits under valid=False: excluded, not an error
  pred = np.array([[[0, 1, 1],
                    [1, 2, 0],
                    [2, 0, 1]],
                   [[0, 1, 2],
                    [3, 2, 0],
                    [1, 3, 2]]])  # the 3s sit on ignored / invalid pixels: class 3 stays absent
  valid = np.ones((2, 3, 3), bool)
  valid[1, 2, 1] = False
  # Counted pixels (target -> pred), 8 + 7:
  #   image 0: 0->0 0->1 1->1 1->1 2->2 2->2 2->0 1->1
  #   image 1: 0->0 1->1 1->2 2->2 0->0 0->1 2->2
  expected = np.array([[3, 2, 0, 0],
                       [0, 4, 1, 0],
                       [1, 0, 4, 0],
                       [0, 0, 0, 0]])
  cm = ConfusionMatrix(4, ignore_index=255, class_names=["bg", "road", "roof", "tree"])
  cm.update(pred, target, valid)
  np.testing.assert_array_equal(cm.matrix, expected)
  r = cm.compute()
  # IoU = TP / (row + col - TP): 3/(5+4-3), 4/(5+6-4), 4/(5+5-4); F1 = 2TP / (row + col).
  iou = [3 / 6, 4 / 7, 4 / 6]
  f1 = [6 / 9, 8 / 11, 8 / 10]
  np.testing.assert_allclose(r["miou"], np.mean(iou))  # class 3 (absent) excluded
  np.testing.assert_allclose(r["mf1"], np.mean(f1))
  np.testing.assert_allclose(r["oa"], 11 / 15)
  assert r["pixels"] == 15
  for name, i_, f_ in zip(["bg", "road", "roof"], iou, f1):
    np.testing.assert_allclose([r[f"iou/{name}"], r[f"f1/{name}"]], [i_, f_])
  assert np.isnan(r["iou/tree"]) and np.isnan(r["f1/tree"])

  # One matrix over the split: image by image + merge gives the same numbers.
  a, b = ConfusionMatrix(4), ConfusionMatrix(4)
  a.update(pred[:1], target[:1], valid[:1])
  b.update(pred[1:], target[1:], valid[1:])
  np.testing.assert_array_equal(a.merge(b).matrix, expected)
  # Scores (B, H, W, K) are reduced by argmax.
  c = ConfusionMatrix(4)
  c.update(np.eye(4)[pred], target, valid)
  np.testing.assert_array_equal(c.matrix, expected)


def test_segmentation_out_of_range_target_is_named():
  cm = ConfusionMatrix(3)
  target = np.array([[[0, 1], [7, 255]]])
  with pytest.raises(ValueError, match=r"target value\(s\) 7 outside \[0, 3\)"):
    cm.update(np.zeros_like(target), target)
  with pytest.raises(ValueError, match=r"prediction value\(s\) 3"):
    cm.update(np.full_like(target, 3), np.zeros_like(target))
  assert cm.matrix.sum() == 0  # a failed update adds nothing


def test_change_metrics_hand_computed():
  target = np.array([[[0, 1, 1, 0],
                      [1, 255, 0, 1]]])
  pred = np.array([[[0, 1, 0, 1],
                    [1, 1, 0, 0]]])
  # TN TP FN FP / TP (ignored) TN FN  ->  TP 2, FP 1, FN 2, TN 2
  ch = ChangeMetrics()
  ch.update(pred, target)
  np.testing.assert_array_equal(ch.matrix, [[2, 1], [2, 2]])
  r = ch.compute()
  np.testing.assert_allclose([r["precision"], r["recall"], r["f1"], r["iou"], r["oa"]],
                             [2 / 3, 2 / 4, 4 / 7, 2 / 5, 4 / 7])
  assert r["pixels"] == 7
  # valid=False removes the FP pixel.
  valid = np.ones_like(target, bool)
  valid[0, 0, 3] = False
  ch2 = ChangeMetrics()
  ch2.update(pred.astype(bool), target, valid)
  np.testing.assert_allclose(ch2.compute()["precision"], 1.0)


def test_change_metrics_zero_over_zero_is_zero():
  ch = ChangeMetrics()
  ch.update(np.zeros((1, 2, 2), int), np.zeros((1, 2, 2), int))
  r = ch.compute()
  assert (r["f1"], r["iou"], r["precision"], r["recall"], r["oa"]) == (0.0, 0.0, 0.0, 0.0, 1.0)
  assert ChangeMetrics().compute()["oa"] == 0.0  # nothing accumulated


# ---------------------------------------------------------------------------------------------
# Depth / height


def _depth_reference(g, p):
  """The toolbox formulas, written out on one image's valid pixels."""
  g, p = np.asarray(g, float), np.asarray(p, float)
  th = np.maximum(g / p, p / g)
  err = np.log(p) - np.log(g)
  return {
      "abs_rel": np.mean(np.abs(g - p) / g),
      "sq_rel": np.mean((g - p) ** 2 / g),
      "rmse": np.sqrt(np.mean((g - p) ** 2)),
      "rmse_log": np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)),
      "delta1": np.mean(th < 1.25),
      "delta2": np.mean(th < 1.25 ** 2),
      "delta3": np.mean(th < 1.25 ** 3),
      "silog": np.sqrt(np.mean(err ** 2) - np.mean(err) ** 2) * 100,
  }


def test_depth_per_image_average_with_skipped_image():
  nan = np.nan
  pred = np.array([[[1.0, 2.0], [-1.0, 4.0]],
                   [[2.0, 2.0], [3.0, 20.0]],
                   [[1.0, 1.0], [1.0, 1.0]],
                   [[9.0, 9.0], [9.0, 9.0]]])
  target = np.array([[[1.0, 0.0], [0.5, nan]],  # 0 = ground (nDSM) and NaN: excluded
                     [[1.0, 2.5], [3.0, 8.0]],
                     [[0.0, 0.0], [0.0, 0.0]],   # all ground: no valid pixel -> skipped
                     [[1.0, 1.0], [1.0, 1.0]]])  # padding image (weight 0)
  valid = np.ones_like(target)
  valid[1, 0, 0] = 0.0
  weight = np.array([1.0, 1.0, 1.0, 0.0])
  acc = DepthAccumulator(min_depth=1e-3, max_depth=10.0)
  acc.update(pred, target, valid, weight)
  r = acc.compute()
  # image 0: pixels (0,0) and (1,0), prediction -1 clipped to min_depth;
  # image 1: pixel (0,0) invalid, prediction 20 clipped to max_depth.
  ref0 = _depth_reference([1.0, 0.5], [1.0, 1e-3])
  ref1 = _depth_reference([2.5, 3.0, 8.0], [2.0, 3.0, 10.0])
  for name in ref0:
    np.testing.assert_allclose(r[name], (ref0[name] + ref1[name]) / 2, rtol=1e-12, err_msg=name)
  assert r["images"] == 2 and r["images_skipped"] == 1
  # Pooling all pixels instead of averaging per image would give another rmse: the test can fail.
  pooled = _depth_reference([1.0, 0.5, 2.5, 3.0, 8.0], [1.0, 1e-3, 2.0, 3.0, 10.0])
  assert abs(r["rmse"] - pooled["rmse"]) > 1e-3

  # Two hosts, merged.
  a, b = DepthAccumulator(max_depth=10.0), DepthAccumulator(max_depth=10.0)
  a.update(pred[:1], target[:1], valid[:1], weight[:1])
  b.update(pred[1:], target[1:], valid[1:], weight[1:])
  rm = a.merge(b).compute()
  np.testing.assert_allclose([rm[k] for k in r], [r[k] for k in r], rtol=1e-12)


def test_depth_nan_prediction_and_empty():
  acc = DepthAccumulator()  # no max_depth
  acc.update(np.array([[[np.nan, 50.0]]]), np.array([[[2.0, 40.0]]]))
  ref = _depth_reference([2.0, 40.0], [1e-3, 50.0])  # NaN prediction -> min_depth
  r = acc.compute()
  np.testing.assert_allclose([r[k] for k in ref], list(ref.values()), rtol=1e-12)
  e = DepthAccumulator().compute()
  assert np.isnan(e["abs_rel"]) and e["images"] == 0
