"""Scene classification: single-label (softmax CE, label smoothing) or multi-label (sigmoid BCE).

config.task.multilabel selects the variant. Features: the pooled last-stage vector of each view
(mean over valid tokens), averaged over views, then `ClassifierHead` (LayerNorm + Linear).
Metrics (`metrics/classification.py`): OA, macro F1, mean and per-class accuracy; multi-label:
mAP macro / micro, F1@0.5 macro / micro, per-class AP.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ringmoe_jax.heads import ClassifierHead
from ringmoe_jax.metrics import MultiLabelAccumulator, SingleLabelAccumulator
from ringmoe_jax.tasks.base import Task, host, stage_dims, weighted_mean


class _Accumulator:
  def __init__(self, acc, multilabel: bool):
    self.acc, self.multilabel = acc, multilabel

  def update(self, pred, batch) -> None:
    w = host(batch["weight"])
    if self.multilabel:
      self.acc.update(host(pred["scores"]), host(batch["labels"]), w)
    else:
      self.acc.update(host(pred["scores"]), host(batch["label"]), w)

  def compute(self):
    return self.acc.compute()


class Classification(Task):
  name = "classification"
  log_keys = ("task_loss", "accuracy")

  def __init__(self, multilabel: bool = False):
    self.multilabel = multilabel
    self.kind = "multilabel" if multilabel else "classification"
    self.main_metric = "map_macro" if multilabel else "oa"
    self.batch_keys = ("labels",) if multilabel else ("label",)

  def make_head(self, config, rngs):
    head = ClassifierHead(stage_dims(config)[-1], self.num_classes(config),
                          rngs=rngs)  # no dropout: its rng state is not a Param
    return head, None

  def logits(self, model, batch, config, *, train: bool):
    _, pooled, aux = self.features(model, batch, train=train, config=config)
    return model.head(pooled.mean(axis=1), train=train), aux

  def loss(self, model, batch, key, config, *, train: bool = True):
    del key
    logits, aux = self.logits(model, batch, config, train=train)
    k = logits.shape[-1]
    w = batch["weight"]
    if self.multilabel:
      per = optax.sigmoid_binary_cross_entropy(logits, batch["labels"]).mean(-1)
      acc = ((logits > 0) == (batch["labels"] > 0.5)).mean(-1)
    else:
      target = optax.smooth_labels(jax.nn.one_hot(batch["label"], k),
                                   float(config.task.label_smoothing))
      per = optax.softmax_cross_entropy(logits, target)
      acc = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    task_loss = weighted_mean(per, w)
    loss = task_loss + self.encoder_loss(aux, config)
    return loss, {"task_loss": task_loss, "accuracy": weighted_mean(acc, w),
                  "balance_loss": aux["balance_loss"], "routing": aux["routing"]}

  def predict(self, model, batch, config):
    logits, _ = self.logits(model, batch, config, train=False)
    return {"scores": jax.nn.sigmoid(logits) if self.multilabel else logits}

  def metrics(self, config):
    names = tuple(config.task.class_names) or None
    k = self.num_classes(config)
    acc = (MultiLabelAccumulator(k, names) if self.multilabel
           else SingleLabelAccumulator(k, names))
    return _Accumulator(acc, self.multilabel)
