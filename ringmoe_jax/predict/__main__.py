r"""Whole-scene prediction with a fine-tuned run.

  python -m ringmoe_jax.predict --config=configs/finetune_<task>.py --workdir=FINETUNED_RUN \
      --input=scene.tif [--input_after=b.tif] --output=out.tif \
      [--batch_size=8 --overlap=16 --probabilities --bands=1,2,3 --bands_after=... --step=N]

segmentation / change detection -> uint8 class-id COG (255 = nodata) or, with --probabilities,
one float32 band per class (NaN = nodata); height -> float32 metres COG (NaN = nodata);
detection -> --output=boxes.geojson (WGS84 polygons with class and score). The output has the
input's grid, CRS and transform. `--input_after` is the second view: the after image of change
detection, or the second sensor of a fused config (task.views 'a+b'). `--bands` picks the
sensor's bands (1-based, in the sensor's band order) from a file with more.
Prints `output=... tiles=... tiles_per_s=...`; a bad input or flag: one `error: ...` line,
exit status 2, and no output file (nor temporary file) left behind.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "The run's config file (get_config(arg)).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The fine-tuning run's workdir.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_string("input", None, "The scene (GeoTIFF or any GDAL raster), first view.")
flags.DEFINE_string("input_after", None, "The second view (change detection: after image).")
flags.DEFINE_string("output", None, "Output COG (.tif) or, for detection, GeoJSON (.geojson).")
flags.DEFINE_integer("batch_size", 0, "Windows per batch (0: the config's eval batch size).")
flags.DEFINE_integer("overlap", 16, "Pixels two neighbouring windows share (blended).")
flags.DEFINE_bool("probabilities", False, "Write per-class probabilities, not class ids.")
flags.DEFINE_string("bands", "", "1-based bands of --input in the sensor's order, e.g. 4,3,2.")
flags.DEFINE_string("bands_after", "", "1-based bands of --input_after.")
flags.DEFINE_bool("progress", True, "Show a progress bar (tiles/s, ETA) on stderr.")
flags.mark_flags_as_required(["config", "workdir", "input", "output"])


def parse_bands(text: str, flag: str) -> list[int] | None:
  """'4,3,2' -> [4, 3, 2]; '' -> None; anything else -> UserError naming the flag."""
  from ringmoe_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  if not text.strip():
    return None
  try:
    out = [int(t) for t in text.split(",") if t.strip()]
  except ValueError:
    raise UserError(f"--{flag}={text}: expected 1-based band numbers like 4,3,2") from None
  if not out or min(out) < 1:
    raise UserError(f"--{flag}={text}: expected 1-based band numbers like 4,3,2")
  return out


def run(config, workdir: str, inputs: list[str], output: str, *, step=None, batch_size=0,
        overlap=16, probabilities=False, bands=(), progress=True) -> dict:
  """Checks the flags and inputs (from the checkpoint's meta: its sensors), then restores the
  model and predicts the scene; -> predict_scene's summary. A bad input fails in seconds,
  before a large model is restored."""
  # pylint: disable=import-outside-toplevel
  import os
  from ringmoe_jax.errors import UserError
  from ringmoe_jax.predict import predictor as pr
  from ringmoe_jax.predict import scene
  for p in inputs:
    if os.path.abspath(p) == os.path.abspath(output):
      raise UserError(f"--output={output} is an input; choose another output path")
  step, registry = pr.read_run(config, workdir, step)
  scene.check_args(str(config.task.name), int(config.model.img_size), output, overlap,
                   probabilities)
  readers = scene.open_inputs(inputs, pr.view_sensors(config, registry), bands)
  try:
    predictor = pr.WindowPredictor.from_workdir(config, workdir, step, batch_size or None)
  except BaseException:
    for r in readers:
      r.close()
    raise
  return scene.predict_scene(predictor, readers, output, overlap=overlap,
                             probabilities=probabilities, progress=progress)


def main(argv):
  del argv
  from ringmoe_jax.errors import run_cli  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS

  def go():
    inputs = [f.input] + ([f.input_after] if f.input_after else [])
    bands = [parse_bands(f.bands, "bands"), parse_bands(f.bands_after, "bands_after")]
    return run(f.config, f.workdir, inputs, f.output, step=f.step, batch_size=f.batch_size,
               overlap=f.overlap, probabilities=f.probabilities, bands=bands[:len(inputs)],
               progress=f.progress)
  result = run_cli(go)
  print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in result.items()), flush=True)


if __name__ == "__main__":
  from ringmoe_jax.errors import parse_absl_flags  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=parse_absl_flags)
