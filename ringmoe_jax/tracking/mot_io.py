"""MOT Challenge text files and image-sequence folders.

MOT txt (one box per line, comma separated; MOT15-20 gt / det / results files):
  frame, id, x, y, w, h[, score[, class[, visibility[, ...]]]]
frame is 1-based, (x, y) the top-left corner, w, h the size, all in pixels; id -1 in detection
files. Missing optional fields read as score 1, class -1, visibility -1; further fields (the
3-D world coordinates of MOT15) are ignored. Blank lines are skipped. A bad line raises
`UserError` naming the file, the line number and what was expected.
The writer writes tracker results as MOT Challenge asks: `frame,id,x,y,w,h,score,-1,-1,-1`.
Rotated track boxes (N, 5) are written as their horizontal envelope (the format has no angle).

Image-sequence folders: `read_sequence_folder(dir)` -> the frame files (PNG / JPEG / TIFF) in
name order (digit runs compared as numbers, so 2.png < 10.png; zero-padded MOT names sort the
same either way) and a loader reading one frame's pixels with rasterio.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Callable, Sequence

import numpy as np

from ringmoe_jax.errors import ReaderError, UserError
from ringmoe_jax.tracking.bytetrack import TrackOutput, envelope

MIN_FIELDS = 6
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_FIELD_NAMES = ("frame", "id", "x", "y", "w", "h", "score", "class", "visibility")


@dataclasses.dataclass
class MotTable:
  """Rows of a MOT txt file, in file order: frames / ids / classes (R,) int64, boxes (R, 4)
  (x, y, w, h) float64, scores / visibility (R,) float64."""
  frames: np.ndarray
  ids: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray
  classes: np.ndarray
  visibility: np.ndarray

  def __len__(self) -> int:
    return len(self.frames)

  def frame_numbers(self) -> np.ndarray:
    """Sorted distinct 1-based frame numbers present."""
    return np.unique(self.frames)

  def frame(self, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of one 1-based frame: ids (K,), boxes (K, 4) xyxy, scores (K,)."""
    sel = self.frames == frame
    return self.ids[sel], xywh_to_xyxy(self.boxes[sel]), self.scores[sel]

  def per_frame(self, num_frames: int | None = None
                ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """[frame(1), ..., frame(num_frames)] (None: up to the last frame present); frames without
    rows are empty."""
    last = int(self.frames.max()) if len(self) else 0
    return [self.frame(f) for f in range(1, (last if num_frames is None else num_frames) + 1)]


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
  b = np.asarray(b, np.float64)
  return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)


def xyxy_to_xywh(b: np.ndarray) -> np.ndarray:
  b = np.asarray(b, np.float64)
  return np.concatenate([b[..., :2], b[..., 2:4] - b[..., :2]], axis=-1)


def _parse_line(text: str, where: str) -> tuple[float, ...]:
  fields = [f.strip() for f in text.split(",")]
  if len(fields) < MIN_FIELDS:
    raise UserError(f"{where}: {len(fields)} field(s), expected at least {MIN_FIELDS} "
                    f"(frame,id,x,y,w,h[,score,class,visibility]), got {text.strip()!r}")
  values = []
  for k, f in enumerate(fields[:len(_FIELD_NAMES)]):
    try:
      v = float(f)
    except ValueError:
      raise UserError(f"{where}: field {k + 1} ({_FIELD_NAMES[k]}) is {f!r}, expected a "
                      "number") from None
    if not math.isfinite(v):
      raise UserError(f"{where}: field {k + 1} ({_FIELD_NAMES[k]}) is {f!r}, expected a "
                      "finite number")
    values.append(v)
  frame, ident, _, _, w, h = values[:6]
  if frame != int(frame) or frame < 1:
    raise UserError(f"{where}: frame is {fields[0]!r}, expected an integer >= 1 (MOT frames "
                    "are 1-based)")
  if ident != int(ident):
    raise UserError(f"{where}: id is {fields[1]!r}, expected an integer")
  if w < 0 or h < 0:
    raise UserError(f"{where}: negative box size w={fields[4]}, h={fields[5]}, expected "
                    "w, h >= 0 (x, y is the top-left corner)")
  if len(values) > 7 and values[7] != int(values[7]):
    raise UserError(f"{where}: class is {fields[7]!r}, expected an integer")
  return tuple(values) + (1.0, -1.0, -1.0)[len(values) - 6:]


def read_mot_txt(path: str | os.PathLike) -> MotTable:
  """A MOT Challenge txt file -> MotTable (format: module doc; bad input: UserError)."""
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.readlines()
  except FileNotFoundError:
    raise UserError(f"{path}: no such MOT txt file") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: cannot be read as a MOT txt file ({e})") from None
  rows = [_parse_line(text, f"{path}, line {i}")
          for i, text in enumerate(lines, start=1) if text.strip()]
  a = np.asarray(rows, np.float64).reshape(-1, 9)
  return MotTable(frames=a[:, 0].astype(np.int64), ids=a[:, 1].astype(np.int64),
                  boxes=a[:, 2:6].copy(), scores=a[:, 6].copy(),
                  classes=a[:, 7].astype(np.int64), visibility=a[:, 8].copy())


def write_mot_txt(path: str | os.PathLike, outputs: Sequence[Sequence[TrackOutput]],
                  first_frame: int = 1, precision: int = 3) -> int:
  """Tracker outputs, one list per frame (frame number first_frame + index) -> MOT txt
  results `frame,id,x,y,w,h,score,-1,-1,-1`. Returns the number of rows written."""
  lines = []
  for t, frame_out in enumerate(outputs):
    for o in frame_out:
      box = np.asarray(o.box, np.float64).reshape(1, -1)
      x, y, w, h = xyxy_to_xywh(envelope(box))[0]
      nums = ",".join(f"{v:.{precision}f}" for v in (x, y, w, h, o.score))
      lines.append(f"{first_frame + t},{int(o.track_id)},{nums},-1,-1,-1\n")
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(lines)
  return len(lines)


# ---------------------------------------------------------------------------------------------
# Image-sequence folders


def _natural_key(name: str) -> list:
  return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p]


def read_sequence_folder(directory: str | os.PathLike
                         ) -> tuple[list[str], Callable[[int], np.ndarray]]:
  """Frames of an image-sequence folder -> (paths in name order, load(index) -> (H, W, C)
  file values, dtype as stored). Other files and hidden files are ignored; a missing folder or
  one without frames raises ReaderError (a UserError)."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise ReaderError(f"{directory}: no such image-sequence folder")
  names = [n for n in os.listdir(directory)
           if n.lower().endswith(FRAME_SUFFIXES) and not n.startswith(".")
           and os.path.isfile(os.path.join(directory, n))]
  if not names:
    raise ReaderError(f"{directory}: no frames, expected image files named by frame "
                      f"({', '.join(FRAME_SUFFIXES)})")
  paths = [os.path.join(directory, n) for n in sorted(names, key=_natural_key)]

  def load(index: int) -> np.ndarray:
    # raster.read_raster: rasterio, with errors naming the file (damaged / not a raster).
    from ringmoe_jax.data.readers import raster  # pylint: disable=import-outside-toplevel
    data, _ = raster.read_raster(paths[index])
    return np.moveaxis(data, 0, -1)

  return paths, load
