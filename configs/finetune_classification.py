r"""Scene classification fine-tuning (single-label by default; `multilabel` for sigmoid BCE).

  python -m ringmoe_jax.main --config=configs/finetune_classification.py \
      --config.init_checkpoint=/tmp/ringmoe_tiny --workdir=/tmp/ft_cls
  python -m ringmoe_jax.evaluate --config=configs/finetune_classification.py --workdir=/tmp/ft_cls

On simulated scenes (7 land-cover classes; the label is a tile's dominant class), tiles of an
optical, a multispectral and a SAR sensor mixed. Prints `parameters: trainable ... / total ...`,
`step=<n> loss=... task_loss=... accuracy=...` every 10 steps, `eval step=<n> oa=...` every
100 and at the end; evaluate prints `oa=...`, `macro_f1=...`, per-class `acc/<class>=...` and
writes WORKDIR/eval.json. Without init_checkpoint: the from-scratch baseline.
Variants (`:ARG`, comma-separated): size=tiny|14b, mode=full|frozen|adapter, steps=N (300),
multilabel (classes covering >= 5% of a tile; metrics mAP macro / micro, F1@0.5).
"""
from ringmoe_jax.config.args import parse_arg
from ringmoe_jax.config.finetune import finetune_config

VIEWS = ("gaofen2_pms", "gaofen1_wfv", "gaofen3_amp")


def get_config(arg=None):
  a = parse_arg(arg, size="tiny", mode="full", steps=300, multilabel=False)
  c = finetune_config("classification", VIEWS, a)
  c.task.multilabel = bool(a["multilabel"])
  return c
