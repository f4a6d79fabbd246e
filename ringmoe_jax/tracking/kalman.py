"""Constant-velocity Kalman filter for box tracking in image space (numpy, host side).

State (8,): (cx, cy, w, h, vx, vy, vw, vh) in pixels and pixels / frame; measurement (4,):
(cx, cy, w, h). ByteTrack tracks (cx, cy, a = w / h, h); we track w and h directly (as BoT-SORT
does) because satellite boxes are horizontal envelopes of rotated targets whose aspect ratio
swings with the heading (a 10 x 2 px ship goes from a = 5 to a = 0.2 when it turns), and the
noise of each side is better tied to that side than to the height.

Noise (std in pixels, per component; `ws` = (w, h, w, h) of the current estimate / measurement):
  process, position   max(std_weight_position * ws, min_std_position)       (Q, top-left block)
  process, velocity   max(std_weight_velocity * ws, min_std_velocity)       (Q, bottom-right)
  measurement         max(std_weight_position * ws, min_std_position)       (R)
  initial position    init_position_factor * (process position std)          (P0)
  initial velocity    init_velocity_factor * (process velocity std)          (P0)
The weights are ByteTrack's (1/20, 1/160, initial factors 2 and 10). ByteTrack scales them by
the box height of pedestrians (100+ px); satellite targets are 10-50 px, where 1/20 of the size is
a fraction of a pixel, below the localisation error of any detector, and 1/160 of it would pin
the velocity to its first estimate. Hence the floors (parameters, in pixels): by default the
position std is at least 1 px and the velocity std at least 0.1 px / frame, so a new track's
velocity std is at least 1 px / frame (simulated ships move 0.3-1.5 px / frame).

All functions take one track ((8,), (8, 8)) or a batch ((N, 8), (N, 8, 8)); any leading shape
broadcasts. Arrays are float64.
"""
from __future__ import annotations

import dataclasses

import numpy as np

NDIM = 4  # measured components: cx, cy, w, h


@dataclasses.dataclass(frozen=True)
class KalmanFilter:
  """Constant-velocity Kalman filter on (cx, cy, w, h, vx, vy, vw, vh); noise: module doc."""
  std_weight_position: float = 1.0 / 20
  std_weight_velocity: float = 1.0 / 160
  min_std_position: float = 1.0  # pixels
  min_std_velocity: float = 0.1  # pixels / frame
  init_position_factor: float = 2.0
  init_velocity_factor: float = 10.0
  dt: float = 1.0  # frames per step

  @property
  def motion_matrix(self) -> np.ndarray:
    """F (8, 8): position += dt * velocity."""
    f = np.eye(2 * NDIM)
    f[:NDIM, NDIM:] = self.dt * np.eye(NDIM)
    return f

  @property
  def measurement_matrix(self) -> np.ndarray:
    """H (4, 8): the measurement is the position part of the state."""
    return np.eye(NDIM, 2 * NDIM)

  def _stds(self, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """size (..., 2) (w, h) -> position std, velocity std (..., 4) with the pixel floors."""
    ws = np.concatenate([size, size], axis=-1)  # (cx, cy, w, h) scale with (w, h, w, h)
    pos = np.maximum(self.std_weight_position * ws, self.min_std_position)
    vel = np.maximum(self.std_weight_velocity * ws, self.min_std_velocity)
    return pos, vel

  def initiate(self, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """measurement (..., 4) (cx, cy, w, h) -> mean (..., 8) (zero velocity), cov (..., 8, 8)."""
    z = np.asarray(measurement, np.float64)
    mean = np.concatenate([z, np.zeros_like(z)], axis=-1)
    pos, vel = self._stds(np.abs(z[..., 2:4]))
    std = np.concatenate([self.init_position_factor * pos, self.init_velocity_factor * vel], -1)
    return mean, _diag(std**2)

  def predict(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One step: x = F x, P = F P F^T + Q (Q from the size before the step, as ByteTrack)."""
    mean = np.asarray(mean, np.float64)
    cov = np.asarray(cov, np.float64)
    f = self.motion_matrix
    pos, vel = self._stds(np.abs(mean[..., 2:4]))
    q = _diag(np.concatenate([pos, vel], axis=-1) ** 2)
    return mean @ f.T, f @ cov @ f.T + q

  def project(self, mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """State -> measurement space: H x (..., 4), S = H P H^T + R (..., 4, 4)."""
    mean = np.asarray(mean, np.float64)
    pos, _ = self._stds(np.abs(mean[..., 2:4]))
    return mean[..., :NDIM], cov[..., :NDIM, :NDIM] + _diag(pos**2)

  def update(self, mean: np.ndarray, cov: np.ndarray,
             measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correction with measurement (..., 4): K = P H^T S^-1, x += K (z - H x), P -= K S K^T."""
    mean = np.asarray(mean, np.float64)
    cov = np.asarray(cov, np.float64)
    z_pred, s = self.project(mean, cov)
    # K^T = S^-1 H P (S and P symmetric); solve instead of inverting S.
    gain = np.swapaxes(np.linalg.solve(s, cov[..., :NDIM, :]), -1, -2)  # (..., 8, 4)
    innovation = np.asarray(measurement, np.float64) - z_pred
    mean = mean + (gain @ innovation[..., None])[..., 0]
    cov = cov - gain @ s @ np.swapaxes(gain, -1, -2)
    return mean, cov


def _diag(v: np.ndarray) -> np.ndarray:
  """(..., n) -> (..., n, n) diagonal matrices."""
  return v[..., :, None] * np.eye(v.shape[-1])
