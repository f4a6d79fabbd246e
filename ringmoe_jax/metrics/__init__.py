"""Host-side (numpy) metric accumulators for the downstream tasks.

Every accumulator has `update(<batch arrays>)`, `merge(other)` (adds another accumulator, e.g.
another host's, into this one and returns it), `reset()` and `compute() -> {name: float}` with
flat names (per class: `<metric>/<class name or index>`). Conventions: docs DOWNSTREAM.md and
each module's docstring; references: tests/test_metrics.py (scikit-learn, hand-computed).

classification.py  SingleLabelAccumulator (OA, macro F1, per-class accuracy),
                   MultiLabelAccumulator (mAP macro / micro, F1 at a threshold).
dense.py           ConfusionMatrix (segmentation mIoU / mF1 / OA over the whole split),
                   ChangeMetrics (F1 / IoU / precision / recall of the change class).
depth.py           DepthAccumulator (AbsRel, SqRel, RMSE, RMSE-log, delta < 1.25^k, SILog).
detection.py       CocoEvaluator (COCO mAP@[.5:.95] / 50 / 75 by pycocotools, horizontal),
                   DotaEvaluator (DOTA-devkit rotated mAP@50, VOC07 11-point + all-point).
Tracking metrics (MOTA, IDF1, HOTA): ringmoe_jax/tracking/metrics.py.
"""
from ringmoe_jax.metrics.classification import MultiLabelAccumulator, SingleLabelAccumulator
from ringmoe_jax.metrics.dense import ChangeMetrics, ConfusionMatrix
from ringmoe_jax.metrics.depth import DepthAccumulator
from ringmoe_jax.metrics.detection import CocoEvaluator, DotaEvaluator

__all__ = ["SingleLabelAccumulator", "MultiLabelAccumulator", "ConfusionMatrix", "ChangeMetrics",
           "DepthAccumulator", "CocoEvaluator", "DotaEvaluator"]
