"""Entry point: python -m ringmoe_jax.main --config=configs/pretrain_tiny.py --workdir=DIR

Config variants after a colon (`--config=configs/pretrain_14b.py:size=base`) and field
overrides (`--config.train.total_steps=50`) as in ml_collections.
"""
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a config file (get_config(arg)).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics (resumed if present).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from ringmoe_jax.train.trainer import train  # after flags: keeps --help fast
  train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
