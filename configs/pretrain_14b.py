r"""RingMoE pre-training at the paper's size: SwinV2-G (embed 448, depths 2-2-18-2, heads
14-28-56-112, window 12, 192 px input) with the hierarchical MoE (4 modality-specialised experts
per modality, 4 collaborative, 1 shared) in all 24 blocks: 14.75B parameters.

Count it without allocating anything (here it is only ever built with jax.eval_shape):

  python -m ringmoe_jax.tools.inspect --config=configs/pretrain_14b.py

prints `total_params=14...` (14.75B, the paper's 14.7B within 1%).

Variants (`--config=configs/pretrain_14b.py:ARG`):
  size=14b    the paper's model (default)
  size=base   embed 128, depths 2-2-18-2, heads 4-8-16-32 (SwinV2-B with the same MoE; 1.21B
              parameters: with AdamW state ~20 GB before activations)
  size=small  embed 96, depths 2-2-6-2, heads 3-6-12-24 (SwinV2-T with the same MoE; fits a
              24 GB CPU host for benchmarks/train_step.py)
  runlocal    shrink the batch, steps and data so the config runs on one CPU host

Choices the paper leaves open: global batch 2048 (lr scales from 2.5e-4 per 512), bfloat16
compute with float32 master weights, 300k steps, warm-up 10k.

Parallelism: mesh fsdp=64 x expert=4 x data=(rest) with the 'fsdp_expert' preset: on 256 chips
(v5p-256) data=1, on 512 (the paper's count) data=2. Parameters and optimiser state are split
256 ways (experts over `expert`, model dims over `fsdp`), the batch over all chips. Each stage's
blocks are scanned in pairs and rematerialised ('full') in the backward pass. Check a mesh before
renting it:  python -m ringmoe_jax.tools.aot --config=configs/pretrain_14b.py --devices=512
"""
from ringmoe_jax.config.args import check_choice, parse_arg
from ringmoe_jax.config.defaults import base_config

SIZES = {
    "14b": dict(embed_dim=448, depths=(2, 2, 18, 2), num_heads=(14, 28, 56, 112)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "small": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
}


def get_config(arg=None):
  a = parse_arg(arg, size="14b", runlocal=False)
  check_choice(a, "size", SIZES)
  c = base_config()
  c.model.update(img_size=192, window_size=12, dtype="bfloat16", param_dtype="float32",
                 **SIZES[a["size"]])
  c.data.update(batch_size=2048, tile_size=256, num_tiles=400_000_000)
  c.train.update(total_steps=300_000, log_every=100, checkpoint_every=2000)
  c.mesh.update(data=-1, fsdp=64, expert=4, tensor=1, route_per_shard=True)
  c.sharding_preset = "fsdp_expert"
  c.remat.update(policy="full", scan_blocks=True)
  if a["runlocal"]:
    c.mesh.update(data=-1, fsdp=1, expert=1, tensor=1)
    c.data.update(batch_size=8, num_tiles=1024)
    c.train.update(total_steps=10, log_every=1, checkpoint_every=5)
    c.optim.warmup_steps = 2
  return c
