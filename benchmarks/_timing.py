"""Shared timing helpers for the CPU benchmarks: compile first, then best-of-N wall time.

The machines are shared and noisy; candidates are timed round-robin so that a burst of load
hits all of them alike, and the minimum over rounds is reported.
"""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ringmoe_jax.parallel import host_memory


def add_malloc_flag(parser) -> None:
  """--default_malloc: time with glibc's default allocator (fresh pages for every big buffer)."""
  parser.add_argument("--default_malloc", action="store_true",
                      help="do not reuse freed host memory (as ringmoe_jax.main by default)")


def setup_host_memory(default_malloc: bool) -> None:
  """Freed buffers stay mapped (parallel/host_memory.py; main's --reuse_host_memory), unless
  told not."""
  if default_malloc:
    print("host memory: glibc default (--default_malloc)")
  else:
    print(host_memory.reuse_freed_memory())


def compiled(fn: Callable, *args) -> Callable[[], object]:
  """jit + AOT compile `fn(*args)`; returns a thunk that runs it and blocks on the result."""
  exe = jax.jit(fn).lower(*args).compile()
  return lambda: jax.block_until_ready(exe(*args))


def best_of(thunks: dict[str, Callable[[], object]], rounds: int,
            rounds_for: dict[str, int] | None = None, warmup: bool = True) -> dict[str, float]:
  """Seconds per call, best of `rounds` (per-name override in rounds_for), round-robin."""
  rounds_for = rounds_for or {}
  if warmup:
    for name, thunk in thunks.items():
      if rounds_for.get(name, rounds) > 1:
        thunk()
  best = {name: float("inf") for name in thunks}
  for r in range(max([rounds] + list(rounds_for.values()))):
    for name, thunk in thunks.items():
      if r < rounds_for.get(name, rounds):
        start = time.perf_counter()
        thunk()
        best[name] = min(best[name], time.perf_counter() - start)
  return best


def matmul_gflops(n: int = 2048, rounds: int = 5) -> float:
  """The physical ceiling: float32 (n, n) @ (n, n) in GFLOP/s, the faster of XLA's dot and
  numpy's BLAS (which the native MoE kernel uses; on some days XLA:CPU's dot is 20% slower)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = np.asarray(a)
  out = np.empty_like(b)
  t = best_of({"xla": compiled(lambda a: a @ a, a), "blas": lambda: np.matmul(b, b, out=out)},
              rounds)
  return 2 * n ** 3 / min(t.values()) / 1e9
