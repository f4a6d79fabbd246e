"""Object detection with horizontal or rotated boxes: buildings in optical / MS tiles, ships in
SAR (the SSDD / HRSID case), on the one encoder.

Head: `heads/detection.DetectionHead` (CenterNet style on the stride-4 FPN; why: its docstring).
Loss: CenterNet focal loss on the class heatmaps + `task.box_weight` x box loss at each object's
centre cell: GIoU (horizontal, `ops.boxes.giou_loss`) or ProbIoU (rotated, `ops.boxes.
probiou_loss`: differentiable everywhere, no jump at the angle's period).
Prediction (static shapes): 3x3 peak picking, top-k, per-class NMS (horizontal or rotated,
`ops/nms.py`), at most `task.max_detections` per image, padded with `valid` False.
Metrics: COCO mAP@[.5:.95] / @50 / @75 and per-class AP by pycocotools on the envelopes
(`task.rotated=False`), or DOTA-devkit rotated mAP@50 (VOC07 11-point, difficult ignored; the
all-point AP beside it) on the rotated boxes (`metrics/detection.py`). `gt_dropped` counts the
ground-truth boxes that left the crop or overflowed `task.max_boxes`, in the step log and eval.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ringmoe_jax.data import box_labels
from ringmoe_jax.heads import ViewFusion
from ringmoe_jax.heads import detection as det
from ringmoe_jax.metrics.detection import CocoEvaluator, DotaEvaluator
from ringmoe_jax.ops import boxes as box_ops
from ringmoe_jax.ops import nms as nms_ops
from ringmoe_jax.tasks.base import Task, host, num_views, stage_dims


class _Accumulator:
  """The COCO or DOTA evaluator, fed envelopes (horizontal) or rotated boxes; counts dropped
  ground truth."""

  def __init__(self, evaluator, rotated: bool):
    self.evaluator, self.rotated, self.dropped = evaluator, rotated, 0

  def update(self, pred, batch) -> None:
    b = {k: host(v) for k, v in batch.items()
         if k in ("gt_boxes", "gt_classes", "gt_valid", "gt_difficult", "weight", "gt_dropped")}
    b["gt_valid"] = b["gt_valid"] > 0
    b["gt_difficult"] = b["gt_difficult"] > 0
    if not self.rotated:
      b["gt_boxes"] = box_labels.envelope(b["gt_boxes"]).astype(np.float32)
    self.dropped += int(np.sum(b["gt_dropped"][b["weight"] > 0]))
    self.evaluator.update({k: host(v) for k, v in pred.items()}, b)

  def compute(self):
    out = dict(self.evaluator.compute())
    out["gt_dropped"] = float(self.dropped)
    return out


class Detection(Task):
  name = "detection"
  kind = "detection"
  main_metric = "map50"
  batch_keys = ("gt_boxes", "gt_classes", "gt_valid", "gt_difficult", "gt_dropped")
  log_keys = ("task_loss", "heat_loss", "box_loss", "gt_dropped")

  def num_classes(self, config) -> int:
    return len(config.task.box_classes)

  def make_head(self, config, rngs):
    dims = stage_dims(config)
    head = det.DetectionHead(dims, int(config.task.head_channels), self.num_classes(config),
                             rotated=bool(config.task.rotated), rngs=rngs)
    return head, ViewFusion(dims, num_views(config), rngs=rngs)

  def outputs(self, model, batch, config, *, train: bool):
    feats, _, aux = self.features(model, batch, train=train, config=config)
    heat, raw = model.head(model.fusion(feats))
    return heat, raw, aux

  def loss(self, model, batch, key, config, *, train: bool = True):
    del key
    heat, raw, aux = self.outputs(model, batch, config, train=train)
    _, h, w, k = heat.shape
    gt, valid = batch["gt_boxes"], batch["gt_valid"] * batch["weight"][:, None]
    target = det.heatmap_targets(gt, batch["gt_classes"], valid, k, h, w)
    heat_loss = det.focal_loss(heat, target, batch["weight"])
    cells = det.centre_cells(gt, h, w)
    centres = (cells[..., ::-1].astype(jnp.float32) + 0.5) * det.STRIDE   # (B, G, 2) x, y
    pred = det.decode_boxes(det.gather_cells(raw, cells), centres, bool(config.task.rotated))
    if config.task.rotated:
      per_box = box_ops.probiou_loss(pred, gt)
    else:
      per_box = box_ops.giou_loss(pred, box_ops.rbox_to_hbox(gt))
    box_loss = jnp.sum(per_box * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    task_loss = heat_loss + float(config.task.box_weight) * box_loss
    return task_loss + self.encoder_loss(aux, config), {
        "task_loss": task_loss, "heat_loss": heat_loss, "box_loss": box_loss,
        "gt_dropped": jnp.sum(batch["gt_dropped"] * (batch["weight"] > 0)).astype(jnp.float32),
        "balance_loss": aux["balance_loss"], "routing": aux["routing"]}

  def predict(self, model, batch, config):
    heat, raw, _ = self.outputs(model, batch, config, train=False)
    b, h, w, k = heat.shape
    scores = det.peaks(heat).reshape(b, h * w, k)
    boxes = det.decode_boxes(raw.reshape(b, h * w, -1), det.cell_centres(h, w)[None],
                             bool(config.task.rotated))
    return nms_ops.batched_topk_detections(
        scores, boxes, score_threshold=float(config.task.score_threshold),
        pre_nms_top_k=int(config.task.max_candidates), iou_threshold=float(config.task.nms_iou),
        max_out=int(config.task.max_detections))

  def metrics(self, config):
    names = tuple(config.task.box_classes)
    if config.task.rotated:
      return _Accumulator(DotaEvaluator(len(names), names), True)
    return _Accumulator(CocoEvaluator(len(names), names,
                                      max_det=max(int(config.task.max_detections), 10)), False)
