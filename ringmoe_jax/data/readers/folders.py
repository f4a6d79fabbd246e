"""ClassFolders: single-label scene classification from a class-per-folder tree.

Layout (EuroSAT, NWPU-RESISC45, AID, UC Merced):

  root/<class>/<image>.tif|png|jpg             (split by crc32 of '<class>/<image>')
  root/train/<class>/<image>, root/val/...     (or test/: the split picks the folder)

Classes: `classes` (the folder names, in label order) or the sorted folder names of the
training folder (of root without split folders), so both splits number them alike. Folders that
are not listed classes are skipped; a listed class without a folder is an error.

Record: {"views": [{"sensor", "pixels" (H, W, C) float32 physical, "valid" (H, W) bool}],
         "name": "<class>/<image>", "label": int class index}.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from ringmoe_jax.data.readers import split as split_lib
from ringmoe_jax.errors import ReaderError
from ringmoe_jax.sensors.registry import Sensor


def _class_dirs(directory: str) -> list[str]:
  return sorted(n for n in os.listdir(directory)
                if not n.startswith(".") and os.path.isdir(os.path.join(directory, n)))


class ClassFolders(split_lib.ListedSource):
  """Grain source of class-folder images (module docstring); `.num_classes`, `.class_names`."""

  def __init__(self, root: str, sensor: Sensor, split: str = "train", *,
               classes: Sequence[str] | None = None, val_fraction: float = 0.2,
               bands: Sequence[int] | None = None):
    split_lib.check_split(split, val_fraction)
    directory, by_folder = split_lib.split_root(root, split)
    train_dir = os.path.join(root, "train") if by_folder else root
    found = _class_dirs(train_dir)
    if classes:
      missing = [c for c in classes if not os.path.isdir(os.path.join(directory, c))
                 and not os.path.isdir(os.path.join(train_dir, c))]
      if missing:
        raise ReaderError(f"{os.path.join(train_dir, missing[0])}: no folder for class "
                          f"{missing[0]!r} of task.reader.classes (folders: {', '.join(found)})")
      names = tuple(classes)
    else:
      names = tuple(found)
      if not names:
        raise ReaderError(f"{train_dir}: no class folders; expected <root>/<class>/<image>")
    unknown = [c for c in _class_dirs(directory) if c not in names]
    if by_folder and not classes and unknown:
      # A class only in the eval folder has no trained output: say so rather than skip it.
      raise ReaderError(f"{os.path.join(directory, unknown[0])}: class folder not in "
                        f"{train_dir} ({', '.join(names)})")
    items = []
    for label, name in enumerate(names):
      class_dir = os.path.join(directory, name)
      if not os.path.isdir(class_dir):
        continue  # a class absent from this split's folder
      for f in split_lib.list_images(class_dir, "class folder"):
        rel = f"{name}/{f}"
        if by_folder or split_lib.in_split(rel, split, val_fraction):
          items.append((os.path.join(class_dir, f), rel, label))
    self._finish(items, directory, split, sensor, bands, names)

  def _read(self, item) -> dict[str, Any]:
    path, name, label = item
    return {"views": [self._view(path)], "name": name, "label": int(label)}
