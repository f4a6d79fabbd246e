"""Evaluate a fine-tuning run on its held-out split.

  python -m ringmoe_jax.evaluate --config=configs/finetune_<task>.py --workdir=DIR [--step=N]

Loads the run's checkpoint (latest, or --step) on this machine's devices (any mesh), runs the
eval split once, prints one `name=value` line per metric (main metric first) and writes
DIR/eval.json ({"task", "step", "main_metric", "metrics": {...}}; undefined metrics null).
Exit status 2 with one `error: ...` line for a bad config or a workdir without a checkpoint.
"""
from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "The run's config file (get_config(arg)).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The fine-tuning run's workdir.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_string("output", None, "Where to write eval.json (default: WORKDIR/eval.json).")
flags.mark_flags_as_required(["config", "workdir"])


def evaluate(config, workdir: str, step: int | None = None,
             output: str | None = None) -> dict[str, float]:
  """Metrics of the checkpoint of `workdir` (see the module docstring); writes eval.json."""
  import jax  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.config.validate import validate  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.parallel.mesh import make_mesh  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.parallel.sharding import rules_for  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.tasks import get_task  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train import init_from  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.checkpoint import open_run  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.evaluation import evaluate_state, write_eval_json  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.trainer import build_registry, programs  # pylint: disable=import-outside-toplevel

  validate(config)
  task = get_task(config)
  if task.name == "pretrain":
    raise UserError("evaluate takes a fine-tuning config (configs/finetune_*.py); pre-trained "
                    "encoders are evaluated with python -m ringmoe_jax.tools.linear_probe")
  ckpt, step, meta = open_run(workdir, step=step, expected="a fine-tuning run")
  if meta.get("task", task.name) != task.name:
    raise UserError(f"--workdir={workdir} is a {meta.get('task')!r} run but the config's task "
                    f"is {task.name!r}")
  registry = build_registry(config, saved=init_from.saved_registry(meta))
  task = get_task(config, registry)
  mesh = make_mesh(config.mesh)
  setup, _ = programs(config, task, mesh, rules_for(config))  # a training run's, if in-process
  state, _, _ = ckpt.restore(step, setup.builder.abstract)
  ckpt.close()
  metrics = evaluate_state(task, config, setup.builder, state, registry, mesh)
  if jax.process_index() == 0:
    names = [task.main_metric] + sorted(k for k in metrics if k != task.main_metric)
    for k in names:
      print(f"{k}={metrics[k]:.6g}", flush=True)
    write_eval_json(output or os.path.join(workdir, "eval.json"), metrics,
                    {"task": task.name, "step": step, "main_metric": task.main_metric,
                     "workdir": os.path.abspath(workdir)})
  return metrics


def main(argv):
  del argv
  from ringmoe_jax.errors import run_cli  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  run_cli(lambda: evaluate(f.config, f.workdir, f.step, f.output))


if __name__ == "__main__":
  from ringmoe_jax.errors import parse_absl_flags  # pylint: disable=import-outside-toplevel
  app.run(main, flags_parser=parse_absl_flags)
