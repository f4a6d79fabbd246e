"""Model FLOPs utilisation (MFU) of the full training step on this CPU.

  python benchmarks/train_step.py [--config=configs/pretrain_14b.py:size=base] [--batch=4]
      [--dtype=float32] [--profile_dir=DIR]

MFU = model FLOPs per step / step time / matmul ceiling, where
  model FLOPs per step = 3 x analytic forward FLOPs per tile (tools/inspect.py: the selected
                         experts, attention, routers, merging, decoder; backward = 2 x forward)
                         x global batch;
  step time            = best of N timed steps (state donated, as in training), after compile;
  matmul ceiling       = best-of-N (2048, 2048) @ (2048, 2048) in the step's compute dtype
                         (bfloat16 inputs with float32 accumulation for bf16 configs), measured
                         in the same run, on the same cores.
One device (no fake mesh: 8 fake devices share the same 2 cores and only add partitioning
overhead). Also printed, to show where the time goes: the forward pass alone (its share of the
step and its own MFU), and XLA's cost analysis of the compiled step (FLOPs it counts, including
work that is not model FLOPs such as dispatch one-hots and optimizer arithmetic, and bytes
accessed), and a profile of one more step (a JAX profiler trace in --profile_dir, summarised by
tools/profile_summary.py: self time per HLO op, grouped by kind and by the source file that
emitted it). The last line is `headline: mfu=<fraction>`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def matmul_ceiling(dtype, n: int = 2048, rounds: int = 7) -> float:
  """FLOP/s of an (n, n) @ (n, n) matmul, best of `rounds`."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  jax.block_until_ready(f(a, a))
  best = float("inf")
  for _ in range(rounds):
    t = time.perf_counter()
    jax.block_until_ready(f(a, a))
    best = min(best, time.perf_counter() - t)
  return 2.0 * n ** 3 / best


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/pretrain_14b.py:size=base")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--remat", default="none")
  ap.add_argument("--dtype", default=None, help="compute dtype override, e.g. float32")
  ap.add_argument("--profile_dir", default=None, help="trace directory (default: a temp dir)")
  args = ap.parse_args(argv)

  from ringmoe_jax.config.load import load_config
  from ringmoe_jax.parallel.mesh import make_mesh
  from ringmoe_jax.parallel.sharding import rules_for
  from ringmoe_jax.tools.aot import example_batch
  from ringmoe_jax.tools.inspect import forward_flops_per_tile
  from ringmoe_jax.tools.profile_summary import summarize
  from ringmoe_jax.objectives.simmim import simmim_loss
  from ringmoe_jax.train.optim import make_optimizer
  from ringmoe_jax.train.state import StateBuilder
  from ringmoe_jax.train.step import make_train_step

  c = load_config(args.config)
  c.mesh.update(data=1, fsdp=1, expert=1, tensor=1)
  c.data.batch_size = args.batch
  c.remat.policy = args.remat
  if args.dtype:
    c.model.dtype = args.dtype
  mesh = make_mesh(c.mesh, jax.devices()[:1])
  builder = StateBuilder.from_config(c, make_optimizer(c.optim, args.batch, 1000), mesh,
                                     rules_for(c))
  state = builder.init()
  ex = example_batch(c)
  reps = -(-args.batch // len(ex["modality"]))
  batch = {k: jnp.asarray(np.concatenate([v] * reps)[:args.batch]) for k, v in ex.items()}
  step = make_train_step(builder, c)
  with jax.set_mesh(mesh):
    t = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics["loss"])
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(args.steps):
      t = time.perf_counter()
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics["loss"])
      times.append(time.perf_counter() - t)
    # Where the time goes: the forward pass alone (loss, no gradient, no update), and what XLA
    # itself counts for the whole step (FLOPs incl. non-model work, bytes moved).
    fwd_fn = jax.jit(lambda p, b: simmim_loss(builder.merge(p), b, jax.random.PRNGKey(0), c,
                                              train=True)[0])
    jax.block_until_ready(fwd_fn(state["params"], batch))
    fwd_times = []
    for _ in range(args.steps):
      t = time.perf_counter()
      jax.block_until_ready(fwd_fn(state["params"], batch))
      fwd_times.append(time.perf_counter() - t)
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    profile_dir = args.profile_dir or tempfile.mkdtemp(prefix="train_step_profile_")
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics["loss"])
  step_s = min(times)
  dtype = jnp.dtype(c.model.dtype)
  ceiling = matmul_ceiling(dtype)
  fwd = forward_flops_per_tile(c)
  model_flops = 3.0 * fwd["total"] * args.batch
  print(f"config={args.config} batch={args.batch} compute_dtype={dtype.name} remat={args.remat}")
  print(f"compile_plus_first_step_s={compile_s:.1f} step_s={step_s:.3f} (best of {args.steps}: "
        + ", ".join(f"{x:.3f}" for x in times) + ")")
  print(f"model_flops_per_step={model_flops:.4g} achieved={model_flops / step_s / 1e9:.1f} "
        f"GFLOP/s matmul_ceiling={ceiling / 1e9:.1f} GFLOP/s ({dtype.name})")
  print("forward GFLOP per tile: " + ", ".join(f"{k}={v / 1e9:.2f}" for k, v in fwd.items()))
  fwd_s = min(fwd_times)
  print(f"forward_only_s={fwd_s:.3f} ({fwd_s / step_s:.0%} of the step; model FLOPs put it at "
        f"33%) forward_mfu={fwd['total'] * args.batch / fwd_s / ceiling:.3f}")
  xla_flops, xla_bytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  print(f"xla_counted_flops={xla_flops:.4g} ({xla_flops / model_flops:.2f}x model FLOPs) "
        f"xla_bytes_accessed={xla_bytes:.4g} (arithmetic intensity "
        f"{xla_flops / max(xla_bytes, 1.0):.1f} FLOP/byte)")
  print(f"profile of one step ({profile_dir}):")
  print(summarize(profile_dir, compiled.as_text()))
  print(f"headline: mfu={model_flops / step_s / ceiling:.3f}")


if __name__ == "__main__":
  main()
