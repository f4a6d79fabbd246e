"""Metric sinks: one JSON object per logging step in WORKDIR/metrics.jsonl, plus TensorBoard
event files (tensorboardX: no TensorFlow needed) in WORKDIR/tb."""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  a = np.asarray(x)
  if a.ndim == 0:
    v = a.item()
    return v if not isinstance(v, float) or np.isfinite(v) else str(v)
  return a.tolist()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "/"))
    else:
      out[key] = v
  return out


class MetricWriter:
  def __init__(self, workdir: str, *, is_primary: bool = True):
    self.is_primary = is_primary
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb = None
    if is_primary:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.is_primary:
      return
    record = {"step": int(step), **_jsonable(metrics)}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    # TensorBoard gets the finite values only (an undefined metric, e.g. the AP of a class with
    # no object, or the first step's rate, stays NaN in metrics.jsonl; tensorboardX would warn
    # about each one on the console).
    for k, v in flatten(metrics).items():
      a = np.asarray(v)
      if a.ndim == 0 and np.isfinite(a):
        self.tb.add_scalar(k, float(a), step)
      elif a.ndim == 1 and a.size <= 256:
        for i, x in enumerate(a):
          if np.isfinite(x):
            self.tb.add_scalar(f"{k}/{i}", float(x), step)
    self.tb.flush()

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
