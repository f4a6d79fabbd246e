"""parallel/host_memory: after reuse_freed_memory(), a step's big output no longer page-faults."""
import os
import subprocess
import sys
import textwrap

# Minor page faults of a call (the fewest of 8: the host may reclaim idle pages now and then) of
# a jitted function whose output is 64 MiB (16,384 pages of
# 4 KiB), once the heap has reached its steady state, in a fresh process (mallopt is process-wide and, for the arena limit, has to come
# before XLA starts its threads, as in ringmoe_jax.main).
_SCRIPT = textwrap.dedent("""
    import resource, sys
    from ringmoe_jax.parallel import host_memory
    if sys.argv[1] == "reuse":
      print(host_memory.reuse_freed_memory())
    import jax, jax.numpy as jnp
    x = jnp.ones((16 * 2**20,), jnp.float32)
    f = jax.jit(lambda x: x * 2)
    for _ in range(6):  # compiled, and the heap has grown to its high-water mark
      f(x).block_until_ready()
    faults = []
    for _ in range(8):
      start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    print("FAULTS", min(faults))
""")


def _faults_per_call(mode):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], env=env, capture_output=True,
                       text=True, timeout=300, check=True).stdout
  return float(out.split("FAULTS")[1]), out


def test_reuse_freed_memory_stops_page_faults_of_big_buffers():
  pages = 16 * 2**20 * 4 // 4096
  default, _ = _faults_per_call("default")
  reuse, out = _faults_per_call("reuse")
  # glibc on every machine CI runs on; elsewhere the setting says it did nothing.
  assert "freed buffers reused" in out and "M_ARENA_MAX=1, M_MMAP_MAX=0" in out, out
  # Default glibc: a fresh mmap per call, every page faulted in again, every call.
  assert default > 0.5 * pages, default
  # Reused heap: (almost) nothing left to fault.
  assert reuse < 0.05 * pages, (reuse, out)


def test_clearing_jax_caches_returns_compiled_programs_memory_maps():
  # What tests/conftest.py's _release_compiled_programs relies on: every cached XLA:CPU program
  # holds memory mappings (past vm.max_map_count the compiler's mmap fails and the process
  # segfaults), and jax.clear_caches() gives them back.
  import gc

  import jax
  import jax.numpy as jnp

  from conftest import _memory_maps  # pylint: disable=import-outside-toplevel
  jax.clear_caches()
  gc.collect()
  before = _memory_maps()
  fns = [jax.jit(lambda x, i=i: jnp.sin(x * i) + i) for i in range(100)]
  for f in fns:
    f(jnp.ones((4,))).block_until_ready()
  grown = _memory_maps()
  # Measured: 3-4 mappings per program (adjacent ones of equal permissions merge, so it varies).
  assert grown - before >= 100, (before, grown)
  jax.clear_caches()
  gc.collect()
  # Measured: 77% given back alone (the rest: allocator arenas and threads that stay).
  assert grown - _memory_maps() >= 0.5 * (grown - before), (before, grown, _memory_maps())
