"""Model, optimizer and state builder of a task (shared by the trainer, evaluate and tools/aot).

Pre-training: AdamW on every parameter (train/optim.py). Fine-tuning: the mode's trainable
parameters (tasks/base.py), layer-wise learning-rate decay in `full` mode
(train/finetune_optim.py).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
from flax import nnx

from ringmoe_jax.tasks import base as task_base
from ringmoe_jax.train.optim import make_optimizer
from ringmoe_jax.train.state import StateBuilder


@dataclasses.dataclass
class Setup:
  builder: StateBuilder
  trainable: Any          # pytree of bools over the params, or None (all train)
  num_trainable: int
  num_total: int
  mode: str

  def describe(self) -> str:
    frac = self.num_trainable / max(self.num_total, 1)
    return (f"parameters: trainable {self.num_trainable:,} / total {self.num_total:,} "
            f"({100 * frac:.2f}%), mode {self.mode}")


def abstract_task_model(config, task) -> nnx.Module:
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: task.make_model(config))


def make_builder(config, task, mesh, rules) -> Setup:
  model = abstract_task_model(config, task)
  params = nnx.state(model, nnx.Param).to_pure_dict()
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  total = int(config.train.total_steps)
  if task.name == "pretrain":
    tx = make_optimizer(config.optim, config.data.batch_size, total)
    trainable, mode = None, "pretrain"
  else:
    from ringmoe_jax.train import finetune_optim  # pylint: disable=import-outside-toplevel
    mode = task_base.mode(config)
    tx = finetune_optim.make_finetune_optimizer(
        config.optim, params, mode=mode, layer_decay=float(config.finetune.layer_decay),
        depths=tuple(config.model.depths), batch_size=int(config.data.batch_size),
        total_steps=total,
        head_warmup_steps=int(config.finetune.get("head_warmup_steps", 0)))
    trainable = finetune_optim.trainable_mask(params, mode)
  sizes = [(math.prod(x.shape), True if trainable is None else t) for x, t in zip(
      jax.tree.leaves(params),
      jax.tree.leaves(trainable) if trainable is not None else [True] * len(jax.tree.leaves(params)))]
  builder = StateBuilder(model, tx, mesh, rules, create=lambda: task.make_model(config))
  return Setup(builder, trainable, sum(n for n, t in sizes if t), sum(n for n, _ in sizes), mode)
