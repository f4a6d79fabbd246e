"""Image-level classification metrics: single-label (confusion matrix) and multi-label (scores).

Conventions (checked against scikit-learn in tests/test_metrics.py):
- A sample weight of 0 marks a padding sample (the last, partly filled evaluation batch): it is
  dropped before any check, so its label may be garbage. Other weights act as scikit-learn's
  `sample_weight`.
- A per-class value that is undefined (0 / 0, e.g. the recall of a class with no sample) is NaN,
  and such classes are left out of the macro means. `train/metrics_log` writes NaN as a string.
- `merge(other)` adds `other` into `self` (e.g. the accumulators of two hosts) and returns self.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ringmoe_jax.metrics._util import (as_int, as_weight, check_compatible, check_range,
                                       class_keys, mean_or_nan, safe_div)


class SingleLabelAccumulator:
  """Confusion-matrix accumulator for single-label classification with K classes.

  compute() returns
    oa              overall accuracy: weighted fraction of correct samples.
    macro_f1        mean F1 over the classes present in the labels or the predictions. A class
                    absent from both has F1 = 0 / 0 and is excluded; a class only predicted keeps
                    its F1 of 0 (it is a real error). This equals sklearn's
                    f1_score(average='macro'), whose default labels are exactly those present.
    mean_class_acc  mean recall over the classes with at least one labelled sample (sklearn's
                    balanced_accuracy_score); a class that is only predicted has no recall.
    acc/<name>      per-class accuracy (= recall: correct / labelled), NaN without samples.
    f1/<name>       per-class F1 = 2 TP / (2 TP + FP + FN), NaN if absent from both.
    samples         total weight accumulated (the number of real samples for 0/1 weights).
  """

  def __init__(self, num_classes: int, class_names: Sequence[str] | None = None):
    self.num_classes = int(num_classes)
    self.keys = class_keys(self.num_classes, class_names)
    # rows: true class, columns: predicted class; float because weights may be fractional.
    self.matrix = np.zeros((self.num_classes, self.num_classes), np.float64)

  def reset(self) -> None:
    self.matrix[:] = 0

  def update(self, pred: np.ndarray, labels: np.ndarray,
             weight: np.ndarray | None = None) -> None:
    """pred: (B, K) scores / logits (argmax taken) or (B,) int class ids; labels: (B,) int;
    weight: (B,) >= 0, 0 = padding sample to skip (None: all ones)."""
    pred = np.asarray(pred)
    if pred.ndim == 2:
      if pred.shape[1] != self.num_classes:
        raise ValueError(f"scores have {pred.shape[1]} columns for {self.num_classes} classes")
      pred = pred.argmax(axis=1)
    elif pred.ndim != 1:
      raise ValueError(f"pred must be (B, K) scores or (B,) ids, got shape {pred.shape}")
    labels = np.asarray(labels)
    if labels.shape != pred.shape:
      raise ValueError(f"labels shape {labels.shape} != predictions shape {pred.shape}")
    w = as_weight(weight, pred.shape[0])
    keep = w != 0
    labels = as_int(labels, "labels")[keep]
    pred = as_int(pred, "predictions")[keep]
    check_range(labels, self.num_classes, "label")
    check_range(pred, self.num_classes, "prediction")
    k = self.num_classes
    self.matrix += np.bincount(labels * k + pred, weights=w[keep],
                               minlength=k * k).reshape(k, k)

  def merge(self, other: "SingleLabelAccumulator") -> "SingleLabelAccumulator":
    check_compatible(self, other, ("num_classes", "keys"))
    self.matrix += other.matrix
    return self

  def compute(self) -> dict[str, float]:
    cm = self.matrix
    tp = np.diag(cm)
    support = cm.sum(axis=1)    # labelled as the class
    predicted = cm.sum(axis=0)  # predicted as the class
    recall = safe_div(tp, support)
    f1 = safe_div(2 * tp, support + predicted)
    present = (support + predicted) > 0
    total = cm.sum()
    out = {
        "oa": float(safe_div(tp.sum(), total)),
        "macro_f1": mean_or_nan(f1[present]),
        "mean_class_acc": mean_or_nan(recall[support > 0]),
        "samples": float(total),
    }
    for i, key in enumerate(self.keys):
      out[f"acc/{key}"] = float(recall[i])
      out[f"f1/{key}"] = float(f1[i])
    return out


def average_precision(y: np.ndarray, scores: np.ndarray, weight: np.ndarray) -> float:
  """Uninterpolated average precision of one binary problem, sum_n (R_n - R_{n-1}) P_n over the
  distinct score thresholds, as sklearn's average_precision_score computes it.

  y: (N,) bool, scores: (N,) float, weight: (N,) > 0. NaN if y has no positive.
  """
  pos_total = float(np.sum(weight * y))
  if pos_total == 0:
    return float("nan")
  order = np.argsort(-scores, kind="mergesort")
  s, yy, w = scores[order], y[order], weight[order]
  tp = np.cumsum(w * yy)
  fp = np.cumsum(w * ~yy)
  # One operating point per distinct score (the last index of each run of equal scores): tied
  # samples cross the threshold together, so ties do not depend on the order of the input.
  last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
  tp, fp = tp[last], fp[last]
  precision = tp / (tp + fp)  # tp + fp > 0 at every point: all weights are > 0
  recall = tp / tp[-1]
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


class MultiLabelAccumulator:
  """Multi-label classification (K independent binary labels per sample, e.g. BigEarthNet).

  Average precision needs every score, so scores and labels are kept on the host (an evaluation
  set of 1e5 samples x 19 classes is ~15 MB).

  compute() returns
    map_macro            mean AP over the classes with at least one positive sample (sklearn
                         average_precision_score(average='macro') restricted to those classes:
                         AP is undefined without positives).
    map_micro            AP of all (sample, class) pairs pooled (sklearn average='micro').
    f1_macro@<t>         mean F1 of the thresholded predictions (score > t) over the classes with
                         a positive label or a positive prediction (sklearn f1_score
                         average='macro' with labels= those classes).
    f1_micro@<t>         F1 of the pooled TP / FP / FN counts (sklearn average='micro').
    ap/<name>, f1/<name> per class (NaN where undefined).
    samples              total weight accumulated.
  Scores are probabilities for the threshold; AP only uses their order, so logits serve there.
  """

  def __init__(self, num_classes: int, class_names: Sequence[str] | None = None,
               threshold: float = 0.5):
    self.num_classes = int(num_classes)
    self.keys = class_keys(self.num_classes, class_names)
    self.threshold = float(threshold)
    self._scores: list[np.ndarray] = []
    self._labels: list[np.ndarray] = []
    self._weights: list[np.ndarray] = []

  def reset(self) -> None:
    self._scores, self._labels, self._weights = [], [], []

  def update(self, scores: np.ndarray, labels: np.ndarray,
             weight: np.ndarray | None = None) -> None:
    """scores: (B, K) probabilities; labels: (B, K) in {0, 1} (multi-hot, any numeric dtype);
    weight: (B,) >= 0, 0 = padding sample to skip (None: all ones)."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 2 or scores.shape[1] != self.num_classes:
      raise ValueError(f"scores must be (B, {self.num_classes}), got shape {scores.shape}")
    if labels.shape != scores.shape:
      raise ValueError(f"labels shape {labels.shape} != scores shape {scores.shape}")
    w = as_weight(weight, scores.shape[0])
    keep = w != 0
    scores, labels, w = scores[keep], labels[keep], w[keep]
    bad = (labels != 0) & (labels != 1)
    if bad.any():
      raise ValueError(f"multi-label targets must be 0 or 1, got {np.unique(labels[bad])[:8]}")
    if not np.all(np.isfinite(scores)):
      # A NaN would sort arbitrarily and corrupt every AP silently.
      raise ValueError("scores contain NaN or inf")
    self._scores.append(scores)
    self._labels.append(labels == 1)
    self._weights.append(w)

  def merge(self, other: "MultiLabelAccumulator") -> "MultiLabelAccumulator":
    check_compatible(self, other, ("num_classes", "keys", "threshold"))
    self._scores += other._scores
    self._labels += other._labels
    self._weights += other._weights
    return self

  def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = self.num_classes
    if not self._scores:
      return np.zeros((0, k)), np.zeros((0, k), bool), np.zeros((0,))
    return (np.concatenate(self._scores), np.concatenate(self._labels),
            np.concatenate(self._weights))

  def compute(self) -> dict[str, float]:
    s, y, w = self._arrays()
    k = self.num_classes
    ap = np.array([average_precision(y[:, c], s[:, c], w) for c in range(k)])
    has_pos = y.any(axis=0)
    micro_ap = average_precision(y.ravel(), s.ravel(), np.repeat(w, k)) if y.size else np.nan

    hit = s > self.threshold
    wc = w[:, None]
    tp = np.sum(wc * (hit & y), axis=0)
    fp = np.sum(wc * (hit & ~y), axis=0)
    fn = np.sum(wc * (~hit & y), axis=0)
    den = 2 * tp + fp + fn  # > 0 exactly for classes labelled or predicted at least once
    f1 = safe_div(2 * tp, den)
    t = f"{self.threshold:g}"
    out = {
        "map_macro": mean_or_nan(ap[has_pos]),
        "map_micro": float(micro_ap),
        f"f1_macro@{t}": mean_or_nan(f1[den > 0]),
        f"f1_micro@{t}": float(safe_div(2 * tp.sum(), den.sum())),
        "samples": float(w.sum()),
    }
    for i, key in enumerate(self.keys):
      out[f"ap/{key}"] = float(ap[i])
      out[f"f1/{key}"] = float(f1[i])
    return out
