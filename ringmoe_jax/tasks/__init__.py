"""Tasks the one trainer runs: pre-training and the downstream tasks (`config.task.name`).

Each task module defines a `tasks.base.Task` subclass: its model (encoder + head), loss,
prediction, host-side metrics, main metric, batch keys and data. See docs/ARCHITECTURE.md.
"""
from __future__ import annotations

from ringmoe_jax.errors import UserError
from ringmoe_jax.tasks.base import Task
from ringmoe_jax.tasks.change_detection import ChangeDetection
from ringmoe_jax.tasks.classification import Classification
from ringmoe_jax.tasks.height import Height
from ringmoe_jax.tasks.pretrain import Pretrain
from ringmoe_jax.tasks.segmentation import Segmentation

TASKS = ("pretrain", "classification", "segmentation", "change_detection", "height")


def get_task(config) -> Task:
  """The task of config.task.name ('pretrain' when the config has no task section)."""
  task = config.get("task", None)
  name = "pretrain" if task is None else str(task.name)
  if name == "pretrain":
    return Pretrain()
  if name == "classification":
    return Classification(multilabel=bool(task.multilabel))
  if name == "segmentation":
    return Segmentation()
  if name == "change_detection":
    return ChangeDetection()
  if name == "height":
    return Height()
  raise UserError(f"task.name={name!r}; expected one of {TASKS}")


__all__ = ["TASKS", "Task", "get_task"]
