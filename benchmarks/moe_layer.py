"""Forward+backward time of the MoE layer vs a dense FFN with the same active FLOPs per token.

  python benchmarks/moe_layer.py                   # single CPU device, float32, ~6 minutes
  python benchmarks/moe_layer.py --default_malloc  # glibc's default allocator (see below)

Sizes (issue 3): T=16384 tokens, d=512, hidden 2048, top-1.
  router-N: one router group over N experts (collaborative-style, no special/shared experts):
            the cost of routing + dispatch + N expert FFNs, against one dense FFN (same active
            FLOPs per token).
  hierarchical: RingMoE's layer, 4 modalities x 4 special + 4 collab + 1 shared (each token runs
            3 FFNs), against a dense FFN of 3x the hidden width.
GFLOP/s counts active FLOPs (3 passes x 2 matmuls x 2*d*hidden per token per FFN), against a
2048^3 matmul measured in the same run (the faster of XLA's and numpy's BLAS).
floor-eN: a copy of N experts' weights (read them once, write a fresh buffer of their size): the
memory traffic of the weight gradient, which no kernel avoids (the layer also reads the weights a
second time, in the forward pass, so the real floor is a little higher); floor-e64 - floor-e4
estimates how close e64/e4 can get to 1.
Host memory: the benchmark first makes glibc keep freed memory for reuse (parallel/host_memory.py;
ringmoe_jax.main --reuse_host_memory). With --default_malloc every large buffer of every call is a fresh
mmap whose pages the kernel faults in one by one: ~0.2 s per call for the 537 MB weight
gradient of 64 experts, which then dominates the floor above.
Timing: every variant is timed round-robin (best of ROUNDS); the variants behind the headline
(dense, and the capacity, blocked and native dispatchers at 4, 16 and 64 experts) get more
round-robin rounds, best of HEADLINE_ROUNDS in all, so that their measurements alternate
(e4, e64, e4, ...) and a burst of load from other processes hits both sides of each ratio alike.
ragged_dot is timed once and at 4 experts only: on CPU it is ~24x slower and XLA:CPU lowers it
through an (E, N, hidden) intermediate (3.4 GB of temporaries at E=4, ~40 GB at E=64).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from _timing import add_malloc_flag, best_of, compiled, matmul_gflops, setup_host_memory  # noqa: E402
from ringmoe_jax.moe import native  # noqa: E402
from ringmoe_jax.moe.layer import HierarchicalMoE, MoEConfig  # noqa: E402

T, D, F = 16384, 512, 2048
ROUNDS = 3
HEADLINE_ROUNDS = 8  # dense, router-{4,16,64} capacity/blocked/native: the headline's ratios
DISPATCHERS = ("capacity", "dropless_blocked", "dropless_native", "dropless_ragged")


def _grad_fn(graphdef):
  def loss(params, x, mod, ct):
    y, aux = nnx.merge(graphdef, params)(x, mod, train=True)
    return jnp.sum(y * ct) + 0.01 * aux["balance_loss"]
  return jax.grad(loss, argnums=(0, 1))


def _moe_thunk(cfg, x, mod, ct):
  with nnx.use_eager_sharding(False):
    layer = HierarchicalMoE(D, F, cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(layer)
  return compiled(_grad_fn(graphdef), params, x, mod, ct)


def _dense_thunk(hidden, x, ct):
  k1, k2 = jax.random.split(jax.random.PRNGKey(7))
  params = (jax.random.normal(k1, (D, hidden)) / D ** 0.5, jnp.zeros((hidden,)),
            jax.random.normal(k2, (hidden, D)) / hidden ** 0.5, jnp.zeros((D,)))

  def loss(p, x, ct):
    w1, b1, w2, b2 = p
    y = jax.nn.gelu(x @ w1 + b1, approximate=False) @ w2 + b2
    return jnp.sum(y * ct)
  return compiled(jax.grad(loss, argnums=(0, 1)), params, x, ct)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  add_malloc_flag(parser)
  setup_host_memory(parser.parse_args().default_malloc)
  print(f"backend={jax.default_backend()} devices={len(jax.devices())} T={T} d={D} hidden={F} "
        f"float32 fwd+bwd, best of {ROUNDS} ({HEADLINE_ROUNDS} for the headline variants, "
        "interleaved)")
  print(f"native kernels: {native.status()}")
  ceiling = matmul_gflops()
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(keys[0], (T, D), jnp.float32)
  ct = jax.random.normal(keys[1], (T, D), jnp.float32)
  mod = jax.random.randint(keys[2], (T,), 0, 4)
  flops_per_ffn = 3 * 2 * 2 * T * D * F

  thunks = {"dense": _dense_thunk(F, x, ct), "dense3x": _dense_thunk(3 * F, x, ct)}
  active = {"dense": 1, "dense3x": 3}
  for e in (4, 16, 64):
    for disp in DISPATCHERS:
      if disp == "dropless_native" and not native.status().available:
        continue
      if disp == "dropless_ragged" and e > 4:
        continue  # XLA:CPU ragged_dot materialises (E, N, hidden): 3.4 GB at E=4, ~40 GB at 64
      cfg = MoEConfig(num_special=0, num_collab=e, num_shared=0, top_k=1, dispatcher=disp)
      thunks[f"router-{e}/{disp}"] = _moe_thunk(cfg, x, mod, ct)
      active[f"router-{e}/{disp}"] = 1
  for disp in DISPATCHERS[:3]:
    cfg = MoEConfig(num_special=4, num_collab=4, num_shared=1, top_k=1, dispatcher=disp)
    thunks[f"hierarchical/{disp}"] = _moe_thunk(cfg, x, mod, ct)
    active[f"hierarchical/{disp}"] = 3
  for e in (4, 64):
    w = jnp.zeros((2, e, D, F), jnp.float32)  # w1 and w2 together
    thunks[f"floor-e{e}"] = compiled(lambda w: jnp.zeros_like(w) + w, w)
  rounds_for = {n: 1 for n in thunks if "ragged" in n}
  rounds_for.update({n: HEADLINE_ROUNDS for n in thunks if n == "dense" or (
      n.split("/")[0] in ("router-4", "router-16", "router-64") and "ragged" not in n)})
  times = best_of(thunks, ROUNDS, rounds_for=rounds_for)

  print(f"matmul ceiling: {ceiling:.0f} GFLOP/s")
  print(f"{'variant':34s} {'time s':>8s} {'vs dense':>9s} {'GFLOP/s':>8s} {'% ceiling':>9s}")
  for name, t in times.items():
    if name.startswith("floor"):
      continue
    base = times["dense3x"] if active[name] == 3 else times["dense"]
    gf = active[name] * flops_per_ffn / t / 1e9
    print(f"{name:34s} {t:8.3f} {t / base:9.2f} {gf:8.0f} {100 * gf / ceiling:8.0f}%")

  def best(e):
    return min((times[n], n.split("/")[1]) for n in times if n.startswith(f"router-{e}/"))
  t16, d16 = best(16)
  t4, d4 = best(4)
  t64, d64 = best(64)
  print(f"best dispatcher: e4 {d4}, e16 {d16}, e64 {d64}")
  extra = times["floor-e64"] - times["floor-e4"]
  print(f"weight-gradient floor: copy of 64 experts' weights {times['floor-e64']:.3f} s, of 4 "
        f"{times['floor-e4']:.3f} s; e64 - e4 = {t64 - t4:.3f} s against a floor of {extra:.3f} s "
        f"(e4 + floor alone: e64/e4 ~ {(t4 + extra) / t4:.2f}; noisy, copies overlap nothing)")
  print(f"headline: moe/dense={t16 / times['dense']:.2f} e64/e4={t64 / t4:.2f}")


if __name__ == "__main__":
  main()
