"""Host memory: keep freed buffers in the process so XLA:CPU does not page-fault every step.

XLA:CPU allocates every output and temporary buffer of an execution with malloc. glibc serves
requests above its mmap threshold (128 KiB, growing to at most 32 MiB) with a fresh mmap and
returns them to the kernel on free, so each step's large buffers (weight gradients, the MoE's
(N, hidden) activations) are new pages that the kernel faults in and zero-fills one 4 KiB page
at a time: ~0.2 s per GB on the CPUs we measured, single-threaded, every step (on the MoE layer
benchmark, 64 experts' 512 MB weight gradient cost 0.2 s of a 1.4 s step). Raising the mmap
threshold cannot help (glibc caps it at 32 MiB); turning mmap off for malloc (M_MMAP_MAX=0) and
not trimming the heap (M_TRIM_THRESHOLD) makes the next step reuse the pages already mapped,
provided that every thread allocates from the one main heap (M_ARENA_MAX=1): XLA's worker
threads would otherwise get per-thread arenas, whose 64 MiB heaps glibc still maps and unmaps
(measured: the MoE benchmark's page faults only vanish with all three settings).
Costs: the process keeps its peak heap until it exits; and with one arena, threads that malloc
often contend for its lock: the tiny pre-training run (small buffers, a threaded input
pipeline) fell from 2.05 to 0.86 steps/s (0.89 with the arena limit alone, 1.99 with the other
two settings alone; 2026-11-30). So it pays only where big buffers dominate, as in the MoE layer
benchmark, and ringmoe_jax.main applies it only when asked (--reuse_host_memory). Large
requests still succeed (glibc falls back to mmap for the main heap when brk cannot grow).
Accelerator memory is not affected.

`reuse_freed_memory()` is called by the benchmarks, and by ringmoe_jax.main with
--reuse_host_memory, before JAX starts its threads (threads that already own an arena keep it);
it does nothing, and says so, where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# mallopt takes an int: the largest trim threshold it accepts, 2 GiB of free heap top.
TRIM_THRESHOLD = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class HostMemorySetting:
  """What reuse_freed_memory did (plain data, printed by the benchmarks)."""
  applied: bool
  detail: str

  def __str__(self):
    return f"host memory: {'freed buffers reused' if self.applied else 'unchanged'} ({self.detail})"


def _glibc():
  """The process's glibc, or None (musl, macOS, Windows)."""
  name = ctypes.util.find_library("c")
  if not name:
    return None
  try:
    libc = ctypes.CDLL(name)
  except OSError:
    return None
  return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def reuse_freed_memory() -> HostMemorySetting:
  """malloc keeps freed memory mapped for reuse (see the module doc); process-wide, idempotent."""
  libc = _glibc()
  if libc is None:
    return HostMemorySetting(False, "not glibc: allocator left as it is")
  libc.gnu_get_libc_version.restype = ctypes.c_char_p
  version = libc.gnu_get_libc_version().decode()
  # mallopt returns 1 on success.
  settings = ((_M_ARENA_MAX, 1, "M_ARENA_MAX=1"), (_M_MMAP_MAX, 0, "M_MMAP_MAX=0"),
              (_M_TRIM_THRESHOLD, TRIM_THRESHOLD, f"M_TRIM_THRESHOLD={TRIM_THRESHOLD}"))
  refused = [name for option, value, name in settings if libc.mallopt(option, value) != 1]
  if refused:
    return HostMemorySetting(False, f"glibc {version} refused mallopt {', '.join(refused)}")
  return HostMemorySetting(True, f"glibc {version}: {', '.join(n for _, _, n in settings)}")
