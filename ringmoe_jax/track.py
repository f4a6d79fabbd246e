r"""Multi-object tracking on satellite video: a fine-tuned detector per frame + ByteTrack.

  python -m ringmoe_jax.track --config=configs/finetune_detection.py:target=ships_video \
      --workdir=DETECTOR_RUN --output=DIR [--sequences=8 --frames=16]
  python -m ringmoe_jax.track ... --mot_root=SEQ_DIR      # MOT Challenge sequence folder

Loads the detection run's checkpoint (`workdir`, as `evaluate` does), runs its `predict` on every
frame (frames batched, one compiled program), associates the detections with `ByteTracker`
(tracking/bytetrack.py; thresholds: `--high_score`, `--low_score`, `--new_track_score`,
`--max_lost`, `--association=iou|center`) and writes one MOT txt per sequence
(`DIR/<sequence>.txt`, `frame,id,x,y,w,h,score,-1,-1,-1`) and `DIR/track.json` with the metrics
(MOTA, IDF1, HOTA, ID switches, ...; tracking/metrics.py) against the ground truth.

Sequences: the simulator's held-out scenes with moving ships (`SceneSimulator.sequence`, frames
of model.img_size pixels, the config's sensor; true tracks as ground truth), or a MOT Challenge
folder `SEQ_DIR/img1/*.png|jpg|tif` + `SEQ_DIR/gt/gt.txt` (frames must be model.img_size square:
whole-scene tiling is `ringmoe_jax.predict`'s job). `--perfect_detections` feeds the ground-truth
boxes (score 1) instead of the detector: the tracker's own ceiling (MOTA = IDF1 = 1 on the
simulator).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from absl import app, flags
from ml_collections import config_flags


def simulated_sequences(config, registry, num: int, frames: int) -> list[dict[str, Any]]:
  """[{"name", "frames": [(H, W, C) physical pixels], "sensor", "gt": [(ids (N,), boxes (N, 5)
  le90)] per frame}] of held-out scenes that have ships (scenes without any are skipped)."""
  from ringmoe_jax.data import box_labels  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.data.simulator import SceneSimulator  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.data.task_pipeline import view_sensors  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.data.task_sources import EVAL_SEED_OFFSET  # pylint: disable=import-outside-toplevel
  sensor = view_sensors(config.task.views[0])[0]
  size = int(config.model.img_size)
  sim = SceneSimulator(1, size, sensors=(sensor,), registry=registry,
                       seed=int(config.seed) + EVAL_SEED_OFFSET + 17, nodata_fraction=0.0)
  out, scene = [], 0
  while len(out) < num:
    if scene > 50 * num:
      raise RuntimeError(f"no ships in {scene} simulated scenes of {size} px")
    seq = sim.sequence(scene, sensor, frames)
    scene += 1
    tracks = seq["tracks"]  # (T, N, 6) id, cy, cx, h, w, angle; NaN where absent
    ships = [j for j in range(tracks.shape[1]) if np.nanmax(tracks[:, j, 0]) >= 1001]
    if not ships:
      continue
    gt = []
    for t in range(frames):
      rows = tracks[t, ships]
      rows = rows[np.isfinite(rows[:, 0])]
      gt.append((rows[:, 0].astype(np.int64), box_labels.from_simulator(rows[:, 1:])))
    out.append({"name": f"sim-{scene - 1:04d}", "sensor": sensor, "gt": gt,
                "frames": [r["pixels"] for r in seq["frames"]]})
  return out


def mot_sequence(config, root: str) -> list[dict[str, Any]]:
  """A MOT Challenge folder as one sequence (see the module docstring)."""
  from ringmoe_jax.data.task_pipeline import view_sensors  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.tracking import read_mot_txt, read_sequence_folder  # pylint: disable=import-outside-toplevel
  sensor = view_sensors(config.task.views[0])[0]
  paths, load = read_sequence_folder(os.path.join(root, "img1"))
  size = int(config.model.img_size)
  frames = []
  for p in paths:
    img = np.asarray(load(p), np.float32)
    if img.shape[:2] != (size, size):
      raise UserError(f"{p}: frame is {img.shape[1]}x{img.shape[0]} px; the detector takes "
                      f"{size}x{size} (model.img_size) frames")
    frames.append(img)
  gt_path = os.path.join(root, "gt", "gt.txt")
  gt = [(np.zeros(0, np.int64), np.zeros((0, 5), np.float32)) for _ in paths]
  if os.path.isfile(gt_path):
    table = read_mot_txt(gt_path)
    for t in range(len(paths)):
      ids, boxes = table.frame(t + 1)[:2]
      xyxy = np.asarray(boxes, np.float32).reshape(-1, 4)
      le90 = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                       xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1],
                       np.zeros(len(xyxy), np.float32)], 1)
      gt[t] = (np.asarray(ids, np.int64), le90)
  return [{"name": os.path.basename(os.path.normpath(root)), "sensor": sensor, "gt": gt,
           "frames": frames, "has_gt": os.path.isfile(gt_path)}]


class FrameDetector:
  """The detection run's `predict` on batches of frames (padded to the eval batch size)."""

  def __init__(self, config, workdir: str):
    # pylint: disable=import-outside-toplevel
    import jax
    from ringmoe_jax.data import task_pipeline
    from ringmoe_jax.parallel.mesh import make_mesh
    from ringmoe_jax.parallel.sharding import rules_for
    from ringmoe_jax.tasks import get_task
    from ringmoe_jax.train import init_from
    from ringmoe_jax.train.checkpoint import open_run
    from ringmoe_jax.train.evaluation import _predict_fn, eval_batch_size
    from ringmoe_jax.train.trainer import build_registry, programs
    from ringmoe_jax.errors import UserError
    task = get_task(config)
    if task.name != "detection":
      raise UserError(f"track takes a detection config (configs/finetune_detection.py), got "
                      f"task {task.name!r}")
    ckpt, step, meta = open_run(workdir, expected="a detection run")
    self.registry = build_registry(config, saved=init_from.saved_registry(meta))
    task = get_task(config, self.registry)
    self.mesh = make_mesh(config.mesh)
    setup, _ = programs(config, task, self.mesh, rules_for(config))
    state, _, _ = ckpt.restore(step, setup.builder.abstract)
    ckpt.close()
    self.params = state["params"]
    self.predict = _predict_fn(task, config, setup.builder, self.mesh)
    self.batch = eval_batch_size(config) // jax.process_count()
    self.prepare = task_pipeline.PrepareViews(self.registry, 1, int(config.model.patch_size))
    from ringmoe_jax.tasks.base import max_channels  # pylint: disable=import-outside-toplevel
    self.to_example = task_pipeline.ToTaskExample(self.registry, max_channels(config,
                                                                              self.registry))

  def __call__(self, sensor: str, frames: list[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
    """Frames (H, W, C) physical -> per frame (boxes, scores, classes) of the valid detections."""
    # pylint: disable=import-outside-toplevel
    import jax
    from ringmoe_jax.parallel.sharding import batch_sharding
    out = []
    for i in range(0, len(frames), self.batch):
      chunk = frames[i:i + self.batch]
      exs = [self.to_example.map(self.prepare.map(
          {"views": [{"sensor": sensor, "pixels": f, "valid": np.ones(f.shape[:2], bool)}],
           "name": f"frame {i + j}"})) for j, f in enumerate(chunk)]
      exs += [jax.tree.map(np.zeros_like, exs[0])] * (self.batch - len(exs))
      local = {k: np.stack([e[k] for e in exs]) for k in exs[0]}
      with jax.set_mesh(self.mesh):
        batch = {k: jax.make_array_from_process_local_data(batch_sharding(self.mesh, v.ndim), v)
                 for k, v in local.items()}
        pred = jax.device_get(self.predict(self.params, batch))
      for j in range(len(chunk)):
        keep = np.asarray(pred["valid"][j], bool)
        out.append((np.asarray(pred["boxes"][j])[keep], np.asarray(pred["scores"][j])[keep],
                    np.asarray(pred["classes"][j])[keep]))
    return out


def track(config, workdir: str | None, output: str, *, mot_root: str | None = None,
          sequences: int = 8, frames: int = 16, perfect: bool = False,
          tracker_kw: dict[str, Any] | None = None) -> dict[str, float]:
  """Tracks every sequence, writes the MOT txt files and track.json; returns the metrics."""
  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.config.validate import validate
  from ringmoe_jax.errors import UserError
  from ringmoe_jax.tracking import ByteTracker, TrackingMetrics, write_mot_txt
  from ringmoe_jax.train.evaluation import write_eval_json
  from ringmoe_jax.train.trainer import build_registry
  validate(config)
  rotated = bool(config.task.get("rotated", False))
  detector = None
  if not perfect:
    if not workdir:
      raise UserError("--workdir is required (the detection run) unless --perfect_detections")
    detector = FrameDetector(config, workdir)
    registry = detector.registry
  else:
    registry = build_registry(config)
  seqs = (mot_sequence(config, mot_root) if mot_root else
          simulated_sequences(config, registry, sequences, frames))
  os.makedirs(output, exist_ok=True)
  metrics = TrackingMetrics()
  has_gt = False
  for seq in seqs:
    if perfect:
      dets = [(b if rotated else _hbox(b), np.ones(len(b), np.float32),
               np.zeros(len(b), np.int32)) for _, b in seq["gt"]]
    else:
      dets = detector(seq["sensor"], seq["frames"])
    tracker = ByteTracker(**(tracker_kw or {}))
    outputs = tracker.track_sequence([{"boxes": b, "scores": s, "classes": c}
                                      for b, s, c in dets])
    tmp = os.path.join(output, seq["name"] + ".txt.tmp")
    write_mot_txt(tmp, outputs)
    os.replace(tmp, os.path.join(output, seq["name"] + ".txt"))  # never a half-written file
    if seq.get("has_gt", True):
      has_gt = True
      for (ids, boxes), out in zip(seq["gt"], outputs):
        metrics.update_tracks(ids, boxes, out, sequence=seq["name"])
  result = metrics.compute() if has_gt else {}
  write_eval_json(os.path.join(output, "track.json"), result,
                  {"task": "tracking", "workdir": workdir, "sequences": [s["name"] for s in seqs],
                   "perfect_detections": perfect})
  return result


def _hbox(le90: np.ndarray) -> np.ndarray:
  from ringmoe_jax.data import box_labels  # pylint: disable=import-outside-toplevel
  return box_labels.envelope(le90).astype(np.float32)


def main(argv):
  del argv
  from ringmoe_jax.errors import run_cli  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  kw = dict(high_score=f.high_score, low_score=f.low_score, new_track_score=f.new_track_score,
            max_lost=f.max_lost, association=f.association)
  result = run_cli(lambda: track(f.config, f.workdir, f.output, mot_root=f.mot_root,
                                 sequences=f.sequences, frames=f.frames,
                                 perfect=f.perfect_detections, tracker_kw=kw))
  for k in ("mota", "idf1", "hota", "id_switches"):
    if k in result:
      print(f"{k}={result[k]:.6g}", flush=True)
  for k in sorted(set(result) - {"mota", "idf1", "hota", "id_switches"}):
    print(f"{k}={result[k]:.6g}", flush=True)


def define_flags() -> None:
  """The CLI's flags, defined only when it runs (importing `track` must not collide with the
  flags of other entry points, e.g. evaluate's --config, in one process)."""
  config_flags.DEFINE_config_file("config", None, "The detection run's config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "The detection fine-tuning run's workdir.")
  flags.DEFINE_string("output", None, "Output folder (MOT txt per sequence, track.json).")
  flags.DEFINE_string("mot_root", None, "A MOT Challenge sequence folder (img1/, gt/gt.txt).")
  flags.DEFINE_integer("sequences", 8, "Simulated sequences (held-out scenes with ships).")
  flags.DEFINE_integer("frames", 16, "Frames per simulated sequence.")
  flags.DEFINE_bool("perfect_detections", False, "Track the ground-truth boxes (score 1).")
  flags.DEFINE_float("high_score", 0.5, "ByteTrack first-association score.")
  flags.DEFINE_float("low_score", 0.1, "ByteTrack second-association floor.")
  flags.DEFINE_float("new_track_score", 0.6, "Score that starts a track.")
  flags.DEFINE_integer("max_lost", 30, "Frames a lost track survives.")
  flags.DEFINE_string("association", "iou", "iou | center (centre distance, tiny targets).")
  flags.mark_flags_as_required(["config", "output"])


if __name__ == "__main__":
  from ringmoe_jax.errors import parse_absl_flags  # pylint: disable=import-outside-toplevel
  define_flags()
  app.run(main, flags_parser=parse_absl_flags)
