r"""The config of a pruned workdir (the output of `python -m ringmoe_jax.prune`), for the
commands that take `--config=FILE.py`:

  python -m ringmoe_jax.tools.linear_probe --config=configs/pruned.py:DIR --workdir=DIR
  python -m ringmoe_jax.evaluate --config=configs/pruned.py:DIR --workdir=DIR   # a fine-tuning run
  python -m ringmoe_jax.main --config=configs/pruned.py:DIR --workdir=DIR \
      --config.train.total_steps=<step + N> --config.optim.schedule_steps=N   # continue training
  python -m ringmoe_jax.tools.inspect --config=DIR/config.json

ARG: the pruned workdir (its config.json, the smaller model's config as the transform wrote it)
or a config.json itself. Fine-tuning from a pruned pre-training run takes
`configs/finetune_*.py` with `--config.init_checkpoint=DIR` plus the encoder fields of
DIR/prune_plan.json's config_overrides instead.
"""
import os

from ringmoe_jax.errors import UserError


def get_config(arg=None):
  if not arg:
    raise UserError("configs/pruned.py needs the pruned workdir: --config=configs/pruned.py:DIR")
  path = arg if arg.endswith(".json") else os.path.join(arg, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"configs/pruned.py:{arg}: no {path} (expected the --output of "
                    "python -m ringmoe_jax.prune)")
  from ringmoe_jax.prune.plan import load_config_json  # pylint: disable=import-outside-toplevel
  return load_config_json(path)
