r"""Height (nDSM) regression fine-tuning: adaptive-bins head on the multi-level features.

  python -m ringmoe_jax.main --config=configs/finetune_height.py \
      --config.init_checkpoint=/tmp/ringmoe_tiny --workdir=/tmp/ft_height
  python -m ringmoe_jax.evaluate --config=configs/finetune_height.py --workdir=/tmp/ft_height

Simulated Gaofen-2 tiles with building (6-60 m) and canopy (2-15 m) heights, 0 m elsewhere.
Balanced L1 (above / below `task.min_height`, each averaged; `task.loss=l1|silog`). Prints
`step=<n> loss=... mae=...`, `eval step=<n> delta1=...`; evaluate prints `delta1`, `abs_rel`,
`sq_rel`, `rmse`, `rmse_log`, `delta2`, `delta3`, `silog`, over pixels of 1-64 m.
Variants: size=tiny|14b, mode=full|frozen|adapter, steps=N (300).
"""
from ringmoe_jax.config.args import parse_arg
from ringmoe_jax.config.finetune import finetune_config


def get_config(arg=None):
  a = parse_arg(arg, size="tiny", mode="full", steps=300)
  c = finetune_config("height", ("gaofen2_pms",), a)
  c.task.num_classes = 1
  c.task.class_names = ()
  return c
