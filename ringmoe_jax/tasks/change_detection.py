"""Change detection on a before / after pair, which may be of different modalities (optical
before, SAR after: `task.views=('gaofen2_pms+gaofen3_amp',)`).

Siamese: both images go through the one encoder (views folded into the batch; each embedded by
its own modality), then the BIT-style `ChangeHead`: shared FPN, a few semantic tokens per image,
a transformer over the tokens of both, per-image decoding, |difference| -> 2-class logits on the
stride-4 grid, up-sampled to the crop. The head is symmetric in (before, after), so a swapped
pair gives the same map. Loss: pixel CE with the change class weighted by
`task.change_weight` + soft Dice of the change class (change is rare: a few percent of pixels;
unweighted CE settles on "no change", whose argmax then never predicts a change pixel). Metrics of the change class: F1, IoU,
precision, recall, OA (`metrics/dense.ChangeMetrics`).
"""
from __future__ import annotations

import jax.numpy as jnp

from ringmoe_jax.heads import ChangeHead, upsample_logits
from ringmoe_jax.metrics import ChangeMetrics
from ringmoe_jax.tasks.base import Task, stage_dims
from ringmoe_jax.tasks.dense import pixel_accuracy, pixel_cross_entropy, soft_dice_loss
from ringmoe_jax.tasks.segmentation import DenseAccumulator


class ChangeDetection(Task):
  name = "change_detection"
  kind = "change"
  main_metric = "f1"
  batch_keys = ("change",)
  log_keys = ("task_loss", "dice_loss", "pixel_accuracy")

  def num_classes(self, config) -> int:
    return 2

  def make_head(self, config, rngs):
    return ChangeHead(stage_dims(config), int(config.task.head_channels), rngs=rngs), None

  def logits(self, model, batch, config, *, train: bool):
    feats, _, aux = self.features(model, batch, train=train, config=config)
    logits = model.head([f[:, 0] for f in feats], [f[:, 1] for f in feats])
    return upsample_logits(logits, batch["change"].shape[1:]), aux

  def loss(self, model, batch, key, config, *, train: bool = True):
    del key
    logits, aux = self.logits(model, batch, config, train=train)
    cw = jnp.asarray([1.0, float(config.task.get("change_weight", 1.0))], jnp.float32)
    ce = pixel_cross_entropy(logits, batch["change"], batch["weight"], class_weights=cw)
    dice = soft_dice_loss(logits, batch["change"], batch["weight"])
    task_loss = ce + float(config.task.dice_weight) * dice
    return task_loss + self.encoder_loss(aux, config), {
        "task_loss": task_loss, "dice_loss": dice, "balance_loss": aux["balance_loss"],
        "pixel_accuracy": pixel_accuracy(logits, batch["change"], batch["weight"]),
        "routing": aux["routing"]}

  def predict(self, model, batch, config):
    logits, _ = self.logits(model, batch, config, train=False)
    return {"pred": jnp.argmax(logits, -1).astype(jnp.int32)}

  def metrics(self, config):
    return DenseAccumulator(ChangeMetrics(), "change")
