r"""Change detection fine-tuning: Siamese encoder + BIT-style token head on before / after pairs.

  python -m ringmoe_jax.main --config=configs/finetune_change_detection.py \
      --config.init_checkpoint=/tmp/ringmoe_tiny --workdir=/tmp/ft_cd
  python -m ringmoe_jax.evaluate --config=configs/finetune_change_detection.py --workdir=/tmp/ft_cd

Simulated scenes at two epochs (buildings demolished and built). `pair=optical` (default):
Gaofen-2 before and after; `pair=cross`: Gaofen-2 optical before, Gaofen-3 SAR after (the
emergency-response case). Prints `step=<n> loss=... dice_loss=...`, `eval step=<n> f1=...`;
evaluate prints the change class's `f1`, `iou`, `precision`, `recall`, `oa`.
Variants: size=tiny|14b, mode=full|frozen|adapter, steps=N (300), pair=optical|cross.
"""
from ringmoe_jax.config.args import parse_arg
from ringmoe_jax.config.finetune import finetune_config
from ringmoe_jax.errors import UserError

PAIRS = {"optical": ("gaofen2_pms",), "cross": ("gaofen2_pms+gaofen3_amp",)}


def get_config(arg=None):
  a = parse_arg(arg, size="tiny", mode="full", steps=300, pair="optical")
  if a["pair"] not in PAIRS:
    raise UserError(f"pair={a['pair']!r}; expected one of {tuple(PAIRS)}")
  c = finetune_config("change_detection", PAIRS[a["pair"]], a)
  c.task.num_classes = 2
  c.task.class_names = ("no_change", "change")
  # CE weight of a change pixel: change covers ~4% of the simulated pixels (make_scene: 25% of
  # buildings new, 25% demolished); weighted ~ the inverse frequency ratio, softened.
  c.task.change_weight = 5.0
  return c
