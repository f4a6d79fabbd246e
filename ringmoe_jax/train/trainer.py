"""The training loop of every task (pre-training and fine-tuning), top to bottom: config, task,
mesh, input, model + optimizer, state, checkpoint / resume (or the encoder of a pre-training run:
`init_checkpoint`), loop (log, evaluate, checkpoint, stop on a signal).

The task (`config.task.name`, tasks/) gives the model, loss, data and metrics; everything else
is shared. Fine-tuning evaluates on the held-out split every `train.eval_every` steps (and at
the end), logged as `eval/<metric>` in metrics.jsonl / TensorBoard.

Faults:
- SIGINT / SIGTERM (a preemption notice) ask the loop to stop: it finishes the current step,
  saves a checkpoint and returns with `stopped_by_signal` set; `ringmoe_jax.main` then exits
  with `--exit_code_on_preempt` (default 0; the launch scripts use 42 = EXIT_PREEMPTED so a
  scheduler can requeue). A rerun with the same workdir resumes bit-identically.
- A step with a NaN/Inf loss or gradient is skipped inside the jitted step (step.py) and
  counted (`skipped_steps`). When `train.max_consecutive_nonfinite` of them come in a row, the
  run stops with `NonFiniteLossError` at the next logging or checkpoint step, without saving.
- A checkpoint whose (async) save was killed is never restored (checkpoint.py).

Profiling: `train.profile_steps=(first, last)` writes a JAX profiler trace of those steps to
WORKDIR/profile (TensorBoard / XProf format plus perfetto_trace.json.gz);
`python -m ringmoe_jax.tools.profile_summary WORKDIR/profile` prints self time per HLO op.
"""
from __future__ import annotations

import collections
import json
import os
import signal
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from ringmoe_jax.config.validate import validate
from ringmoe_jax.data import pipeline as pipeline_lib
from ringmoe_jax.parallel.mesh import make_mesh
from ringmoe_jax.parallel.sharding import batch_sharding, rules_for
from ringmoe_jax.sensors.modalities import MODALITIES
from ringmoe_jax.sensors.registry import default_registry
from ringmoe_jax.train.checkpoint import Checkpointer
from ringmoe_jax.train.metrics_log import MetricWriter
from ringmoe_jax.tasks import get_task
from ringmoe_jax.train import init_from
from ringmoe_jax.train.evaluation import evaluate_state
from ringmoe_jax.train.setup import make_builder
from ringmoe_jax.train.step import make_train_step


EXIT_PREEMPTED = 42  # suggested exit status after a signal-triggered save (launch/ scripts)


def poison_batch(batch: dict[str, Any]) -> dict[str, Any]:
  """Fault injection (train.inject_nonfinite_steps): the batch with NaN pixels, as a corrupt
  read past validation would give; the loss and gradients of its step come out NaN. Done on
  the host, so the compiled step is the same as in a clean run."""
  return {**batch, "pixels": np.full_like(batch["pixels"], np.nan)}


class NonFiniteLossError(FloatingPointError):
  """Too many consecutive steps with a NaN/Inf loss or gradient."""


class _StopFlag:
  """Set by SIGINT/SIGTERM; a second signal interrupts at once."""

  def __init__(self):
    self.signum = None
    self._old = {}

  def __enter__(self):
    for s in (signal.SIGINT, signal.SIGTERM):
      try:
        self._old[s] = signal.signal(s, self._handle)
      except ValueError:  # not the main thread (e.g. called from a test thread)
        pass
    return self

  def _handle(self, signum, frame):
    if self.signum is not None:
      raise KeyboardInterrupt
    self.signum = signum
    print(f"received signal {signum}: saving at the end of this step", flush=True)

  def __exit__(self, *exc):
    for s, h in self._old.items():
      signal.signal(s, h)


# Programs of recent runs, by everything they depend on: a second run of the same config on the
# same mesh in this process (a resume, a test, an evaluation sweep) reuses the traced and
# compiled step instead of spending ~20 s re-tracing the same program. Small: each entry holds
# compiled executables.
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_PROGRAMS_MAX = 8


# Keys the host loop reads and the programs do not (total_steps only where optim.schedule_steps
# fixes the schedule); init_checkpoint only chooses the initial values.
_HOST_ONLY_TRAIN_KEYS = ("log_every", "checkpoint_every", "eval_every", "max_to_keep",
                         "async_checkpoint", "inject_nonfinite_steps", "profile_steps",
                         "max_consecutive_nonfinite")


def _program_key(config, task, mesh) -> str:
  # The registry is part of the program: the sensor ids of the batches index tables built from it.
  c = json.loads(config.to_json_best_effort())
  for k in _HOST_ONLY_TRAIN_KEYS:
    c["train"].pop(k, None)
  if int(config.optim.get("schedule_steps", 0) or 0):
    c["train"].pop("total_steps", None)
  c.pop("init_checkpoint", None)
  reg = None if task.registry is None else json.loads(task.registry.to_json())
  return json.dumps([task.name, c, reg,
                     [int(d.id) for d in mesh.devices.flat], list(mesh.axis_names),
                     list(mesh.devices.shape)])


def programs(config, task, mesh, rules):
  """(Setup, train_step) of `config` on `mesh`, built once per process and reused."""
  key = _program_key(config, task, mesh)
  if key in _PROGRAMS:
    _PROGRAMS.move_to_end(key)
    return _PROGRAMS[key]
  setup = make_builder(config, task, mesh, rules)
  train_step = make_train_step(setup.builder, config, task=task, trainable=setup.trainable)
  _PROGRAMS[key] = found = (setup, train_step)
  while len(_PROGRAMS) > _PROGRAMS_MAX:
    _PROGRAMS.popitem(last=False)
  return found


def build_registry(config, saved=None):
  """The training sensor registry; checks the sensors in use against model.in_channels.

  The default registry, + config.data.sensor_files, + the sensors that the manifests of
  arrayrecord data.paths (ingestion directories or shard files) define. With `saved` (the
  SensorRegistry of a checkpoint's meta) the result keeps saved's sensors with their ids and
  appends the new ones (`merge_registries`: a name defined differently keeps the saved one).
  The sensors in use are data.sensors, or for arrayrecord with data.sensors empty the shards'.
  """
  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.config.validate import ConfigError
  from ringmoe_jax.data import sources
  from ringmoe_jax.sensors.registry import UnknownSensorError, merge_registries
  d = config.data
  reg = default_registry()
  for path in d.sensor_files:
    reg.load_file(path)
  in_use = tuple(d.sensors)
  if d.get("source") == "arrayrecord" and d.get("paths"):
    found = sources.sensors_in(d.paths, reg)
    in_use = in_use or found
  if saved is not None:
    reg = merge_registries(saved, reg)
  for name in in_use:
    try:
      sensor = reg.get(name)
    except UnknownSensorError as e:
      raise UnknownSensorError(f"data.sensors: {e}") from None
    want = int(config.model.in_channels[sensor.modality])
    # The spectral patch embedding takes any band set (model.patch_embed, models/patch_embed.py).
    if sensor.num_channels != want and config.model.get("patch_embed", "fixed") != "spectral":
      raise ConfigError(f"sensor {name!r} ({sensor.modality}) has {sensor.num_channels} "
                        f"channels but model.in_channels.{sensor.modality} is {want}; set "
                        "--config.model.patch_embed=spectral (any band set per modality), "
                        f"--config.model.in_channels.{sensor.modality}={sensor.num_channels}, "
                        "or ingest a band subset of the sensor (--bands)")
  return reg


def make_data(config, registry, task=None):
  """The training iterator: the task's data, this process's shard, batches of
  data.batch_size / process_count examples."""
  task = get_task(config) if task is None else task
  ds = task.make_dataset(config, registry, "train",
                         batch_size=config.data.batch_size // jax.process_count(),
                         shard_index=jax.process_index(), shard_count=jax.process_count())
  return pipeline_lib.make_iterator(ds, num_workers=config.data.num_workers)


_SHORT = {"recon_loss": "recon", "balance_loss": "balance"}  # pre-training's printed names


class _Throughput:
  """steps/s and ETA measured from the end of the first (compiling) step of this run."""

  def __init__(self, step: int):
    self.first_step = step
    self.t0 = None

  def tick(self, step: int, device_step) -> None:
    if self.t0 is None:
      jax.block_until_ready(device_step)  # once: exclude compilation from the rate
      self.t0, self.s0 = time.time(), step

  def rate(self, step: int) -> float:
    dt = time.time() - self.t0
    return (step - self.s0) / dt if dt > 0 and step > self.s0 else float("nan")

  def eta(self, step: int, total: int) -> str:
    r = self.rate(step)
    if not np.isfinite(r) or r <= 0:
      return "?"
    sec = int((total - step) / r)
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m{sec % 60:02d}s"


def train(config, workdir: str, *, max_steps_this_run: int | None = None) -> dict[str, Any]:
  """Runs (or resumes) the config's task to config.train.total_steps; returns final metrics.

  max_steps_this_run: stop (with a checkpoint) after this many steps, e.g. to fit a job into a
  time slot; the next call resumes exactly where this one stopped.
  """
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  primary = jax.process_index() == 0
  task = get_task(config)

  # Mesh.
  mesh = make_mesh(config.mesh)
  rules = rules_for(config)

  # Checkpoints: our own (resume) or, for a fresh fine-tune, a pre-training run's encoder.
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                      max_to_keep=config.train.max_to_keep,
                      async_save=config.train.async_checkpoint)
  latest = ckpt.latest_step()
  init_dir = str(config.get("init_checkpoint", "") or "")
  source_run = None
  if latest is not None:
    saved = init_from.saved_registry(ckpt.read_meta(latest))
  elif init_dir:
    source_run = init_from.PretrainedRun(init_dir)
    saved = init_from.saved_registry(source_run.meta)
  else:
    saved = None

  # Input. The registry saved with the checkpoint wins (stable sensor ids and normalisation).
  registry = build_registry(config, saved=saved)
  task = get_task(config, registry)  # the model's and objective's sensor tables: this registry
  data_iter = make_data(config, registry, task)

  # Model, optimizer, state on the mesh.
  total = config.train.total_steps
  setup, train_step = programs(config, task, mesh, rules)
  builder = setup.builder
  if primary:
    print(setup.describe(), flush=True)
    print(f"checkpoints: {ckpt.directory} (every {config.train.checkpoint_every} steps and at "
          "the end)", flush=True)

  # Inputs of every step that do not train (a distillation teacher's params): loaded once.
  frozen = task.frozen_inputs(mesh, rules) if hasattr(task, "frozen_inputs") else None
  if frozen is not None and primary:
    print(f"teacher: {task.teacher.describe()} (frozen, not checkpointed)", flush=True)

  if latest is not None:
    state, data_state, _ = ckpt.restore(latest, builder.abstract)
    data_iter.set_state(data_state)
    print(f"resumed from step {int(state['step'])}", flush=True)
  else:
    state = builder.init()
    if source_run is not None:
      state = source_run.load_encoder_into(state, builder, config)
      print(f"encoder from {source_run.describe()}", flush=True)

  meta = {"config": json.loads(config.to_json_best_effort()), "task": task.name,
          "init_checkpoint": None if source_run is None else source_run.describe(),
          "sensors": json.loads(registry.to_json()),
          "modalities": list(MODALITIES)}

  max_bad = int(config.train.get("max_consecutive_nonfinite", 3))
  inject = {int(s) for s in config.train.get("inject_nonfinite_steps", ())}

  def check_finite(streak: int, step_: int) -> None:
    if streak >= max_bad:
      raise NonFiniteLossError(
          f"{streak} consecutive steps with a NaN/Inf loss or gradient (up to step {step_}, "
          f"train.max_consecutive_nonfinite={max_bad}); their updates were skipped and no "
          f"checkpoint was written after them. Resume from the last checkpoint "
          f"({ckpt.latest_step()}) with a lower learning rate or check the data.")

  def save(step_: int, force=False):
    # Never persist a state after a run of non-finite steps (a small host sync per save).
    check_finite(int(jax.device_get(state["max_nonfinite_streak"])), step_)
    meta["routing_counts"] = jax.tree.map(lambda x: np.asarray(x).tolist(),
                                          state["routing_counts"])
    # Every process saves (Orbax writes each process's shards of the state). The JSON data
    # item comes from process 0: all processes' iterators are at the same position (SPMD) and
    # the position does not depend on the shard, so each process restores its own shard there.
    ckpt.save(step_, state, data_iter.get_state(), meta, force=force)

  writer = MetricWriter(workdir, is_primary=primary)
  eval_every = int(config.train.get("eval_every", 0) or 0) if task.name != "pretrain" else 0
  eval_metrics: dict[str, float] = {}
  step = int(state["step"])
  stop_at = total if max_steps_this_run is None else min(total, step + max_steps_this_run)
  losses: list[float] = []
  timer = _Throughput(step)
  host_metrics: dict[str, Any] = {}
  profile = config.train.get("profile_steps", None)
  profiling = False
  with _StopFlag() as stop, jax.set_mesh(mesh):
    while step < stop_at and stop.signum is None:
      if profile and step + 1 == int(profile[0]) and not profiling:
        # The Perfetto JSON copy is what tools/profile_summary reads (no TensorBoard needed).
        jax.profiler.start_trace(os.path.join(workdir, "profile"), create_perfetto_trace=True)
        profiling = True
      local = next(data_iter)
      if step in inject:
        local = poison_batch(local)
      # Every key of the pipeline's batch, split over the batch axes of the mesh.
      batch = {k: jax.make_array_from_process_local_data(
                   batch_sharding(mesh, np.ndim(v)), np.asarray(v)) for k, v in local.items()}
      state, metrics = train_step(state, batch, frozen)
      step += 1
      timer.tick(step, state["step"])
      if profiling and (step >= int(profile[1]) or step == stop_at):
        jax.block_until_ready(state["step"])
        jax.profiler.stop_trace()
        profiling = False
        print(f"profile of steps {profile[0]}..{step} in {workdir}/profile", flush=True)
      if step % config.train.log_every == 0 or step in (stop_at, timer.first_step + 1):
        host_metrics = jax.device_get(metrics)
        loss = float(host_metrics["loss"])
        check_finite(int(host_metrics["max_nonfinite_streak"]), step)
        if not np.isfinite(loss) and primary:
          print(f"step={step}: loss {loss}, update skipped "
                f"({int(host_metrics['skipped_steps'])} skipped so far)", flush=True)
        losses.append(loss)
        host_metrics["steps_per_sec"] = timer.rate(step)
        writer.write(step, host_metrics)
        if primary:
          shown = " ".join(f"{_SHORT.get(k, k)}={float(host_metrics[k]):.4f}"
                           for k in task.log_keys if k in host_metrics)
          print(f"step={step} loss={loss:.4f} {shown} "
                f"steps/s={timer.rate(step):.2f} eta={timer.eta(step, total)}", flush=True)
      if eval_every and (step % eval_every == 0 or step == total):
        eval_metrics = evaluate_state(task, config, builder, state, registry, mesh)
        writer.write(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
        if primary:
          print(f"eval step={step} {task.main_metric}={eval_metrics[task.main_metric]:.4f}",
                flush=True)
      if step % config.train.checkpoint_every == 0 or step == stop_at:
        save(step)
    if stop.signum is not None and ckpt.latest_step() != step:
      save(step, force=True)
      print(f"stopped by signal {stop.signum} at step {step}; checkpoint saved", flush=True)
  if profiling:
    jax.profiler.stop_trace()
  ckpt.close()
  writer.close()
  if primary and losses:
    print(f"first_loss={losses[0]:.4f} last_loss={losses[-1]:.4f} "
          f"ratio={losses[-1] / losses[0]:.3f}", flush=True)
  return {"step": step, "losses": losses, "metrics": host_metrics, "state": state,
          "eval": eval_metrics, "stopped_by_signal": stop.signum}
