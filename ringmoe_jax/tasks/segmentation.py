"""Semantic segmentation: UperNet (PPM on the last stage + FPN over the four) on one modality or
on fused co-registered views (e.g. optical + SAR of one place: `task.views=('a+b',)`).

Views are encoded separately (each by its own modality's embedding and experts) and combined
level by level by `ViewFusion` (a linear mix initialised to the mean of the views), then decoded.
Logits on the stride-4 grid are up-sampled bilinearly to the crop. Ignore index 255 and pixels
without data in any view are excluded from the loss and the metrics. Metrics: mIoU, mF1, OA,
per-class IoU / F1 (`metrics/dense.ConfusionMatrix`).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ringmoe_jax.heads import UperNetHead, ViewFusion, upsample_logits
from ringmoe_jax.metrics import ConfusionMatrix
from ringmoe_jax.tasks.base import Task, host, num_views, stage_dims
from ringmoe_jax.tasks.dense import pixel_accuracy, pixel_cross_entropy


class DenseAccumulator:
  """Feeds a dense metric (ConfusionMatrix, ChangeMetrics) with one batch's `key` map; padding
  examples (weight 0) are excluded."""

  def __init__(self, acc, key: str):
    self.acc, self.key = acc, key

  def update(self, pred, batch) -> None:
    target = host(batch[self.key])
    keep = np.broadcast_to(host(batch["weight"])[:, None, None] > 0, target.shape)
    self.acc.update(host(pred["pred"]), target, keep)

  def compute(self):
    return self.acc.compute()


class Segmentation(Task):
  name = "segmentation"
  kind = "segmentation"
  main_metric = "miou"
  batch_keys = ("mask",)
  log_keys = ("task_loss", "pixel_accuracy")

  def make_head(self, config, rngs):
    dims = stage_dims(config)
    head = UperNetHead(dims, int(config.task.head_channels), self.num_classes(config),
                       rngs=rngs)
    return head, ViewFusion(dims, num_views(config), rngs=rngs)

  def logits(self, model, batch, config, *, train: bool):
    feats, _, aux = self.features(model, batch, train=train, config=config)
    logits = model.head(model.fusion(feats))
    return upsample_logits(logits, batch["mask"].shape[1:]), aux

  def loss(self, model, batch, key, config, *, train: bool = True):
    del key
    logits, aux = self.logits(model, batch, config, train=train)
    task_loss = pixel_cross_entropy(logits, batch["mask"], batch["weight"])
    return task_loss + self.encoder_loss(aux, config), {
        "task_loss": task_loss, "balance_loss": aux["balance_loss"],
        "pixel_accuracy": pixel_accuracy(logits, batch["mask"], batch["weight"]),
        "routing": aux["routing"]}

  def predict(self, model, batch, config):
    logits, _ = self.logits(model, batch, config, train=False)
    return {"pred": jnp.argmax(logits, -1).astype(jnp.int32)}

  def metrics(self, config):
    return DenseAccumulator(ConfusionMatrix(self.num_classes(config), class_names=
                                            tuple(config.task.class_names) or None), "mask")
