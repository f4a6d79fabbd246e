"""Whole-scene prediction with a fine-tuned run (`python -m ringmoe_jax.predict`).

  windows.py    window grid (stride S - overlap, last row / column shifted in), blending
                weight (separable raised cosine, > 0), row-strip accumulator
  raster_io.py  input scenes (checks, windows, one scan), atomic COG output
  vector.py     scene-wide NMS of the windows' boxes, GeoJSON in WGS84
  predictor.py  WindowPredictor: checkpoint + sensor registry -> one jitted program per batch
  scene.py      predict_scene: the loop (windows -> batches -> blend -> rows -> COG / GeoJSON)
  __main__.py   the command line

API: `WindowPredictor.from_workdir(config, workdir)` then `predict_scene(predictor, [paths],
output, bands=..., overlap=16, probabilities=False)`.
"""
from __future__ import annotations


def __getattr__(name):
  # Lazy: `python -m ringmoe_jax.predict` must not import JAX before absl parses the flags.
  if name == "predict_scene":
    from ringmoe_jax.predict.scene import predict_scene  # pylint: disable=import-outside-toplevel
    return predict_scene
  if name == "WindowPredictor":
    from ringmoe_jax.predict.predictor import WindowPredictor  # pylint: disable=import-outside-toplevel
    return WindowPredictor
  raise AttributeError(name)


__all__ = ["WindowPredictor", "predict_scene"]
