"""Helpers shared by the accumulators: key names, safe division, input checks."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def class_keys(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
  """The per-class suffix of the metric names: the class name if given, else the index."""
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  if class_names is None:
    return [str(i) for i in range(num_classes)]
  names = [str(n) for n in class_names]
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for {num_classes} classes")
  if len(set(names)) != len(names):
    # Duplicates would silently overwrite each other in the flat result dict.
    raise ValueError(f"class names are not unique: {names}")
  return names


def safe_div(num: np.ndarray, den: np.ndarray, empty: float = np.nan) -> np.ndarray:
  """num / den elementwise, `empty` where den == 0 (no warnings, no inf)."""
  num = np.asarray(num, np.float64)
  den = np.asarray(den, np.float64)
  out = np.full(np.broadcast(num, den).shape, empty, np.float64)
  np.divide(num, den, out=out, where=den != 0)
  return out


def mean_or_nan(x: np.ndarray) -> float:
  """Mean of x, NaN for an empty selection (instead of numpy's RuntimeWarning)."""
  return float(np.mean(x)) if x.size else float("nan")


def as_int(x: np.ndarray, what: str) -> np.ndarray:
  """Integer (or bool) class ids as int64; floats are refused rather than truncated."""
  x = np.asarray(x)
  if x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer):
    return x.astype(np.int64, copy=False)
  raise TypeError(f"{what} must hold integer class ids, got dtype {x.dtype}")


def check_range(x: np.ndarray, num_classes: int, what: str) -> None:
  """Raise ValueError naming the offending values of x outside [0, num_classes)."""
  bad = (x < 0) | (x >= num_classes)
  if bad.any():
    vals = np.unique(x[bad])
    shown = ", ".join(str(v) for v in vals[:8]) + (", ..." if vals.size > 8 else "")
    raise ValueError(f"{what} value(s) {shown} outside [0, {num_classes}) "
                     f"({int(bad.sum())} element(s))")


def as_weight(weight: np.ndarray | None, n: int) -> np.ndarray:
  """Per-sample weights (n,) float64; None -> ones. Negative or non-finite weights are refused."""
  if weight is None:
    return np.ones(n, np.float64)
  w = np.asarray(weight, np.float64).reshape(-1)
  if w.shape != (n,):
    raise ValueError(f"weight has {w.size} entries for a batch of {n}")
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ValueError("weights must be finite and >= 0")
  return w


def check_compatible(a: object, b: object, attrs: Sequence[str]) -> None:
  """merge() only combines accumulators of the same type and settings."""
  if type(a) is not type(b):
    raise TypeError(f"cannot merge {type(b).__name__} into {type(a).__name__}")
  for name in attrs:
    va, vb = getattr(a, name), getattr(b, name)
    if va != vb:
      raise ValueError(f"cannot merge: {name} differs ({va!r} vs {vb!r})")
