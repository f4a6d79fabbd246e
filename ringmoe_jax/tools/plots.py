"""PNG figures (matplotlib, optional extra `pip install -e ".[plots]"`, 'Agg' backend).

  routing_figure(counts, path, ...)   expert load per block (heatmaps: collaborative router, and
                                      the special experts of each modality), + the modality
                                      similarity of collaborative-expert use
  curves_figure(records, path, ...)   training curves from metrics.jsonl records
  overlay_figure(image, classes, ...) input RGB beside / under the predicted classes
  prediction_overlay(input, pred, ..) the same from a scene GeoTIFF and its prediction COG

Used by `tools.routing_report --plot`, `tools.plot_metrics` and the notebooks.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ringmoe_jax.errors import UserError

INSTALL_HINT = 'pip install -e ".[plots]"'


def pyplot():
  """matplotlib.pyplot on the non-interactive 'Agg' backend; UserError when not installed."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"plots need matplotlib: {INSTALL_HINT} (or pip install matplotlib)") from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, path: str) -> str:
  fig.savefig(path, dpi=100, bbox_inches="tight")
  pyplot().close(fig)
  return path


def shares(counts: np.ndarray) -> np.ndarray:
  """(L, E) token counts -> each block's fraction per expert (rows sum to 1; empty rows 0)."""
  c = np.asarray(counts, np.float64)
  return c / np.maximum(c.sum(axis=-1, keepdims=True), 1)


def routing_figure(counts: dict[str, np.ndarray], path: str, *,
                   modalities: Sequence[str] = (), similarity: np.ndarray | None = None,
                   title: str = "") -> str:
  """Heatmaps of the expert share per block: 'collab' (L, Ec), and 'special' (L, M * Es) split
  into one panel per modality (its own Es experts); with `similarity` (M, M) a last panel of
  how alike the modalities' collaborative-expert use is (routing_report.modality_sharing)."""
  plt = pyplot()
  panels: list[tuple[str, np.ndarray]] = []
  if "collab" in counts:
    panels.append(("collaborative", shares(counts["collab"])))
  if "special" in counts:
    special = np.asarray(counts["special"], np.float64)
    m = max(len(modalities), 1)
    per = special.shape[1] // m
    for i in range(m):
      name = modalities[i] if modalities else "special"
      panels.append((f"special: {name}", shares(special[:, i * per:(i + 1) * per])))
  n = len(panels) + (similarity is not None)
  if n == 0:
    raise UserError("no routing counts to plot (a model without routed experts?)")
  fig, axes = plt.subplots(1, n, figsize=(2.6 * n + 1, 3.6), squeeze=False)
  axes = axes[0]
  for ax, (name, share) in zip(axes, panels):
    im = ax.imshow(share, aspect="auto", cmap="viridis", vmin=0, vmax=max(share.max(), 1e-9))
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("expert")
    ax.set_ylabel("block")
    ax.set_xticks(range(share.shape[1]))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  if similarity is not None:
    ax = axes[-1]
    im = ax.imshow(similarity, cmap="magma", vmin=0, vmax=1)
    labels = list(modalities) or [str(i) for i in range(len(similarity))]
    ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for (i, j), v in np.ndenumerate(similarity):
      ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
              color="black" if v > 0.6 else "white")
    ax.set_title("collab use similarity", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def read_metrics(path: str) -> list[dict[str, Any]]:
  """WORKDIR/metrics.jsonl (or the file itself) -> the records, in order; a torn last line (a
  run killed while writing) is skipped."""
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  if not os.path.exists(path):
    raise UserError(f"{path}: no such file (a training run's workdir has metrics.jsonl)")
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  if not out:
    raise UserError(f"{path}: no metrics records")
  return out


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def series(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps (N,), values (N,) or (N, K)) of `key` ('a/b' reaches into nested records, as
  metrics_log.flatten names them) over the records that hold it: a number, or a list of K
  numbers (per block: one curve each); non-finite values are NaN."""
  from ringmoe_jax.train.metrics_log import flatten  # pylint: disable=import-outside-toplevel
  steps, values = [], []
  for r in records:
    v = flatten(r).get(key)
    if isinstance(v, str):                     # metrics_log writes non-finite floats as text
      v = float("nan")
    ok = _number(v) or (isinstance(v, list) and v and all(_number(x) for x in v)
                        and (not values or np.ndim(values[0]) == 1 and len(values[0]) == len(v)))
    if ok:
      steps.append(r.get("step", len(steps)))
      values.append(v if _number(v) else list(v))
  return np.asarray(steps), np.asarray(values, np.float64)


def curves_figure(records: list[dict[str, Any]], path: str, keys: Sequence[str],
                  *, title: str = "") -> str:
  """One small panel per key (its value against the step; a per-block list: one line per
  block); keys absent from every record are skipped, and none present is an error naming the
  keys the records have."""
  from ringmoe_jax.train.metrics_log import flatten  # pylint: disable=import-outside-toplevel
  plt = pyplot()
  found = [(k, *series(records, k)) for k in keys]
  found = [f for f in found if len(f[1])]
  if not found:
    have = sorted({k for r in records for k, v in flatten(r).items()
                   if (_number(v) or isinstance(v, list)) and k != "step"})
    raise UserError(f"none of {list(keys)} in the metrics; they hold: {', '.join(have[:40])}")
  cols = min(3, len(found))
  rows = -(-len(found) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
  for ax, (k, s, v) in zip(axes.flat, found):
    lines = ax.plot(s, v, marker="." if len(s) < 30 else None)
    if v.ndim == 2 and 1 < v.shape[1] <= 8:
      ax.legend(lines, [f"block {i}" for i in range(v.shape[1])], fontsize=6)
    ax.set_title(k, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(found):]:
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def stretch(rgb: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
  """(H, W, 3) any range -> [0, 1] by the 2nd / 98th percentile of the finite pixels."""
  rgb = np.asarray(rgb, np.float64)
  finite = rgb[np.isfinite(rgb)]
  if not finite.size:
    return np.zeros(rgb.shape)
  lo, hi = np.percentile(finite, [low, high])
  return np.clip(np.nan_to_num((rgb - lo) / max(hi - lo, 1e-12)), 0, 1)


def overlay_figure(image: np.ndarray, classes: np.ndarray, path: str, *, nodata: int = 255,
                   alpha: float = 0.45, class_names: Sequence[str] = (), title: str = "") -> str:
  """Three panels: the input (H, W, C: first three channels as RGB, one channel as grey), the
  predicted class map (H, W; `nodata` transparent) and the classes over the input."""
  plt = pyplot()
  from matplotlib import colors as mcolors  # pylint: disable=import-outside-toplevel
  image = np.asarray(image)
  rgb = stretch(image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, -1))
  classes = np.asarray(classes)
  shown = np.ma.masked_equal(classes, nodata)
  k = int(max(classes[classes != nodata].max(initial=0) + 1, len(class_names), 2))
  cmap = mcolors.ListedColormap(plt.get_cmap("tab10" if k <= 10 else "tab20")(
      np.arange(k) % (10 if k <= 10 else 20)))
  fig, axes = plt.subplots(1, 3, figsize=(13, 4.5))
  axes[0].imshow(rgb)
  axes[0].set_title("input", fontsize=9)
  im = axes[1].imshow(shown, cmap=cmap, vmin=-0.5, vmax=k - 0.5, interpolation="nearest")
  axes[1].set_title("prediction", fontsize=9)
  axes[2].imshow(rgb)
  axes[2].imshow(shown, cmap=cmap, vmin=-0.5, vmax=k - 0.5, alpha=alpha,
                 interpolation="nearest")
  axes[2].set_title("overlay", fontsize=9)
  for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
  bar = fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, ticks=range(k))
  if class_names:
    names = list(class_names)[:k]
    bar.ax.set_yticklabels(names + [str(i) for i in range(len(names), k)], fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def prediction_overlay(input_path: str, prediction_path: str, path: str, *,
                       bands: Sequence[int] = (1, 2, 3), class_names: Sequence[str] = (),
                       alpha: float = 0.45, max_pixels: int = 1024) -> str:
  """overlay_figure of a scene GeoTIFF (`bands`, 1-based, as RGB; its nodata shown black) and
  the class COG `python -m ringmoe_jax.predict` wrote for it (read decimated to at most
  max_pixels a side, so a large scene plots in seconds)."""
  try:
    import rasterio  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError('reading GeoTIFFs needs rasterio: pip install -e ".[geo]"') from None
  with rasterio.open(prediction_path) as src:
    scale = max(1, -(-max(src.height, src.width) // max_pixels))
    shape = (max(1, src.height // scale), max(1, src.width // scale))
    if src.count != 1 or src.dtypes[0] != "uint8":
      raise UserError(f"{prediction_path}: expected one uint8 class band (predict without "
                      f"--probabilities), got {src.count} band(s) of {src.dtypes[0]}")
    classes = src.read(1, out_shape=shape, resampling=rasterio.enums.Resampling.nearest)
    nodata = 255 if src.nodata is None else int(src.nodata)
  with rasterio.open(input_path) as src:
    bands = [b for b in bands if b <= src.count] or [1]
    image = src.read(bands, out_shape=(len(bands), *shape),
                     resampling=rasterio.enums.Resampling.nearest).astype(np.float64)
    if src.nodata is not None:
      image[image == src.nodata] = np.nan
  return overlay_figure(np.moveaxis(image, 0, -1), classes, path, nodata=nodata, alpha=alpha,
                        class_names=class_names, title="")
