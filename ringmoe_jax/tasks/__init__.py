"""Tasks the one trainer runs: pre-training and the downstream tasks (`config.task.name`).

Each task module defines a `tasks.base.Task` subclass: its model (encoder + head), loss,
prediction, host-side metrics, main metric, batch keys and data. See docs/ARCHITECTURE.md.
"""
from __future__ import annotations

from ringmoe_jax.errors import UserError
from ringmoe_jax.tasks.base import Task
from ringmoe_jax.tasks.change_detection import ChangeDetection
from ringmoe_jax.tasks.classification import Classification
from ringmoe_jax.tasks.detection import Detection
from ringmoe_jax.tasks.distill import Distill, teacher_of
from ringmoe_jax.tasks.height import Height
from ringmoe_jax.tasks.pretrain import Pretrain
from ringmoe_jax.tasks.segmentation import Segmentation

TASKS = ("pretrain", "classification", "segmentation", "change_detection", "height",
         "detection")


def get_task(config, registry=None) -> Task:
  """The task of config.task.name ('pretrain' when the config has no task section).

  registry: the run's SensorRegistry (the trainer's: checkpoint ids, manifest sensors), whose
  sensor ids the batches carry; the model's band table and the objective's sensor tables are
  built from it. None: the built-ins + data.sensor_files (`sensor_tables.training_registry`)."""
  task = config.get("task", None)
  name = "pretrain" if task is None else str(task.name)
  if name == "pretrain" and teacher_of(config):
    out = Distill(config, registry)  # pre-training with a distillation loss (tasks/distill.py)
  elif name == "pretrain":
    out = Pretrain()
  elif name == "classification":
    out = Classification(multilabel=bool(task.multilabel))
  elif name == "segmentation":
    out = Segmentation()
  elif name == "change_detection":
    out = ChangeDetection()
  elif name == "height":
    out = Height()
  elif name == "detection":
    out = Detection()
  else:
    raise UserError(f"task.name={name!r}; expected one of {TASKS}")
  out.registry = registry
  return out


__all__ = ["TASKS", "Task", "get_task"]
