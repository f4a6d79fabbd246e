"""Simulator task sources: task records (docs/ARCHITECTURE.md) rendered from simulated scenes.

Record i shows scene i of the split's simulator (deterministic in (seed, split, i)); the
evaluation split uses another seed, so its scenes are never seen in training. The views of a
record are chosen by `views`: a tuple of specs, one drawn per record (rng(seed, i)); a spec is
'sensor' or 'sensor_a+sensor_b' (co-registered views of one place: fused segmentation; for
change detection the before and after images, which may be of different modalities).

Labels per task (all from the simulator's scene state, so they agree across sensors):
  classification  "label" = the dominant land-cover class of the tile;
                  multi-label: "labels" = classes covering >= `multilabel_min_fraction` of it
  segmentation    "mask" = the class map
  change          "change" = 1 where the class changed between epoch 0 (before) and 1 (after);
                  one view per epoch (a single-sensor spec uses that sensor for both)
  height          "height" = building and canopy height in metres
  detection       "boxes" (N, 5) le90 rotated boxes of the objects of `box_classes` (simulator
                  class names: buildings on land, ships on water) and "box_classes" (N,) = the
                  index in `box_classes` (data/box_labels.py)
With probability `nodata_fraction` a view gets a nodata region (an image edge or a swath gap), so
ignore handling is exercised like on real scenes.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ringmoe_jax.data import box_labels, synthetic
from ringmoe_jax.data.simulator import CLASSES, SceneSimulator
from ringmoe_jax.data.task_pipeline import view_sensors
from ringmoe_jax.errors import UserError
from ringmoe_jax.sensors.registry import SensorRegistry

TASK_KINDS = ("classification", "multilabel", "segmentation", "change", "height", "detection")
EVAL_SEED_OFFSET = 1_000_003  # evaluation scenes come from another seed


class SimulatorTaskSource:
  """Grain random-access source of task records (module docstring)."""

  def __init__(self, kind: str, num_records: int, tile_size: int, views: Sequence[str],
               registry: SensorRegistry, seed: int = 0, split: str = "train",
               nodata_fraction: float = 0.1, multilabel_min_fraction: float = 0.05,
               box_classes: Sequence[str] = ()):
    if kind not in TASK_KINDS:
      raise UserError(f"simulator task {kind!r}; expected one of {TASK_KINDS}")
    if split not in ("train", "eval"):
      raise UserError(f"split {split!r}; expected 'train' or 'eval'")
    specs = [view_sensors(v) for v in views]
    if not specs or any(not s for s in specs):
      raise UserError(f"task.views {tuple(views)!r}: expected sensor names, e.g. "
                      "('gaofen2_pms',) or ('gaofen2_pms+gaofen3_amp',)")
    if kind == "change":
      specs = [s * 2 if len(s) == 1 else s for s in specs]
    if len({len(s) for s in specs}) != 1:
      raise UserError(f"task.views {tuple(views)!r}: every spec must have the same number of "
                      "views")
    if kind == "change" and len(specs[0]) != 2:
      raise UserError(f"task.views {tuple(views)!r}: a change record has 2 views (before+after)")
    for s in specs:
      for name in s:
        registry.get(name)  # unknown sensor: error listing the registered ones
    unknown = [c for c in box_classes if c not in CLASSES]
    if unknown or (kind == "detection" and not box_classes):
      raise UserError(f"task.box_classes {tuple(box_classes)!r}: expected simulator classes "
                      f"(objects with boxes: 'building', 'ship'), one of {CLASSES}")
    self._box_ids = [CLASSES.index(c) for c in box_classes]
    self.kind = kind
    self.specs = specs
    self.num_views = len(specs[0])
    self.num_classes = len(CLASSES)
    self.class_names = CLASSES
    self._n = int(num_records)
    self._seed = int(seed) + (EVAL_SEED_OFFSET if split == "eval" else 0)
    self._nodata = float(nodata_fraction)
    self._min_fraction = float(multilabel_min_fraction)
    sensors = sorted({n for s in specs for n in s})
    self._sim = SceneSimulator(self._n, tile_size, sensors=sensors, registry=registry,
                               seed=self._seed, nodata_fraction=0.0)
    self._size = int(tile_size)

  def __len__(self) -> int:
    return self._n

  def __repr__(self) -> str:
    return (f"SimulatorTaskSource(kind={self.kind!r}, n={self._n}, views={self.specs}, "
            f"seed={self._seed})")

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < self._n:
      raise IndexError(f"record {index} out of range for {self._n}")
    rng = np.random.default_rng([self._seed, index, 7])
    spec = self.specs[int(rng.integers(len(self.specs)))]
    scene = self._sim.scene(index)
    epochs = (0, 1) if self.kind == "change" else (0,) * len(spec)
    recs = [self._sim.render(index, name, epoch=e, scene=scene, noise_key=j)
            for j, (name, e) in enumerate(zip(spec, epochs))]
    views = []
    for r in recs:
      valid = np.ones((self._size, self._size), bool)
      if rng.random() < self._nodata:
        valid = ~synthetic.nodata_mask(rng, self._size, self._size)
      views.append({"sensor": r["sensor"], "pixels": np.where(valid[..., None], r["pixels"], 0),
                    "valid": valid})
    out: dict[str, Any] = {"views": views, "name": f"sim-{self._seed}-{index}"}
    cls = recs[0]["class_map"]
    if self.kind == "classification":
      out["label"] = int(recs[0]["label_class"])
    elif self.kind == "multilabel":
      frac = np.bincount(cls.ravel(), minlength=self.num_classes) / cls.size
      out["labels"] = (frac >= self._min_fraction).astype(np.float32)
    elif self.kind == "segmentation":
      out["mask"] = cls.astype(np.int32)
    elif self.kind == "change":
      out["change"] = (recs[0]["class_map"] != recs[1]["class_map"]).astype(np.int32)
    elif self.kind == "height":
      out["height"] = recs[0]["label_height"].astype(np.float32)
    else:
      sim_cls = recs[0]["label_box_class"]
      keep = np.isin(sim_cls, self._box_ids)
      out["boxes"] = box_labels.from_simulator(recs[0]["label_rboxes"][keep])
      out["box_classes"] = np.asarray([self._box_ids.index(int(c)) for c in sim_cls[keep]],
                                      np.int32)
    return out
