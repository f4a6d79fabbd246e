"""Test set-up: 8 fake CPU devices, configured before JAX initialises its backend.

Every sharding path (data, fsdp, expert, tensor) therefore runs on a real 8-device mesh in CI.
Compiled programs go to a persistent cache for the session (also used by the subprocesses the
tests start, through the environment): the trainer tests compile the same step several times
(straight run, interrupted run, resumed run), and on a 2-core machine a cache hit saves ~80%.
"""
import os
import sys
import tempfile

from xla_flags import with_devices  # noqa: E402  (tests/xla_flags.py: fast-compile flags)

# One OpenBLAS thread per test process: CI runs two xdist workers on two cores, and numpy's
# pthreads OpenBLAS spin-waits for a core the other worker holds (measured: a 64x64 SVD of the
# KC merge took 4 s instead of 0.03 s while the other core was busy). Read when numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + with_devices(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="ringmoe_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import gc  # noqa: E402

import pytest  # noqa: E402


def _memory_maps() -> int:
  with open("/proc/self/maps", "rb") as f:
    return sum(1 for _ in f)


def _map_limit() -> int:
  try:
    with open("/proc/sys/vm/max_map_count") as f:
      return int(f.read())
  except OSError:
    return 65530  # Linux's default


@pytest.fixture(autouse=True)
def _release_compiled_programs():
  """Drops JAX's in-memory compiled programs when the process nears its memory-map limit.

  Each XLA:CPU executable holds ~3-6 memory mappings (its code and data sections) for as long as
  it is cached, and the suite compiles thousands of programs in one process: past Linux's
  vm.max_map_count (65530 by default, on CI too) mmap fails inside XLA's compiler and the
  process dies with SIGSEGV / SIGABRT in whichever test compiles next (measured: 55k maps at 74%
  of the first 20 files; docs/MEASUREMENTS.md). Clearing the caches at 40% of the limit returns
  the mappings; programs compiled again come from the persistent compilation cache.
  """
  yield
  if sys.platform.startswith("linux") and _memory_maps() > 0.4 * _map_limit():
    jax.clear_caches()
    gc.collect()
