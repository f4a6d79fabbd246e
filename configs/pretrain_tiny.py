r"""RingMoE pre-training, tiny: the full system (4 modalities, hierarchical MoE in every block,
SimMIM) at a size that trains on one laptop CPU in minutes, on the built-in synthetic tiles.

  python -m ringmoe_jax.main --config=configs/pretrain_tiny.py --workdir=/tmp/ringmoe_tiny

Expected (2-core CPU, 2026-11): 300 steps in about 4-5 minutes, progress lines
`step=300 loss=...`, the last logged loss below 70% of the first (the run prints both, about
0.4x). Variants (`--config=configs/pretrain_tiny.py:ARG`):
  steps=N       total steps (default 300)
  batch=N       global batch (default 32)
  dense         num_special=num_collab=0 (shared FFN only): the dense baseline
Any field can be overridden too, e.g. `--config.moe.top_k=2 --config.train.total_steps=50`.

Choices the paper does not fix at this size: 64 px crops (tiles 80 px), embed 32, depths
(2,2,2,2), window 4, 16 px mask cells (32 px cells would leave 4 cells per 64 px tile), and a
learning rate of 1e-3 (the paper's 2.5e-4 per 512 is for a 14.7B model and 400M tiles).
"""
from ringmoe_jax.config.args import parse_arg
from ringmoe_jax.config.defaults import base_config


def get_config(arg=None):
  a = parse_arg(arg, steps=300, batch=32, dense=False)
  c = base_config()
  c.model.update(img_size=64, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16),
                 window_size=4, cpb_hidden=64)
  if a["dense"]:
    c.moe.update(num_special=0, num_collab=0)
  c.mim.mask_cell = 16
  c.data.update(num_tiles=4096, tile_size=80, batch_size=a["batch"])
  c.optim.update(base_lr=1e-3, base_batch=a["batch"], warmup_steps=20)
  c.train.update(total_steps=a["steps"], log_every=10, checkpoint_every=100)
  return c
