"""Native grouped matmuls for the dropless MoE on CPU (XLA FFI + the BLAS that numpy ships).

Why: on XLA:CPU the per-expert loop of XLA ops (grouped.ffn_blocked) copies every expert's
weights out of the stacked array (dynamic_slice) and every weight gradient into it
(dynamic_update_slice); with 64 experts that is ~1 GB of extra memory traffic per layer pass.
native/grouped_gemm.cc runs one sgemm per expert on the rows and weights where they lie.

Build: the C++ file is compiled on first use with the system C++ compiler ($CXX, else g++ /
c++ / clang++) against jaxlib's FFI headers into a cache directory ($RINGMOE_JAX_CACHE, else
$XDG_CACHE_HOME/ringmoe_jax, else ~/.cache/ringmoe_jax), keyed by the source, jaxlib version and
compiler, and written atomically (concurrent processes are safe). The sgemm is numpy's bundled
OpenBLAS (64-bit CBLAS, `scipy_cblas_sgemm64_`) from a private copy of the library, set to one
thread once, run per task on XLA's thread pool (see _private_openblas and the .cc file).
Without a compiler or that BLAS, `status()`
says why and dispatch 'auto' keeps the XLA kernel.

Axes: N rows sorted by group, K contracted, M out, E groups.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jaxlib
import jax.numpy as jnp
import numpy as np

from ringmoe_jax.moe import grouped

_SOURCE = Path(__file__).parent / "native" / "grouped_gemm.cc"
_TARGETS = {"ringmoe_grouped_matmul": "RingmoeGroupedMatmul",
            "ringmoe_grouped_weight_grad": "RingmoeGroupedWeightGrad"}


@dataclasses.dataclass(frozen=True)
class NativeStatus:
  """Whether the native kernels are usable here, and if not, why (plain data)."""
  available: bool
  detail: str


def _cache_dir() -> Path:
  root = os.environ.get("RINGMOE_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ringmoe_jax")
  return Path(root) / "native"


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _private_openblas() -> tuple[int, str] | None:
  """Address of the 64-bit CBLAS sgemm of a private, single-threaded copy of numpy's OpenBLAS.

  Why a copy: numpy's OpenBLAS is a pthreads build whose thread count is process-wide
  (openblas_set_num_threads_local included: it sets the global count). The kernel's sgemms run
  on XLA's pool threads and must be single-threaded, and numpy must keep its own setting, so
  the library is copied into the cache directory and loaded from there: a file of its own is a
  second instance (dlopen shares a library only by path or inode), with its own globals, set to
  one thread once, before any call, and never changed after. Its dependencies (libgfortran)
  resolve by soname to the copies numpy already loaded.
  Returns (address, path of the copy), or None if numpy ships no such OpenBLAS.
  """
  libs = Path(np.__file__).parent.parent / "numpy.libs"
  for path in sorted(glob.glob(str(libs / "libscipy_openblas64_*.so*"))):
    src = Path(path)
    st = src.stat()
    key = hashlib.sha256(f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    copy = _cached_file(f"openblas_{key[:16]}.so", lambda tmp, src=src: shutil.copyfile(src, tmp))
    # OPENBLAS_NUM_THREADS is read when the library initialises: the copy starts no threads.
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
      lib = ctypes.CDLL(str(copy))
    finally:
      if saved is None:
        del os.environ["OPENBLAS_NUM_THREADS"]
      else:
        os.environ["OPENBLAS_NUM_THREADS"] = saved
    wanted = ("scipy_cblas_sgemm64_", "scipy_openblas_set_num_threads64_",
              "scipy_openblas_get_num_threads64_")
    if not all(hasattr(lib, f) for f in wanted):
      continue
    lib.scipy_openblas_set_num_threads64_(1)
    if lib.scipy_openblas_get_num_threads64_() != 1:
      continue
    _LOADED.append(lib)  # kept alive for the process (the kernel holds its sgemm's address)
    return ctypes.cast(lib.scipy_cblas_sgemm64_, ctypes.c_void_p).value, str(copy)
  return None


_LOADED: list[ctypes.CDLL] = []


def _cached_file(name: str, write) -> Path:
  """The cache directory's `name`, made once by write(tmp_path) on a temporary file that is then
  renamed (atomic: another process sees no file or the whole one, never a half-written one)."""
  out = _cache_dir() / name
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  try:
    write(tmp)
  except BaseException:
    os.unlink(tmp)
    raise
  os.replace(tmp, out)
  return out


def _build(cxx: str) -> Path:
  """Compiles the kernel library once per (source, jaxlib, compiler); returns its path."""
  version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                           check=True).stdout.splitlines()[0]
  key = hashlib.sha256(_SOURCE.read_bytes() + jaxlib.__version__.encode() +
                       version.encode()).hexdigest()[:16]

  def compile_to(tmp: str) -> None:
    # -isystem: jaxlib's headers are not ours to warn about. The BLAS does the arithmetic, so
    # -O2 without -march keeps the library portable across hosts sharing a cache.
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-isystem", jax.ffi.include_dir(),
           str(_SOURCE), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")

  return _cached_file(f"grouped_gemm_{key}.so", compile_to)


@functools.cache
def status() -> NativeStatus:
  """Builds (once), loads and registers the kernels; never raises."""
  if os.environ.get("RINGMOE_JAX_NATIVE", "1") == "0":
    return NativeStatus(False, "disabled by RINGMOE_JAX_NATIVE=0")
  cxx = _compiler()
  if cxx is None:
    return NativeStatus(False, "no C++ compiler ($CXX, g++, c++, clang++) on PATH")
  try:
    blas = _private_openblas()
  except OSError as e:
    return NativeStatus(False, f"loading a private copy of numpy's OpenBLAS failed: {e}")
  if blas is None:
    return NativeStatus(False, "numpy's bundled OpenBLAS (scipy_cblas_sgemm64_, "
                        "scipy_openblas_set_num_threads64_) not found")
  try:
    path = _build(cxx)
    lib = ctypes.CDLL(str(path))
  except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
    return NativeStatus(False, f"building {_SOURCE.name} failed: {e}")
  lib.ringmoe_set_blas(ctypes.c_void_p(blas[0]))
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return NativeStatus(True, f"{path} (sgemm: {blas[1]}, a single-threaded copy of numpy's OpenBLAS)")


def _require():
  s = status()
  if not s.available:
    raise RuntimeError(f"moe native kernels unavailable: {s.detail}")


def _matmul(x, w, sizes, transpose_w: bool):
  n, k = x.shape
  m = w.shape[1] if transpose_w else w.shape[2]
  assert (w.shape[2] if transpose_w else w.shape[1]) == k, (x.shape, w.shape, transpose_w)
  return jax.ffi.ffi_call("ringmoe_grouped_matmul", jax.ShapeDtypeStruct((n, m), jnp.float32))(
      x, w, sizes, transpose_w=transpose_w)


def _weight_grad(x, dy, sizes):
  shape = (sizes.shape[0], x.shape[1], dy.shape[1])
  return jax.ffi.ffi_call("ringmoe_grouped_weight_grad",
                          jax.ShapeDtypeStruct(shape, jnp.float32))(x, dy, sizes)


@jax.custom_vjp
def grouped_matmul(x: jax.Array, w: jax.Array, sizes: jax.Array) -> jax.Array:
  """x (N, K) f32 sorted by group, w (E, K, M) f32, sizes (E,) int32 -> (N, M) f32.

  Rows of group e times w[e]; rows past sum(sizes) come out as zeros (as lax.ragged_dot).
  """
  _require()
  return _matmul(x, w, sizes.astype(jnp.int32), False)


def _fwd(x, w, sizes):
  return grouped_matmul(x, w, sizes), (x, w, sizes)


def _bwd(res, g):
  x, w, sizes = res
  sizes = sizes.astype(jnp.int32)
  return (_matmul(g, w, sizes, True), _weight_grad(x, g, sizes),
          np.zeros(sizes.shape, jax.dtypes.float0))


grouped_matmul.defvjp(_fwd, _bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def grouped_bias(b: jax.Array, sizes: jax.Array, n: int) -> jax.Array:
  """b (E, M) -> (N, M): row r gets b[group of r]; rows past sum(sizes) get zeros.

  Its gradient is a per-group row sum, taken as a grouped matmul with a ones column (one pass
  over the rows) rather than the scatter-add that XLA makes of a gather's transpose.
  """
  return grouped.row_bias(b, sizes, n)


def _bias_fwd(b, sizes, n):
  return grouped_bias(b, sizes, n), sizes


def _bias_bwd(n, sizes, g):
  ones = jnp.ones((n, 1), jnp.float32)
  return (_weight_grad(ones, g, sizes.astype(jnp.int32))[:, 0, :],
          np.zeros(sizes.shape, jax.dtypes.float0))


grouped_bias.defvjp(_bias_fwd, _bias_bwd)


def ffn_native(xs, sizes, w1, b1, w2, b2):
  """As grouped.ffn_ragged, with these grouped matmuls (float32 only)."""
  n = xs.shape[0]
  h = grouped_matmul(xs, w1, sizes) + grouped_bias(b1, sizes, n)
  return grouped_matmul(grouped.gelu(h), w2, sizes) + grouped_bias(b2, sizes, n)
