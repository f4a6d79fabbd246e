"""Scene simulator: co-registered multi-modal tiles of one place, with labels for six tasks.

A *scene* (deterministic in (seed, scene id)) is a land-cover map with objects, independent of
any sensor:
  * background regions (warped Voronoi): water, vegetation, bare soil, crop fields (in parcels);
  * roads (straight lines, bridges over water allowed);
  * buildings: rotated rectangles on land, each with a height (6-60 m);
  * ships: rotated rectangles on water, each with a velocity (pixels per frame);
  * a height map: building heights, tree canopy 2-15 m over vegetation, 0 elsewhere;
  * a second epoch: some buildings demolished (-> bare soil) and new ones built (change mask).
The same scene is then rendered for any registered sensor:
  * optical / MS: per-class reflectance spectra averaged over each band's own spectral window,
    with illumination, texture and noise (as `synthetic.render_optical`);
  * SAR detected (sar_l2): per-class sigma0 for the band's polarisation times Gamma(L, 1/L)
    speckle with L = sensor.looks; the noise-free value is kept as "clean" (same component and
    scale as the pixels: amplitude sqrt(sigma0) or intensity sigma0) for the physics terms;
  * SAR complex (sar_l1): circular complex Gaussian scattering vectors [HH, HV, VV] with a
    class-dependent polarimetric covariance (reflection symmetric; urban / ship double bounce
    has HH-VV phase pi), VH = HV + thermal noise.

Layout is in pixels; sensor GSD is not modelled (tiles exercise physics and plumbing).

Record i of the source (`SceneSimulator[i]`): scene `i // co_registered` (so with
co_registered = k, k consecutive records show the same place, linked by "group"), sensor drawn
by weight from rng(seed, i); with k > 1 the k records of a group draw their sensors by weight
*without replacement* (from rng(seed, group)) while sensors last, so a group shows as many
different sensors as it can (what a cross-modal contrastive term needs), then repeats:
  "sensor", "pixels" (H, W, C) float32, "valid" (H, W) bool, "index", "group" str,
  "class_map" (H, W) int32 (segmentation masks), "instance_map" (H, W) int32 (0 = none),
  "label_class" int (dominant class: scene classification), "label_boxes" (N, 4) float32
  (y0, x0, y1, x1), "label_rboxes" (N, 5) float32 (cy, cx, h, w, angle rad), "label_box_class"
  (N,) int32, "label_height" (H, W) float32 metres, and for SAR-L2 "clean" (H, W, C) float32.
`pair(scene, sensor)` gives a bi-temporal pair with "change" (H, W) bool; `sequence(scene, sensor,
frames)` a short sequence with moving ships and their tracks (frames, N, 6) = (id, cy, cx, h, w,
angle). All from the same scene state, so labels agree across tasks and sensors.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ringmoe_jax.data import synthetic
from ringmoe_jax.sensors.registry import (OPTICAL_MODALITIES, Sensor, SensorRegistry,
                                          default_registry)

CLASSES: tuple[str, ...] = ("water", "vegetation", "bare_soil", "building", "road", "field",
                            "ship")
WATER, VEGETATION, BARE_SOIL, BUILDING, ROAD, FIELD, SHIP = range(len(CLASSES))

# Reflectance at synthetic._WAVELENGTHS_NM: the synthetic generator's five (water, vegetation,
# bare soil, urban -> building, asphalt -> road) plus a crop (lower NIR plateau than natural
# vegetation, NDVI ~0.7) and ship paint (bright, flat).
_SPECTRA = np.concatenate([synthetic._SPECTRA, np.array([  # pylint: disable=protected-access
    [0.040, 0.045, 0.055, 0.100, 0.080, 0.060, 0.090, 0.280, 0.360, 0.380, 0.380, 0.360, 0.240,
     0.120],  # field (crop)
    [0.200, 0.220, 0.240, 0.250, 0.250, 0.250, 0.250, 0.250, 0.250, 0.250, 0.250, 0.240, 0.200,
     0.150],  # ship (painted steel)
])])
# C-band <|HH|^2>, <|HV|^2>, <|VV|^2> and HH-VV correlation per class.
_SAR_POWER = np.concatenate([synthetic._SAR_POWER, np.array([  # pylint: disable=protected-access
    [0.050, 0.012, 0.060],  # field: weaker volume than forest
    [0.900, 0.050, 0.500],  # ship: dihedral / corner reflectors
])])
_SAR_HHVV_CORR = np.concatenate([synthetic._SAR_HHVV_CORR,  # pylint: disable=protected-access
                                 np.array([0.5, -0.5], np.complex128)])
_VH_NOISE = synthetic._VH_NOISE  # pylint: disable=protected-access
_POL_COLUMN = {"HH": 0, "HV": 1, "VH": 1, "VV": 2}


def _cholesky() -> np.ndarray:
  factors = []
  for power, rho in zip(_SAR_POWER, _SAR_HHVV_CORR):
    amp = np.sqrt(power)
    corr = np.eye(3, dtype=np.complex128)
    corr[0, 2], corr[2, 0] = rho, np.conj(rho)
    factors.append(np.linalg.cholesky(corr * np.outer(amp, amp)))
  return np.stack(factors)


_SAR_CHOL = _cholesky()


def band_reflectance(sensor: Sensor) -> np.ndarray:
  """(K, C) class reflectance averaged over each band's window [centre -/+ bandwidth / 2]."""
  return synthetic.band_average(sensor, synthetic._WAVELENGTHS_NM, _SPECTRA)  # pylint: disable=protected-access


@dataclasses.dataclass(frozen=True)
class Scene:
  """Sensor-independent scene state. Objects: rows (cy, cx, h, w, angle, height_or_speed...)."""
  background: np.ndarray  # (H, W) int32 classes before objects
  roads: np.ndarray  # (H, W) bool
  canopy: np.ndarray  # (H, W) float32 tree height where vegetation
  buildings: np.ndarray  # (Nb, 6): cy, cx, h, w, angle, height_m
  built: np.ndarray  # (Nb, 2) bool: exists at epoch 0, epoch 1
  ships: np.ndarray  # (Ns, 7): cy, cx, h, w, angle, vy, vx (pixels / frame)


def _rotated_rect_mask(yy, xx, cy, cx, h, w, angle) -> np.ndarray:
  c, s = np.cos(angle), np.sin(angle)
  dy, dx = yy - cy, xx - cx
  u = dy * c + dx * s  # along the rectangle's height axis
  v = -dy * s + dx * c
  return (np.abs(u) <= h / 2) & (np.abs(v) <= w / 2)


def _rbox_to_box(rb: np.ndarray) -> np.ndarray:
  """(N, 5) cy, cx, h, w, angle -> (N, 4) y0, x0, y1, x1 of the rotated corners."""
  cy, cx, h, w, a = (rb[:, i] for i in range(5))
  ey = np.abs(h / 2 * np.cos(a)) + np.abs(w / 2 * np.sin(a))
  ex = np.abs(h / 2 * np.sin(a)) + np.abs(w / 2 * np.cos(a))
  return np.stack([cy - ey, cx - ex, cy + ey, cx + ex], axis=1).astype(np.float32)


def make_scene(rng: np.random.Generator, size: int) -> Scene:
  """A random scene of (size, size) pixels."""
  h = w = size
  base = synthetic.land_cover(rng, h, w)  # water / vegetation / bare soil regions, roads, urban
  roads = base == synthetic.ROAD
  background = np.where(base == synthetic.URBAN, BARE_SOIL, base).astype(np.int32)
  background[roads] = ROAD
  # Parcels: part of the bare soil / vegetation becomes crop fields, in straight strips.
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  theta = rng.uniform(0, np.pi)
  period = rng.uniform(0.15, 0.3) * size
  stripes = np.floor((xx * np.cos(theta) + yy * np.sin(theta)) / period).astype(np.int64)
  crop = (stripes % 3 == 0) & np.isin(background, (BARE_SOIL, VEGETATION))
  if rng.random() < 0.6:
    background[crop] = FIELD
  canopy = np.where(background == VEGETATION,
                    np.clip(8 + 4 * synthetic._smooth_field(rng, h, w, 6), 2, 15),  # pylint: disable=protected-access
                    0).astype(np.float32)
  land = background != WATER
  nb = int(rng.integers(2, 12))
  buildings, built = [], []
  for _ in range(nb * 3):
    if len(buildings) == nb:
      break
    cy, cx = rng.uniform(0.05, 0.95, 2) * size
    if not land[int(cy), int(cx)]:
      continue
    bh, bw = rng.uniform(0.05, 0.16, 2) * size
    buildings.append((cy, cx, bh, bw, rng.uniform(0, np.pi / 2), rng.uniform(6, 60)))
    # 25% new (absent before), 25% demolished (absent after), the rest unchanged: enough changed
    # pixels (~4% of a tile) for change detection to learn from in a few hundred steps.
    change = rng.random()
    built.append((change >= 0.25, change < 0.25 or change >= 0.5))
  water = np.argwhere(background == WATER)
  ships = []
  if len(water) > 50:
    for _ in range(int(rng.integers(0, 5))):
      cy, cx = water[int(rng.integers(len(water)))] + 0.5
      length = rng.uniform(0.06, 0.14) * size
      angle = rng.uniform(0, np.pi)
      speed = rng.uniform(0.3, 1.5)
      # A ship moves along its long axis (the rectangle's height axis).
      ships.append((cy, cx, length, length / rng.uniform(3, 6), angle, speed * np.cos(angle),
                    speed * np.sin(angle)))
  return Scene(background=background, roads=roads, canopy=canopy,
               buildings=np.asarray(buildings, np.float32).reshape(-1, 6),
               built=np.asarray(built, bool).reshape(-1, 2),
               ships=np.asarray(ships, np.float32).reshape(-1, 7))


def scene_state(scene: Scene, epoch: int = 0, frame: int = 0) -> dict[str, np.ndarray]:
  """Class map, instance map, heights and object boxes at `epoch` (0/1) and video `frame`.

  Returns:
    {"class_map" (H, W) int32, "instance_map" (H, W) int32 (buildings 1.., ships 1001..),
     "height" (H, W) float32 m, "rboxes" (N, 5), "boxes" (N, 4), "box_class" (N,) int32,
     "ids" (N,) int32 instance ids}.
  """
  cls = scene.background.copy()
  h, w = cls.shape
  height = scene.canopy.copy()
  inst = np.zeros((h, w), np.int32)
  rboxes, box_class, ids = [], [], []
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
  for j, (cy, cx, bh, bw, a, bheight) in enumerate(scene.buildings):
    if not scene.built[j, epoch]:
      continue
    m = _rotated_rect_mask(yy, xx, cy, cx, bh, bw, a) & (scene.background != WATER)
    if not m.any():
      continue
    cls[m], height[m], inst[m] = BUILDING, bheight, j + 1
    rboxes.append((cy, cx, bh, bw, a))
    box_class.append(BUILDING)
    ids.append(j + 1)
  for j, (cy, cx, sh, sw, a, vy, vx) in enumerate(scene.ships):
    cy, cx = cy + vy * frame, cx + vx * frame
    m = _rotated_rect_mask(yy, xx, cy, cx, sh, sw, a) & (scene.background == WATER)
    if not m.any():
      continue
    cls[m], height[m], inst[m] = SHIP, 0.1 * sh, 1001 + j
    rboxes.append((cy, cx, sh, sw, a))
    box_class.append(SHIP)
    ids.append(1001 + j)
  rb = np.asarray(rboxes, np.float32).reshape(-1, 5)
  return {"class_map": cls, "instance_map": inst, "height": height.astype(np.float32),
          "rboxes": rb, "boxes": _rbox_to_box(rb), "box_class": np.asarray(box_class, np.int32),
          "ids": np.asarray(ids, np.int32)}


def render_optical(rng: np.random.Generator, cls: np.ndarray, refl: np.ndarray) -> np.ndarray:
  """(H, W) classes, (K, C) band reflectance -> (H, W, C) float32 reflectance."""
  h, w = cls.shape
  class_gain = 1 + 0.1 * rng.standard_normal(len(CLASSES))
  tile_gain = rng.uniform(0.9, 1.1)
  brightness = (1 + 0.08 * synthetic._smooth_field(rng, h, w, 8)  # pylint: disable=protected-access
                + 0.03 * rng.standard_normal((h, w)))
  pixels = (refl * (class_gain[:, None] * tile_gain))[cls] * brightness[..., None]
  pixels += 0.003 * rng.standard_normal(pixels.shape)
  return np.clip(pixels, 1e-4, 1.0).astype(np.float32)


def _component(value: np.ndarray, component: str, scale: str, name: str) -> np.ndarray:
  """Detected intensity (or complex value) -> the band's component in the sensor's scale."""
  if component == "real":
    return value.real
  if component == "imag":
    return value.imag
  intensity = np.abs(value) ** 2 if np.iscomplexobj(value) else value
  if scale == "db":
    return 10 * np.log10(np.maximum(intensity, 1e-10))
  if component == "amplitude":
    return np.sqrt(intensity)
  if component == "intensity":
    return intensity
  raise ValueError(f"sensor {name!r}: unsupported SAR component {component!r}")


def render_sar(rng: np.random.Generator, cls: np.ndarray, sensor: Sensor,
               texture: float = 0.05) -> tuple[np.ndarray, np.ndarray | None]:
  """(H, W) classes -> (pixels (H, W, C), clean (H, W, C) or None for complex products)."""
  h, w = cls.shape
  if sensor.scale not in ("linear", "db"):
    raise ValueError(f"sensor {sensor.name!r}: simulated SAR is 'linear' or 'db', got "
                     f"{sensor.scale!r}")
  scale = rng.uniform(0.8, 1.25)
  if texture > 0:
    scale = scale * np.exp(texture * synthetic._smooth_field(rng, h, w, 6))  # pylint: disable=protected-access
  else:
    scale = np.full((h, w), scale)
  out = np.empty((h, w, sensor.num_channels), np.float32)
  if any(b.component in ("real", "imag") for b in sensor.bands):
    z = (rng.standard_normal((h, w, 3)) + 1j * rng.standard_normal((h, w, 3))) * np.sqrt(0.5)
    k = np.einsum("hwij,hwj->hwi", _SAR_CHOL[cls], z) * np.sqrt(scale)[..., None]
    noise = (rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w))) * np.sqrt(0.5)
    vh = k[..., 1] + np.sqrt(_VH_NOISE * _SAR_POWER[cls, 1] * scale) * noise
    values = {"HH": k[..., 0], "HV": k[..., 1], "VH": vh, "VV": k[..., 2]}
    for c, band in enumerate(sensor.bands):
      out[..., c] = _component(values[band.polarization], band.component, sensor.scale,
                               sensor.name)
    return out, None
  looks = sensor.looks or 1.0
  clean = np.empty_like(out)
  for c, band in enumerate(sensor.bands):
    sigma0 = _SAR_POWER[cls, _POL_COLUMN[band.polarization]] * scale
    speckle = rng.gamma(looks, 1.0 / looks, (h, w))  # L-look intensity speckle, mean 1
    out[..., c] = _component(sigma0 * speckle, band.component, sensor.scale, sensor.name)
    clean[..., c] = _component(sigma0, band.component, sensor.scale, sensor.name)
  return out, clean


class SceneSimulator:
  """Grain random-access source of simulated scenes (interface of `SyntheticTiles`)."""

  def __init__(self, num_tiles: int, tile_size: int = 64, sensors: Sequence[str] | None = None,
               weights: Sequence[float] | None = None, registry: SensorRegistry | None = None,
               seed: int = 0, nodata_fraction: float = 0.1, co_registered: int = 1,
               sar_texture: float = 0.05):
    """Args as `SyntheticTiles`, plus:
      co_registered: k consecutive records share one scene (and a group id).
      sar_texture: relative std of the smooth sigma0 variation within a class (0: each class
        is radiometrically homogeneous, as the speckle-statistics test wants).
    """
    registry = default_registry() if registry is None else registry
    names = tuple(registry.names() if sensors is None else sensors)
    if not names:
      raise ValueError("SceneSimulator needs at least one sensor")
    self._sensors = tuple(registry.get(n) for n in names)
    for s in self._sensors:
      if s.modality in OPTICAL_MODALITIES and s.scale != "reflectance":
        raise ValueError(f"sensor {s.name!r}: simulated optical tiles are reflectance, but the "
                         f"sensor's scale is {s.scale!r}")
    weights = np.ones(len(names)) if weights is None else np.asarray(weights, np.float64)
    if weights.shape != (len(names),) or np.any(weights < 0) or weights.sum() <= 0:
      raise ValueError(f"weights must be {len(names)} non-negative numbers with a positive sum, "
                       f"got {np.asarray(weights).tolist()}")
    if tile_size < 8:
      raise ValueError(f"tile_size must be at least 8, got {tile_size}")
    if co_registered < 1:
      raise ValueError(f"co_registered must be >= 1, got {co_registered}")
    self._probs = weights / weights.sum()
    self._num_tiles = int(num_tiles)
    self._size = int(tile_size)
    self._seed = int(seed)
    self._nodata_fraction = float(nodata_fraction)
    self._co = int(co_registered)
    self._texture = float(sar_texture)
    self._refl = {s.name: band_reflectance(s) for s in self._sensors
                  if s.modality in OPTICAL_MODALITIES}
    self._by_name = {s.name: s for s in self._sensors}

  def __len__(self) -> int:
    return self._num_tiles

  @property
  def co_registered(self) -> int:
    """Consecutive records per scene (the pipeline keeps such groups together)."""
    return self._co

  def _group_sensor(self, index: int) -> Sensor:
    group, j = divmod(index, self._co)
    n = int(np.count_nonzero(self._probs))  # sensors of weight 0 are never drawn
    order = np.random.default_rng([self._seed, group, 3]).choice(
        len(self._sensors), size=n, replace=False, p=self._probs)
    return self._sensors[int(order[j % n])]

  def __repr__(self) -> str:
    names = ",".join(s.name for s in self._sensors)
    return (f"SceneSimulator(num_tiles={self._num_tiles}, tile_size={self._size}, "
            f"sensors=[{names}], probs={np.round(self._probs, 6).tolist()}, seed={self._seed}, "
            f"nodata_fraction={self._nodata_fraction}, co_registered={self._co}, "
            f"sar_texture={self._texture})")

  def scene(self, scene_id: int) -> Scene:
    return make_scene(np.random.default_rng([self._seed, int(scene_id), 0]), self._size)

  def render(self, scene_id: int, sensor: str, *, epoch: int = 0, frame: int = 0,
             scene: Scene | None = None, noise_key: int = 0) -> dict[str, Any]:
    """Scene `scene_id` as seen by `sensor` at `epoch` / `frame` (record keys: module doc)."""
    s = self._by_name.get(sensor)
    if s is None:
      raise ValueError(f"sensor {sensor!r} is not one of this simulator's "
                       f"{list(self._by_name)}")
    scene = self.scene(scene_id) if scene is None else scene
    state = scene_state(scene, epoch, frame)
    rng = np.random.default_rng([self._seed, int(scene_id), 1, self._sensors.index(s), epoch,
                                 frame, noise_key])
    cls = state["class_map"]
    out = {"sensor": s.name, "group": f"scene-{self._seed}-{scene_id}", "class_map": cls,
           "instance_map": state["instance_map"],
           "label_class": int(np.bincount(cls.ravel(), minlength=len(CLASSES)).argmax()),
           "label_boxes": state["boxes"], "label_rboxes": state["rboxes"],
           "label_box_class": state["box_class"], "label_height": state["height"]}
    if s.modality in OPTICAL_MODALITIES:
      out["pixels"] = render_optical(rng, cls, self._refl[s.name])
    else:
      out["pixels"], clean = render_sar(rng, cls, s, self._texture)
      if clean is not None:
        out["clean"] = clean
    out["valid"] = np.ones(cls.shape, bool)
    return out

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < self._num_tiles:
      raise IndexError(f"record {index} out of range for {self._num_tiles} tiles")
    rng = np.random.default_rng([self._seed, index, 2])
    sensor = self._sensors[int(rng.choice(len(self._sensors), p=self._probs))]
    if self._co > 1:
      sensor = self._group_sensor(index)
    out = self.render(index // self._co, sensor.name, noise_key=index % self._co)
    if rng.random() < self._nodata_fraction:
      invalid = synthetic.nodata_mask(rng, self._size, self._size)
      out["valid"] = ~invalid
      out["pixels"][invalid] = 0.0
      if "clean" in out:
        out["clean"][invalid] = 0.0
    out["index"] = index
    return out

  def pair(self, scene_id: int, sensor: str) -> dict[str, Any]:
    """Bi-temporal pair: {"before", "after": records, "change": (H, W) bool}."""
    scene = self.scene(scene_id)
    before = self.render(scene_id, sensor, epoch=0, scene=scene)
    after = self.render(scene_id, sensor, epoch=1, scene=scene)
    return {"before": before, "after": after,
            "change": before["class_map"] != after["class_map"]}

  def sequence(self, scene_id: int, sensor: str, frames: int = 5) -> dict[str, Any]:
    """Short sequence with moving ships: {"frames": [records], "tracks": (T, N, 6) float32
    (id, cy, cx, h, w, angle), NaN rows where an object left the scene}."""
    scene = self.scene(scene_id)
    recs = [self.render(scene_id, sensor, frame=t, scene=scene) for t in range(frames)]
    ids = sorted({int(i) for r in recs for i in scene_state(scene, 0, 0)["ids"]} |
                 {1001 + j for j in range(len(scene.ships))})
    tracks = np.full((frames, len(ids), 6), np.nan, np.float32)
    for t in range(frames):
      st = scene_state(scene, 0, t)
      for j, obj in enumerate(st["ids"]):
        tracks[t, ids.index(int(obj))] = (obj, *st["rboxes"][j])
    return {"frames": recs, "tracks": tracks}
