r"""Cost of the spectral patch embedding: the full pre-training step, 'spectral' vs 'fixed'.

  python benchmarks/patch_embed.py [--config=configs/pretrain_tiny.py] [--batch=16] [--rounds=5]

Both variants train on the same batch (one co-registration group of the config's pipeline,
repeated to --batch tiles: every sensor of the config's mix), on one device. Each step is
compiled first, then the two are timed round-robin, best of --rounds (benchmarks/_timing.py), so
load on the shared host hits both alike. 'spectral' generates every (sensor, channel) kernel
from the band descriptions in each step (a small MLP over the band table) and applies a
per-tile kernel (a batched einsum instead of one matmul); 'fixed' applies one kernel per
modality. Prints both step times, the parameter counts and the last line
  headline: spectral/fixed=<step-time ratio> params_spectral/fixed=<ratio>
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks._timing import best_of  # noqa: E402

VARIANTS = ("fixed", "spectral")


def _stepper(config_spec: str, patch_embed: str, batch_size: int):
  """(thunk running one donated train step, parameter count) of the variant."""
  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.config.load import load_config
  from ringmoe_jax.parallel.mesh import make_mesh
  from ringmoe_jax.parallel.sharding import rules_for
  from ringmoe_jax.tools.aot import example_batch
  from ringmoe_jax.train.optim import make_optimizer
  from ringmoe_jax.train.state import StateBuilder
  from ringmoe_jax.train.step import make_train_step
  c = load_config(config_spec)
  c.mesh.update(data=1, fsdp=1, expert=1, tensor=1)
  c.data.batch_size = batch_size
  c.model.patch_embed = patch_embed
  mesh = make_mesh(c.mesh, jax.devices()[:1])
  builder = StateBuilder.from_config(c, make_optimizer(c.optim, batch_size, 1000), mesh,
                                     rules_for(c))
  holder = {"state": builder.init()}
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(holder["state"]["params"]))
  ex = example_batch(c)
  reps = -(-batch_size // len(ex["modality"]))
  batch = {k: jnp.asarray(np.concatenate([v] * reps)[:batch_size]) for k, v in ex.items()}
  step = make_train_step(builder, c)

  def run():
    with jax.set_mesh(mesh):
      holder["state"], metrics = step(holder["state"], batch)
      jax.block_until_ready(metrics["loss"])
  run()  # compile
  return run, params


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/pretrain_tiny.py")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--rounds", type=int, default=5)
  args = ap.parse_args(argv)
  thunks, params = {}, {}
  for v in VARIANTS:
    thunks[v], params[v] = _stepper(args.config, v, args.batch)
  t = best_of(thunks, args.rounds)
  for v in VARIANTS:
    print(f"{v:9s} step_s={t[v]:.3f} params={params[v]:,}")
  print(f"headline: spectral/fixed={t['spectral'] / t['fixed']:.3f} "
        f"params_spectral/fixed={params['spectral'] / params['fixed']:.4f}")


if __name__ == "__main__":
  main()
