"""Whole-scene prediction: windows in, blended rasters (or merged boxes) out.

  predict_scene(predictor, inputs, output, bands=..., overlap=16, probabilities=False)

Flow (memory independent of the scene's size): open and check every input view (`SceneReader`;
views co-registered), scan them once (damaged files, all nodata, NaN bands fail here, before
any output exists), then walk the window grid row-major in batches of B: a reader thread
(`ReadAhead`) cuts the windows from the rows of the current window row (read with rasterio, one
strip held per view) and skips windows without a valid pixel, `READ_AHEAD` batches ahead; the
model runs while the next batches are read and prepared (`IN_FLIGHT`),
add each window's output to the row-strip accumulator (windows.py) and
flush finished rows to the output GeoTIFF written aside (raster_io.CogWriter), which becomes
the COG at `output` in one rename at the end. Any error removes the temporary files.

Outputs (grid, CRS, transform copied from the first input):
  segmentation / change detection:  uint8 class ids, nodata 255; `probabilities`: float32, one
                                    band per class, nodata NaN
  height:                           float32 metres, nodata NaN
  detection:                        GeoJSON (`output` *.geojson / *.json): the windows' boxes in
                                    scene pixels, those centred on nodata dropped, merged by
                                    NMS across windows (task.nms_iou), as WGS84 polygons
A pixel is nodata out where any view is nodata there (file nodata tag, sensor nodata, NaN).
"""
from __future__ import annotations

import collections
import os
import queue
import sys
import threading
import time
from typing import Sequence

import numpy as np

from ringmoe_jax.errors import UserError
from ringmoe_jax.predict import raster_io, vector, windows as win

CLASS_NODATA = 255
# Batches dispatched before the oldest is collected: >= 2 keeps the devices busy while the host
# prepares the next (JAX dispatch is asynchronous); 3 absorbs jitter in the host work.
IN_FLIGHT = 3
# Batches of windows read ahead by the reader thread (each B windows of every view).
READ_AHEAD = 2
RASTER_SUFFIXES = (".tif", ".tiff")
VECTOR_SUFFIXES = (".geojson", ".json")


class Progress:
  """tqdm on stderr when installed, else a plain line every `every` seconds: tiles, tiles/s,
  ETA. `enabled=False`: silent."""

  def __init__(self, total: int, enabled: bool = True, every: float = 10.0):
    self.total, self.done, self.enabled, self.every = total, 0, enabled, every
    self.start = self._last = time.monotonic()
    self._bar = None
    if enabled:
      try:
        from tqdm import tqdm  # pylint: disable=import-outside-toplevel
        self._bar = tqdm(total=total, unit="tile", desc="predict", file=sys.stderr,
                         dynamic_ncols=True)
      except ImportError:
        pass

  def update(self, n: int) -> None:
    self.done += n
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.update(n)
      return
    now = time.monotonic()
    if now - self._last >= self.every or self.done == self.total:
      self._last = now
      rate = self.done / max(now - self.start, 1e-9)
      eta = (self.total - self.done) / max(rate, 1e-9)
      print(f"predict: {self.done}/{self.total} tiles, {rate:.1f} tiles/s, ETA {eta:.0f} s",
            file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def _check_output(task: str, output: str) -> None:
  suffixes = VECTOR_SUFFIXES if task == "detection" else RASTER_SUFFIXES
  if not output.lower().endswith(suffixes):
    what = "boxes as GeoJSON" if task == "detection" else "a GeoTIFF (COG)"
    raise UserError(f"--output={output}: a {task} run writes {what}; expected a path ending in "
                    f"{' or '.join(suffixes)}")
  parent = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(parent):
    raise UserError(f"--output={output}: folder {parent} does not exist")


def _batches(grid: list[tuple[int, int]], readers, size: int, batch_size: int):
  """Yields (grid index of the first, positions, windows) for up to B consecutive windows that
  have a valid pixel; a window without one (all nodata) comes alone as (i, [pos], None)."""
  start, pos, views = 0, [], []
  for i, (y0, x0) in enumerate(grid):
    w = [r.read(y0, x0, size) for r in readers]
    if not np.logical_and.reduce([v for _, v in w]).any():
      if pos:
        yield start, pos, views
      yield i, [(y0, x0)], None
      start, pos, views = i + 1, [], []
      continue
    pos.append((y0, x0))
    views.append(w)
    if len(pos) == batch_size:
      yield start, pos, views
      start, pos, views = i + 1, [], []
  if pos:
    yield start, pos, views


class ReadAhead:
  """Runs `_batches` in a thread, `depth` batches ahead: GDAL decodes blocks without the GIL,
  so reading the next window row overlaps the model and the blending (measured: the reads were
  a fifth of the host time of `predict_scene`). Iterating yields what `_batches` yields; an
  error in the thread is raised here. `close()` stops the thread and waits for it, so the
  readers can be closed after it."""

  _DONE = object()

  def __init__(self, grid, readers, size: int, batch_size: int, depth: int = READ_AHEAD):
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(grid, readers, size, batch_size),
                                    name="predict-read-ahead", daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self, grid, readers, size, batch_size) -> None:
    import rasterio  # pylint: disable=import-outside-toplevel
    try:
      with rasterio.Env(GDAL_CACHEMAX=raster_io.GDAL_CACHE_MB):   # rasterio.Env is per thread
        for item in _batches(grid, readers, size, batch_size):
          if not self._put(item):
            return
      self._put(self._DONE)
    except BaseException as e:  # pylint: disable=broad-except  # re-raised in the consumer
      self._put(e)

  def __iter__(self):
    while True:
      item = self._queue.get()
      if item is self._DONE:
        return
      if isinstance(item, BaseException):
        raise item
      yield item

  def close(self) -> None:
    self._stop.set()
    self._thread.join()


def open_inputs(paths: Sequence[str], sensors, bands: Sequence[Sequence[int] | None] = ()
                ) -> list[raster_io.SceneReader]:
  """One checked, scanned SceneReader per view (co-registered); closes them on an error."""
  import rasterio  # pylint: disable=import-outside-toplevel
  if len(paths) != len(sensors):
    names = "+".join(s.name for s in sensors)
    raise UserError(f"the config's views are {names}: {len(sensors)} input(s) (--input"
                    f"{', --input_after' if len(sensors) > 1 else ''}), got {len(paths)}")
  bands = list(bands) + [None] * (len(paths) - len(bands))
  readers = []
  with rasterio.Env(GDAL_CACHEMAX=raster_io.GDAL_CACHE_MB):
    try:
      for path, sensor, b in zip(paths, sensors, bands):
        readers.append(raster_io.SceneReader(path, sensor, b))
      for r in readers[1:]:
        raster_io.check_co_registered(readers[0], r)
      for r in readers:
        r.scan()
    except BaseException:
      for r in readers:
        r.close()
      raise
  return readers


def check_args(task: str, size: int, output: str, overlap: int, probabilities: bool) -> None:
  """UserError for an output path, overlap or --probabilities that the task cannot take."""
  if not 0 <= overlap <= size // 2:
    raise UserError(f"--overlap={overlap}: expected 0 <= overlap <= {size // 2} (half the "
                    f"window, model.img_size={size})")
  if probabilities and task not in ("segmentation", "change_detection"):
    raise UserError(f"--probabilities: a {task} run has no class probabilities")
  _check_output(task, output)


def predict_scene(predictor, inputs: Sequence, output: str, *,
                  bands: Sequence[Sequence[int] | None] = (), overlap: int = 16,
                  probabilities: bool = False, progress: bool = True) -> dict:
  """Predicts the scene `inputs` into `output` (module docstring).

  inputs: one path per view, or the SceneReaders of `open_inputs` (closed here).
  bands: per view, the 1-based file bands in the sensor's order (None: all, must match).
  Returns {"output", "tiles", "skipped", "seconds", "tiles_per_s", [detections]}.
  """
  import rasterio  # pylint: disable=import-outside-toplevel
  task, size = predictor.task.name, predictor.size
  floats = probabilities or task == "height"
  readers = [r for r in inputs if isinstance(r, raster_io.SceneReader)]
  writer = bar = ahead = None
  with rasterio.Env(GDAL_CACHEMAX=raster_io.GDAL_CACHE_MB):
    try:
      check_args(task, size, output, overlap, probabilities)
      if not readers:
        readers = open_inputs(inputs, predictor.sensors, bands)
      ref = readers[0]
      grid = win.grid(ref.height, ref.width, size, overlap)
      acc = None
      if task != "detection":
        acc = win.StripAccumulator(ref.height, ref.width, predictor.channels, size, overlap)
        if floats:
          writer = raster_io.CogWriter(output, ref, predictor.channels, "float32", np.nan,
                                       "average")
        else:
          writer = raster_io.CogWriter(output, ref, 1, "uint8", CLASS_NODATA, "nearest")
      found = []
      bar = Progress(len(grid), progress)
      t0 = time.monotonic()
      tiles = skipped = 0

      def finish(pending, pos):
        out = predictor.collect(pending)
        _, _, valid = pending
        for k, (y0, x0) in enumerate(pos):
          if acc is not None:
            acc.add(y0, x0, out[k], valid[k])
          else:
            found.append(_window_boxes(out[k], valid[k], y0, x0))

      # Batches in flight: (device result, positions, grid index of the first window). The
      # devices run batch i while the host reads and prepares batch i + 1 and blends i - 1.
      pending: collections.deque = collections.deque()
      ahead = ReadAhead(grid, readers, size, predictor.batch_size)
      for start, pos, views in ahead:
        if views is None:
          skipped += 1
          bar.update(1)
        else:
          pending.append((predictor.dispatch(views), pos, start))
          tiles += len(pos)
        while len(pending) > IN_FLIGHT - 1:
          done, done_pos, _ = pending.popleft()
          finish(done, done_pos)
          bar.update(len(done_pos))
        if acc is not None:
          # Rows above the first window not yet added are final.
          first = pending[0][2] if pending else start + len(pos)
          _flush(acc, writer, grid[first][0] if first < len(grid) else ref.height, floats)
      while pending:
        done, done_pos, _ = pending.popleft()
        finish(done, done_pos)
        bar.update(len(done_pos))
      result = {"output": output, "tiles": tiles, "skipped": skipped}
      if acc is not None:
        _flush(acc, writer, ref.height, floats)
        writer.finish()
      else:
        result["detections"] = _write_boxes(predictor, found, ref, output)
      secs = time.monotonic() - t0
      result.update(seconds=secs, tiles_per_s=tiles / max(secs, 1e-9))
      return result
    except BaseException:
      if writer is not None:
        writer.abort()
      raise
    finally:
      if ahead is not None:
        ahead.close()
      if bar is not None:
        bar.close()
      for r in readers:
        r.close()


def _flush(acc, writer, upto: int, floats: bool) -> None:
  for top, rows in acc.chunks(upto):
    if floats:
      writer.write(top, rows)
    else:
      nodata = np.isnan(rows[0])   # all channels NaN there: argmax gives 0, overwritten
      ids = np.argmax(rows, axis=0).astype(np.uint8)
      ids[nodata] = CLASS_NODATA
      writer.write(top, ids[None])


def _window_boxes(dets, valid: np.ndarray, y0: int, x0: int):
  """One window's detections -> scene pixels; boxes centred on nodata (or padding) dropped."""
  boxes, scores, classes = dets
  boxes = boxes.copy()
  if boxes.shape[1] == 4:
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    boxes += np.array([x0, y0, x0, y0], np.float64)
  else:
    cx, cy = boxes[:, 0].copy(), boxes[:, 1].copy()
    boxes[:, :2] += np.array([x0, y0], np.float64)
  s = valid.shape[0]
  col = np.clip(np.floor(cx).astype(np.int64), 0, s - 1)
  row = np.clip(np.floor(cy).astype(np.int64), 0, s - 1)
  keep = valid[row, col]
  return boxes[keep], scores[keep], classes[keep]


def _write_boxes(predictor, found, ref, output: str) -> int:
  dim = 5 if predictor.rotated else 4
  boxes = np.concatenate([f[0] for f in found]) if found else np.zeros((0, dim))
  scores = np.concatenate([f[1] for f in found]) if found else np.zeros(0, np.float32)
  classes = np.concatenate([f[2] for f in found]) if found else np.zeros(0, np.int32)
  keep = vector.merge_nms(boxes.reshape(-1, dim), scores, classes,
                          float(predictor.config.task.nms_iou), cell=float(predictor.size))
  fc = vector.to_feature_collection(boxes[keep], scores[keep], classes[keep],
                                    predictor.class_names, ref.transform, ref.crs)
  vector.write_geojson(output, fc)
  return int(len(keep))
