"""ByteTrack (Zhang et al. 2022) multi-object tracker for satellite video, host side (numpy).

Per frame: boxes (N, 4) xyxy pixels, or (N, 5) rotated le90 (cx, cy, w, h, angle in radians,
w the side along the angle's direction, angle in [-pi/2, pi/2)); scores (N,); optionally
classes (N,) int. Rotated boxes are tracked by their horizontal envelope (the Kalman state and
the association costs use it); a track carries w, h and angle of its last matched detection.

Algorithm (one `update` call = one frame), as ByteTrack's reference implementation:
  0. detections below `low_score` are dropped; `score >= high_score` are high, the rest low.
  1. every track's Kalman state is predicted one frame (a lost track's size velocity is zeroed
     first, as ByteTrack, so a coasting box keeps its size).
  2. first association: high detections <-> confirmed tracks, tracked and lost
     (cost `match_threshold`); a matched lost track is found again, with its id.
  3. second association: low detections <-> the confirmed tracks still unmatched that were
     tracked in the previous frame (not lost) (`second_match_threshold`); low detections left
     over are dropped (they never start tracks). Tracked tracks still unmatched become lost.
  4. unconfirmed tracks (seen in fewer than `min_hits` consecutive frames) <-> high detections
     left over (`unconfirmed_match_threshold`); an unmatched unconfirmed track is removed.
  5. high detections still left with `score >= new_track_score` start tracks, unconfirmed
     unless `min_hits <= 1` or this is the tracker's first frame (ByteTrack confirms the first
     frame's tracks at once, so the first frame is reported).
  6. a lost track dies when more than `max_lost` frames have passed since its last match: a
     target missed for up to `max_lost` consecutive frames keeps its id.
Output per frame: `TrackOutput(track_id, box, score)` of the confirmed tracks matched in this
frame, by id. box: xyxy from the updated Kalman state (`output_box='kalman'`, ByteTrack) or the
matched detection (`'detection'`); rotated: (cx, cy) of that choice with the detection's w, h,
angle. score: the matched detection's. A track is reported from the frame it is confirmed on
(online: its unconfirmed frames are not reported retroactively).

Costs (`association`): 'iou': 1 - IoU of the envelopes. 'center': distance of the centres over
the mean size s = (sqrt(w1 h1) + sqrt(w2 h2)) / 2 of the two boxes, for tiny targets (a 10 x 2
px ship that moves 2 px has IoU ~0 with its last box but a centre cost of ~0.5). No aspect /
area filters (pedestrian heuristics). With classes and `class_aware`, pairs of different classes
are never matched. Assignment: Hungarian (scipy.optimize.linear_sum_assignment) on the cost
matrix extended with "unmatched" at threshold / 2 per side, i.e. the problem that ByteTrack's
`lap.lapjv(extend_cost=True, cost_limit=threshold)` solves: a pair costlier than the threshold
never matches, and two poor matches do not beat one good match.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from ringmoe_jax.errors import UserError
from ringmoe_jax.ops.boxes import rbox_to_hbox
from ringmoe_jax.tracking.kalman import KalmanFilter

ASSOCIATIONS = ("iou", "center")
OUTPUT_BOXES = ("kalman", "detection")
# Default gates (maximum cost) per association: (first, second, unconfirmed). IoU: ByteTrack's
# 0.8 / 0.5 / 0.7 (IoU >= 0.2 / 0.5 / 0.3). Centre: within one mean box size / half / 0.7.
DEFAULT_THRESHOLDS = {"iou": (0.8, 0.5, 0.7), "center": (1.0, 0.5, 0.7)}

TRACKED, LOST = "tracked", "lost"


@dataclasses.dataclass(frozen=True)
class ByteTrackConfig:
  """Thresholds of `ByteTracker` (algorithm: module doc). Scores compare with >=.

  high_score: first-association detections (ByteTrack's track_thresh 0.5).
  low_score: below it a detection is dropped; [low_score, high_score) go to the second pass.
  new_track_score: a left-over high detection starts a track (ByteTrack: track_thresh + 0.1).
  association: 'iou' (cost 1 - IoU) or 'center' (normalised centre distance, tiny targets).
  match_threshold / second_match_threshold / unconfirmed_match_threshold: the largest cost that
    may match in passes 1 / 2 / 4; None: DEFAULT_THRESHOLDS[association].
  max_lost: frames a lost track survives without a match (ByteTrack's track_buffer, 30).
  min_hits: consecutive matched frames before a track is confirmed (reported); ByteTrack: 2.
  class_aware: with classes given, only same-class pairs match.
  output_box: 'kalman' (filtered state, ByteTrack) or 'detection' (the matched detection).
  kalman: the filter and its noise (kalman.py; pixel floors for tiny targets).
  """
  high_score: float = 0.5
  low_score: float = 0.1
  new_track_score: float = 0.6
  association: str = "iou"
  match_threshold: float | None = None
  second_match_threshold: float | None = None
  unconfirmed_match_threshold: float | None = None
  max_lost: int = 30
  min_hits: int = 2
  class_aware: bool = True
  output_box: str = "kalman"
  kalman: KalmanFilter = dataclasses.field(default_factory=KalmanFilter)

  def __post_init__(self):
    if self.association not in ASSOCIATIONS:
      raise UserError(f"ByteTrackConfig.association: {self.association!r}, expected one of "
                      f"{list(ASSOCIATIONS)}")
    if self.output_box not in OUTPUT_BOXES:
      raise UserError(f"ByteTrackConfig.output_box: {self.output_box!r}, expected one of "
                      f"{list(OUTPUT_BOXES)}")
    if not 0 <= self.low_score <= self.high_score:
      raise UserError(f"ByteTrackConfig: need 0 <= low_score <= high_score, got low_score="
                      f"{self.low_score}, high_score={self.high_score}")
    if self.max_lost < 0 or self.min_hits < 1:
      raise UserError(f"ByteTrackConfig: need max_lost >= 0 and min_hits >= 1, got max_lost="
                      f"{self.max_lost}, min_hits={self.min_hits}")

  def thresholds(self) -> tuple[float, float, float]:
    """(first, second, unconfirmed) gates, the defaults of the association filled in."""
    given = (self.match_threshold, self.second_match_threshold,
             self.unconfirmed_match_threshold)
    return tuple(float(d if g is None else g)
                 for g, d in zip(given, DEFAULT_THRESHOLDS[self.association]))


class TrackOutput(NamedTuple):
  """One reported track in one frame: id (1..), box (4,) xyxy or (5,) le90, detection score."""
  track_id: int
  box: np.ndarray
  score: float


# ---------------------------------------------------------------------------------------------
# Boxes


def envelope(boxes: np.ndarray) -> np.ndarray:
  """(N, 4) xyxy -> itself; (N, 5) le90 (cx, cy, w, h, angle rad) -> (N, 4) xyxy envelope."""
  boxes = np.asarray(boxes, np.float64)
  if boxes.ndim != 2 or boxes.shape[1] not in (4, 5):
    raise ValueError(f"boxes must be (N, 4) xyxy or (N, 5) rotated, got shape {boxes.shape}")
  return boxes if boxes.shape[1] == 4 else rbox_to_hbox(boxes)


def xyxy_to_cxcywh(b: np.ndarray) -> np.ndarray:
  return np.concatenate([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], axis=-1)


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
  return np.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], axis=-1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(N, 4), (M, 4) xyxy -> (N, M) IoU (0 where a union is empty)."""
  a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
  wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
  inter = wh[..., 0] * wh[..., 1]
  area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)
  union = area(a) + area(b) - inter
  return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def center_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(N, 4), (M, 4) xyxy -> (N, M) centre distance / mean size (module doc)."""
  ca, cb = xyxy_to_cxcywh(np.asarray(a, np.float64)), xyxy_to_cxcywh(np.asarray(b, np.float64))
  dist = np.linalg.norm(ca[:, None, :2] - cb[None, :, :2], axis=-1)
  size = lambda c: np.sqrt(np.clip(c[:, 2] * c[:, 3], 0, None))
  scale = np.maximum((size(ca)[:, None] + size(cb)[None]) / 2, 1e-6)  # degenerate boxes: huge
  return dist / scale


def linear_assignment(cost: np.ndarray, threshold: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Min-cost matching with "unmatched" at threshold / 2 per side (lapjv's cost_limit).

  Returns (K, 2) matched (row, col), unmatched rows, unmatched cols (sorted).
  """
  n, m = cost.shape
  if n == 0 or m == 0:
    return np.zeros((0, 2), int), np.arange(n), np.arange(m)
  big = np.inf
  ext = np.full((n + m, m + n), big)
  ext[:n, :m] = np.where(cost <= threshold, cost, big)
  ext[:n, m:][np.diag_indices(n)] = threshold / 2  # row i unmatched
  ext[n:, :m][np.diag_indices(m)] = threshold / 2  # column j unmatched
  ext[n:, m:] = 0  # dummy to dummy
  rows, cols = linear_sum_assignment(ext)
  keep = (rows < n) & (cols < m)
  matches = np.stack([rows[keep], cols[keep]], axis=1)
  return (matches, np.setdiff1d(np.arange(n), matches[:, 0]),
          np.setdiff1d(np.arange(m), matches[:, 1]))


# ---------------------------------------------------------------------------------------------
# Tracker


@dataclasses.dataclass
class _Track:
  track_id: int
  mean: np.ndarray  # (8,) Kalman state
  cov: np.ndarray  # (8, 8)
  score: float
  cls: int
  box: np.ndarray  # last matched detection as given ((4,) or (5,))
  last_frame: int
  hits: int = 1
  confirmed: bool = False
  state: str = TRACKED

  def envelope_xyxy(self) -> np.ndarray:
    return cxcywh_to_xyxy(self.mean[:4])


class ByteTracker:
  """Online ByteTrack; `update(boxes, scores, classes)` per frame (module doc)."""

  def __init__(self, config: ByteTrackConfig | None = None, **overrides: Any):
    """config: thresholds; overrides: fields replaced in it (ByteTracker(max_lost=5))."""
    config = ByteTrackConfig() if config is None else config
    self.config = dataclasses.replace(config, **overrides) if overrides else config
    self.kf = self.config.kalman
    self.reset()

  def reset(self) -> None:
    """Forgets every track; ids start again at 1 (a new sequence)."""
    self.tracks: list[_Track] = []
    self.frame = 0
    self._next_id = 1
    self.class_of: dict[int, int] = {}  # track id -> class (-1 without classes)

  def track_sequence(self, frames: Iterable[Any]) -> list[list[TrackOutput]]:
    """Resets, then runs every frame: a dict {boxes, scores[, classes]} or a tuple (boxes,
    scores[, classes]). Returns the per-frame outputs."""
    self.reset()
    out = []
    for f in frames:
      if isinstance(f, dict):
        out.append(self.update(f["boxes"], f["scores"], f.get("classes")))
      else:
        out.append(self.update(*f))
    return out

  def update(self, boxes: np.ndarray, scores: np.ndarray,
             classes: np.ndarray | None = None) -> list[TrackOutput]:
    """One frame: boxes (N, 4) xyxy / (N, 5) le90, scores (N,), classes (N,) int or None."""
    cfg = self.config
    boxes = np.asarray(boxes, np.float64)
    if boxes.size == 0 and boxes.ndim < 2:
      boxes = boxes.reshape(0, 4)
    env = envelope(boxes)
    scores = np.asarray(scores, np.float64).reshape(-1)
    n = len(boxes)
    if scores.shape != (n,):
      raise ValueError(f"frame {self.frame + 1}: {n} boxes but scores of shape {scores.shape}")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
      raise ValueError(f"frame {self.frame + 1}: non-finite box or score")
    cls = (np.full(n, -1, np.int64) if classes is None
           else np.asarray(classes).astype(np.int64).reshape(-1))
    if cls.shape != (n,):
      raise ValueError(f"frame {self.frame + 1}: {n} boxes but classes of shape {cls.shape}")
    self.frame += 1
    meas = xyxy_to_cxcywh(env)
    high = np.flatnonzero(scores >= cfg.high_score)
    low = np.flatnonzero((scores >= cfg.low_score) & (scores < cfg.high_score))
    thr1, thr2, thr3 = cfg.thresholds()

    self._predict()
    confirmed = [t for t in self.tracks if t.confirmed]
    unconfirmed = [t for t in self.tracks if not t.confirmed]

    # 1. High detections <-> confirmed tracks, tracked and lost.
    matches, free_tracks, free_high = self._associate(confirmed, env, cls, high, thr1)
    for ti, di in matches:
      self._match(confirmed[ti], boxes[high[di]], meas[high[di]], scores[high[di]])
    # 2. Low detections <-> the still unmatched tracks that were tracked (not lost).
    tracked = [confirmed[i] for i in free_tracks if confirmed[i].state == TRACKED]
    matches, free_tracked, _ = self._associate(tracked, env, cls, low, thr2)
    for ti, di in matches:
      self._match(tracked[ti], boxes[low[di]], meas[low[di]], scores[low[di]])
    for i in free_tracked:
      tracked[i].state = LOST
    # 3. Unconfirmed tracks <-> high detections left over; unmatched ones are removed.
    rest = high[free_high]
    matches, free_unconf, free_rest = self._associate(unconfirmed, env, cls, rest, thr3)
    for ti, di in matches:
      t = unconfirmed[ti]
      self._match(t, boxes[rest[di]], meas[rest[di]], scores[rest[di]])
      t.confirmed = t.hits >= cfg.min_hits
    dead = {id(unconfirmed[i]) for i in free_unconf}
    # 4. New tracks; 5. lost tracks past max_lost die.
    dead |= {id(t) for t in self.tracks
             if t.state == LOST and self.frame - t.last_frame > cfg.max_lost}
    self.tracks = [t for t in self.tracks if id(t) not in dead]
    for di in rest[free_rest]:
      if scores[di] >= cfg.new_track_score:
        self._start(boxes[di], meas[di], scores[di], int(cls[di]))
    return self._outputs()

  # -- steps ------------------------------------------------------------------------------------

  def _predict(self) -> None:
    """All tracks one frame ahead, in one batched Kalman step."""
    if not self.tracks:
      return
    mean = np.stack([t.mean for t in self.tracks])
    cov = np.stack([t.cov for t in self.tracks])
    lost = np.array([t.state == LOST for t in self.tracks])
    mean[lost, 6:8] = 0  # a coasting box keeps its size (ByteTrack zeroes vh of lost tracks)
    mean, cov = self.kf.predict(mean, cov)
    for t, m, c in zip(self.tracks, mean, cov):
      t.mean, t.cov = m, c

  def _associate(self, tracks: list[_Track], env: np.ndarray, cls: np.ndarray,
                 dets: np.ndarray, threshold: float):
    """Tracks <-> detections `dets` (indices into the frame's): linear_assignment's result."""
    if not tracks or len(dets) == 0:
      return np.zeros((0, 2), int), np.arange(len(tracks)), np.arange(len(dets))
    t_boxes = np.stack([t.envelope_xyxy() for t in tracks])
    if self.config.association == "iou":
      cost = 1.0 - iou_matrix(t_boxes, env[dets])
    else:
      cost = center_distance(t_boxes, env[dets])
    if self.config.class_aware:
      t_cls = np.array([t.cls for t in tracks])
      cost = np.where(t_cls[:, None] == cls[dets][None], cost, np.inf)
    return linear_assignment(cost, threshold)

  def _match(self, t: _Track, box: np.ndarray, meas: np.ndarray, score: float) -> None:
    t.mean, t.cov = self.kf.update(t.mean, t.cov, meas)
    t.box, t.score, t.last_frame, t.state = box.copy(), float(score), self.frame, TRACKED
    t.hits += 1

  def _start(self, box: np.ndarray, meas: np.ndarray, score: float, cls: int) -> None:
    mean, cov = self.kf.initiate(meas)
    t = _Track(track_id=self._next_id, mean=mean, cov=cov, score=float(score), cls=cls,
               box=box.copy(), last_frame=self.frame,
               confirmed=self.config.min_hits <= 1 or self.frame == 1)
    self._next_id += 1
    self.class_of[t.track_id] = cls
    self.tracks.append(t)

  def _outputs(self) -> list[TrackOutput]:
    out = []
    for t in sorted(self.tracks, key=lambda t: t.track_id):
      if not (t.confirmed and t.state == TRACKED and t.last_frame == self.frame):
        continue
      if self.config.output_box == "detection":
        box = t.box.copy()
      elif len(t.box) == 5:  # rotated: filtered centre, the detection's size and angle
        box = np.concatenate([t.mean[:2], t.box[2:]])
      else:
        box = t.envelope_xyxy()
      out.append(TrackOutput(t.track_id, box, t.score))
    return out


def outputs_to_arrays(outputs: list[TrackOutput], box_dim: int = 4
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One frame's outputs -> ids (K,) int64, boxes (K, box_dim) float64, scores (K,)."""
  if not outputs:
    return np.zeros(0, np.int64), np.zeros((0, box_dim)), np.zeros(0)
  return (np.array([o.track_id for o in outputs], np.int64),
          np.stack([np.asarray(o.box, np.float64) for o in outputs]),
          np.array([o.score for o in outputs], np.float64))
