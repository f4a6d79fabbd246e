r"""Semantic segmentation fine-tuning: UperNet on fused optical + SAR views of one place.

  python -m ringmoe_jax.main --config=configs/finetune_segmentation.py \
      --config.init_checkpoint=/tmp/ringmoe_tiny --workdir=/tmp/ft_seg
  python -m ringmoe_jax.evaluate --config=configs/finetune_segmentation.py --workdir=/tmp/ft_seg

Simulated scenes, 7 classes (water, vegetation, bare soil, building, road, field, ship); each
record is a Gaofen-2 optical tile and a Gaofen-3 SAR tile of the same ground (`fusion=off`: the
optical tile alone). Prints `step=<n> loss=... pixel_accuracy=...`, `eval step=<n> miou=...`;
evaluate prints `miou=...`, `mf1=...`, `oa=...`, per-class `iou/<class>=...`.
Variants: size=tiny|14b, mode=full|frozen|adapter, steps=N (300), fusion=on|off.
`size=14b` compiles for a pod: python -m ringmoe_jax.tools.aot
--config=configs/finetune_segmentation.py:size=14b --devices=256
"""
from ringmoe_jax.config.args import parse_arg
from ringmoe_jax.config.finetune import finetune_config


def get_config(arg=None):
  a = parse_arg(arg, size="tiny", mode="full", steps=300, fusion="on")
  views = ("gaofen2_pms+gaofen3_amp",) if a["fusion"] in ("on", True) else ("gaofen2_pms",)
  return finetune_config("segmentation", views, a)
