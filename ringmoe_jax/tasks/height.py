"""Height (nDSM / depth) regression with adaptive bins (AdaBins / Binsformer style).

`AdaptiveBinsHead` on the fused multi-level features: per-image bin centres from the pooled
features, per-pixel bin probabilities, height = their expectation; on the stride-4 grid,
up-sampled bilinearly to the crop.
Loss (`task.loss`): 'l1_balanced' (default) = mean L1 over the valid pixels at or above
`task.min_height` + mean L1 over those below it: an nDSM is 0 m on most of the ground, and a
plain L1 ('l1') is then won by predicting 0 everywhere, where every metric (computed above
min_height) fails; SILog's log is undefined at 0 m ('silog': SILog above min_height only).
Metrics (`metrics/depth.DepthAccumulator`, per image then averaged, over valid pixels with a
height in [min_height, max_height]): AbsRel, SqRel, RMSE, RMSE-log, delta < 1.25 / 1.25^2 /
1.25^3, SILog.
"""
from __future__ import annotations

import jax.numpy as jnp

from ringmoe_jax.errors import UserError
from ringmoe_jax.heads import AdaptiveBinsHead, ViewFusion, l1_loss, silog_loss, upsample_logits
from ringmoe_jax.metrics import DepthAccumulator
from ringmoe_jax.tasks.base import Task, host, num_views, stage_dims


class _Accumulator:
  def __init__(self, acc):
    self.acc = acc

  def update(self, pred, batch) -> None:
    self.acc.update(host(pred["height"]), host(batch["height"]), host(batch["height_valid"]),
                    host(batch["weight"]))

  def compute(self):
    return self.acc.compute()


class Height(Task):
  name = "height"
  kind = "height"
  main_metric = "delta1"
  batch_keys = ("height", "height_valid")
  log_keys = ("task_loss", "mae")

  def make_head(self, config, rngs):
    dims = stage_dims(config)
    head = AdaptiveBinsHead(dims, int(config.task.head_channels), int(config.task.num_bins),
                            min_depth=0.0, max_depth=float(config.task.max_height), rngs=rngs)
    return head, ViewFusion(dims, num_views(config), rngs=rngs)

  def heights(self, model, batch, config, *, train: bool):
    feats, _, aux = self.features(model, batch, train=train, config=config)
    depth, _ = model.head(model.fusion(feats))
    return upsample_logits(depth[..., None], batch["height"].shape[1:])[..., 0], aux

  def loss(self, model, batch, key, config, *, train: bool = True):
    del key
    pred, aux = self.heights(model, batch, config, train=train)
    valid = batch["height_valid"] * batch["weight"][:, None, None]
    kind = str(config.task.loss)
    mae = l1_loss(pred, batch["height"], valid)
    if kind == "l1":
      task_loss = mae
    elif kind == "l1_balanced":
      above = valid * (batch["height"] >= float(config.task.min_height))
      task_loss = (l1_loss(pred, batch["height"], above)
                   + l1_loss(pred, batch["height"], valid - above))
    elif kind == "silog":
      positive = valid * (batch["height"] >= float(config.task.min_height))
      task_loss = silog_loss(jnp.maximum(pred, 1e-3), batch["height"], positive)
    else:
      raise UserError(f"task.loss={kind!r}; expected 'l1_balanced', 'l1' or 'silog'")
    return task_loss + self.encoder_loss(aux, config), {
        "task_loss": task_loss, "mae": mae, "balance_loss": aux["balance_loss"],
        "routing": aux["routing"]}

  def predict(self, model, batch, config):
    pred, _ = self.heights(model, batch, config, train=False)
    return {"height": pred}

  def metrics(self, config):
    return _Accumulator(DepthAccumulator(min_depth=float(config.task.min_height),
                                         max_depth=float(config.task.max_height)))
