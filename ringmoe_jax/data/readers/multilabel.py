"""MultiLabelFiles: multi-label scene classification from a label table (BigEarthNet style).

Layout: `root` is the table itself, or a folder holding `labels.csv` or `labels.json` (under
`train/` and `val/` or `test/` when the split comes from folders). Image paths in the table are
relative to the table's folder (absolute paths are kept).

  labels.csv    file,labels                 (a header row is optional)
                img_001.tif,forest;water    (labels separated by ';' or '|'; may be empty)
  labels.json   {"img_001.tif": ["forest", "water"], ...}

Classes: `classes` (label order; a table row naming another class is an error naming the table,
the row and the class) or the sorted union of the training table's labels, so both splits number
them alike. Every listed image must exist (checked at construction).

Record: {"views": [{"sensor", "pixels" (H, W, C) float32 physical, "valid" (H, W) bool}],
         "name": <file as in the table>, "labels": (K,) float32 multi-hot}.
"""
from __future__ import annotations

import csv
import json
import os
import re
from typing import Any, Sequence

import numpy as np

from ringmoe_jax.data.readers import split as split_lib
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import Sensor

TABLE_NAMES = ("labels.csv", "labels.json")
_HEADER_CELLS = ("file", "filename", "image", "path", "name")


def find_table(directory: str) -> str:
  """The label table of a folder (`labels.csv`, else `labels.json`)."""
  for name in TABLE_NAMES:
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  raise ReaderError(f"{directory}: no label table; expected {' or '.join(TABLE_NAMES)} "
                    "(or task.reader.root naming a .csv / .json file)")


def read_table(path: str) -> list[tuple[str, tuple[str, ...], str]]:
  """-> [(file, labels, where)] in table order; where = '<table> row <n>' (1-based line) or
  '<table> entry <file>'."""
  rows = []
  try:
    with open(path, encoding="utf-8", newline="") as f:
      if path.lower().endswith(".json"):
        try:
          table = json.load(f)
        except json.JSONDecodeError as e:
          raise ReaderError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(table, dict):
          raise ReaderError(f"{path}: expected a JSON object {{file: [labels]}}, got "
                            f"{type(table).__name__}")
        for file, labels in table.items():
          if isinstance(labels, str):
            labels = [labels]
          if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ReaderError(f"{path} entry {file!r}: labels must be a list of class names, "
                              f"got {labels!r}")
          rows.append((file, tuple(labels), f"{path} entry {file!r}"))
        return rows
      for n, row in enumerate(csv.reader(f), start=1):
        if not row or not "".join(row).strip():
          continue
        if n == 1 and row[0].strip().lower() in _HEADER_CELLS:
          continue
        if len(row) > 2 or not row[0].strip():
          raise ReaderError(f"{path} row {n}: expected 'file,labels' (labels separated by ';' "
                            f"or '|'), got {','.join(row)!r}")
        labels = [x.strip() for x in re.split(r"[;|]", row[1] if len(row) > 1 else "")]
        rows.append((row[0].strip(), tuple(x for x in labels if x), f"{path} row {n}"))
  except (OSError, UnicodeDecodeError) as e:
    raise ReaderError(f"{path}: cannot read the label table ({e})") from None
  return rows


class MultiLabelFiles(split_lib.ListedSource):
  """Grain source of images with multi-hot labels (module docstring); `.num_classes`,
  `.class_names`."""

  def __init__(self, root: str, sensor: Sensor, split: str = "train", *,
               classes: Sequence[str] | None = None, val_fraction: float = 0.2,
               bands: Sequence[int] | None = None):
    split_lib.check_split(split, val_fraction)
    if os.path.isfile(root):
      table, by_folder, train_table = root, False, root
    else:
      directory, by_folder = split_lib.split_root(root, split)
      table = find_table(directory)
      train_table = find_table(os.path.join(root, "train")) if by_folder else table
    rows = read_table(table)
    if classes:
      names = tuple(classes)
      known = set(names)
      for file, labels, where in rows:
        bad = [x for x in labels if x not in known]
        if bad:
          raise ReaderError(f"{where} ({file}): class {bad[0]!r} is not in task.reader.classes "
                            f"({', '.join(names)})")
    else:
      train_rows = rows if train_table == table else read_table(train_table)
      names = tuple(sorted({x for _, labels, _ in train_rows for x in labels}))
      if not names:
        raise ReaderError(f"{train_table}: no labels in the table")
      bad = [(where, file, x) for file, labels, where in rows for x in labels if x not in names]
      if bad:
        raise ReaderError(f"{bad[0][0]} ({bad[0][1]}): class {bad[0][2]!r} does not occur in "
                          f"the training table {train_table}")
    index = {c: i for i, c in enumerate(names)}
    base = os.path.dirname(os.path.abspath(table))
    items = []
    for file, labels, where in sorted(rows, key=lambda r: r[0]):
      if not (by_folder or split_lib.in_split(file, split, val_fraction)):
        continue
      path = file if os.path.isabs(file) else os.path.join(base, file)
      if not os.path.isfile(path):
        raise ReaderError(f"{path}: image listed in {where} does not exist")
      items.append((path, file, tuple(index[x] for x in labels)))
    self._finish(items, table, split, sensor, bands, names)

  def _read(self, item) -> dict[str, Any]:
    path, name, label_ids = item
    labels = np.zeros(self.num_classes, np.float32)
    labels[list(label_ids)] = 1.0
    return {"views": [self._view(path)], "name": name, "labels": labels}
