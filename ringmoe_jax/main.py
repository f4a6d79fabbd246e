"""Entry point: python -m ringmoe_jax.main --config=configs/pretrain_tiny.py --workdir=DIR

Config variants after a colon (`--config=configs/pretrain_14b.py:size=base`) and field
overrides (`--config.train.total_steps=50`) as in ml_collections.

Multi-host: on a Cloud TPU pod or under SLURM nothing extra is needed; elsewhere pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID). See ringmoe_jax/parallel/distributed.py and launch/.

Exit status: 0 when training finished (or stopped by a signal with the default
--exit_code_on_preempt=0); --exit_code_on_preempt after SIGTERM/SIGINT made the run save and
stop (the launch scripts pass 42 so a scheduler can requeue); 2 on a configuration or input error
(a bad flag, config variant or field, sensor, data path: one `error: ...` line); 1 on any other
error, with its traceback, including NonFiniteLossError (train.max_consecutive_nonfinite NaN/Inf
steps in a row).
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from ringmoe_jax.errors import parse_absl_flags, run_cli

config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config(arg)).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics (resumed if present).")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
flags.DEFINE_integer("exit_code_on_preempt", 0,
                     "Exit status after a signal-triggered save (launch/ scripts use 42).")
flags.DEFINE_bool("reuse_host_memory", False,
                  "CPU runs with large buffers (many experts, big batches): keep freed host memory "
                  "mapped so that each step's large buffers do not page-fault again. Off by "
                  "default: it puts every thread on one malloc arena, which slowed the tiny run "
                  "2.3x (glibc only; see ringmoe_jax/parallel/host_memory.py).")
flags.mark_flags_as_required(["config", "workdir"])


def _train():
  from absl import logging  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.parallel import distributed, host_memory  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  if f.reuse_host_memory:
    logging.info("%s", host_memory.reuse_freed_memory())
  # Before anything touches jax devices.
  distributed.initialize(coordinator_address=f.coordinator_address,
                         num_processes=f.num_processes, process_id=f.process_id)
  from ringmoe_jax.train.trainer import train  # after flags: keeps --help fast
  return train(f.config, f.workdir)


def main(argv):
  del argv
  # A config or input error: one 'error: ...' line and exit status 2 (ringmoe_jax/errors.py).
  result = run_cli(_train)
  if result.get("stopped_by_signal") is not None:
    sys.exit(flags.FLAGS.exit_code_on_preempt)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_absl_flags)
