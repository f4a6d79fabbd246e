"""moe/native: the FFI grouped matmuls against numpy, their gradients, errors and fallback."""
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ringmoe_jax.moe import grouped, native


def test_kernels_build_here():
  # CI machines have g++ (the package's only native piece is built on first use).
  assert shutil.which("g++"), "tests expect a C++ compiler"
  s = native.status()
  assert s.available, s.detail


def _numpy_openblas():
  import ctypes
  import glob
  path = glob.glob(os.path.dirname(np.__file__) + ".libs/libscipy_openblas64_*.so*")[0]
  return ctypes.CDLL(path)


def test_kernels_leave_numpys_blas_thread_count_alone():
  # The kernels' sgemm is a private single-threaded OpenBLAS: numpy's pthreads OpenBLAS has one
  # process-wide thread count (its "_local" setter too), and setting it around every call from
  # XLA's threads raced with the sgemms in flight and crashed the suite at random places.
  import threading
  assert native.status().available
  ours, theirs = native._LOADED[0], _numpy_openblas()
  assert ctypes_address(ours.scipy_cblas_sgemm64_) != ctypes_address(theirs.scipy_cblas_sgemm64_)
  assert ours.scipy_openblas_get_num_threads64_() == 1
  # conftest gives numpy 1 thread; 2 here, so a kernel that set numpy's count to 1 shows.
  saved = theirs.scipy_openblas_get_num_threads64_()
  theirs.scipy_openblas_set_num_threads64_(2)
  before = theirs.scipy_openblas_get_num_threads64_()
  assert before == 2
  seen, stop = set(), threading.Event()

  def watch():
    while not stop.is_set():
      seen.add(theirs.scipy_openblas_get_num_threads64_())

  sizes = jnp.asarray([600, 0, 900, 500], jnp.int32)  # several tasks per call, on the pool
  x = jnp.ones((2000, 64), jnp.float32)
  w = jnp.ones((4, 64, 32), jnp.float32)
  f = jax.jit(lambda x, w: native.grouped_matmul(x, w, sizes))
  t = threading.Thread(target=watch)
  t.start()
  try:
    for _ in range(30):
      y = f(x, w).block_until_ready()
  finally:
    stop.set()
    t.join()
  np.testing.assert_array_equal(np.asarray(y[:2000]), 64.0)
  after = theirs.scipy_openblas_get_num_threads64_()
  theirs.scipy_openblas_set_num_threads64_(saved)
  assert seen == {before}, (before, seen)
  assert after == before


def ctypes_address(fn):
  import ctypes
  return ctypes.cast(fn, ctypes.c_void_p).value


def _groups(sizes):
  off = np.concatenate([[0], np.cumsum(sizes)])
  return [(e, off[e], off[e + 1]) for e in range(len(sizes))]


@pytest.mark.parametrize("n,k,sizes", [
    (50, 8, [10, 0, 25, 7]), (50, 8, [0, 0, 0, 0]), (50, 8, [50, 0, 0, 0]), (50, 8, [0, 0, 0, 3]),
    # Several tasks per expert: 700 rows > 256-row tasks, and K = 600 > 512 gradient rows.
    (1100, 600, [700, 0, 300, 50])])
def test_grouped_matmul_and_its_gradients_equal_a_loop(n, k, sizes):
  m = 6
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, k)).astype(np.float32)
  w = rng.standard_normal((len(sizes), k, m)).astype(np.float32)
  g = rng.standard_normal((n, m)).astype(np.float32)
  b = rng.standard_normal((len(sizes), m)).astype(np.float32)
  sz = jnp.asarray(sizes, jnp.int32)
  want = np.zeros((n, m), np.float32)
  want_dx, want_dw = np.zeros_like(x), np.zeros_like(w)
  want_db = np.zeros_like(b)
  for e, lo, hi in _groups(sizes):
    want[lo:hi] = x[lo:hi] @ w[e] + b[e]
    want_dx[lo:hi] = g[lo:hi] @ w[e].T
    want_dw[e] = x[lo:hi].T @ g[lo:hi]
    want_db[e] = g[lo:hi].sum(0)

  def f(x, w, b):
    y = native.grouped_matmul(x, w, sz) + native.grouped_bias(b, sz, n)
    return jnp.sum(y * g), y

  (dx, dw, db), y = jax.jit(jax.grad(f, argnums=(0, 1, 2), has_aux=True))(x, w, b)
  tol = dict(rtol=1e-5, atol=1e-5 * np.sqrt(k))  # sums of k (or of up to 700) products
  np.testing.assert_allclose(y, want, **tol)  # padding rows are zeros
  np.testing.assert_allclose(dx, want_dx, **tol)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-4)  # empty groups: zeros
  np.testing.assert_allclose(db, want_db, rtol=1e-5, atol=1e-4)


def test_native_ffn_equals_the_blocked_kernel_with_gradients():
  n, d, f, e = 300, 16, 32, 5
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  xs = jax.random.normal(keys[0], (n, d))
  weights = (jax.random.normal(keys[1], (e, d, f)) / 4, jax.random.normal(keys[2], (e, f)),
             jax.random.normal(keys[3], (e, f, d)) / 6, jax.random.normal(keys[4], (e, d)))
  sizes = jnp.asarray([90, 0, 130, 41, 20], jnp.int32)  # 19 padding rows

  def loss(kernel):
    return lambda xs, w: jnp.sum(jnp.sin(kernel(xs, sizes, *w)))
  blocked = lambda xs, sizes, *w: grouped.ffn_blocked(xs, sizes, *w, (64, 32, 16))
  for a, b in zip(jax.jit(jax.grad(loss(native.ffn_native), (0, 1)))(xs, weights),
                  jax.jit(jax.grad(loss(blocked), (0, 1)))(xs, weights)):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5)


def test_bad_group_sizes_are_refused_with_a_reason():
  x = jnp.ones((4, 2))
  w = jnp.ones((2, 2, 3))
  with pytest.raises(Exception, match="add up to more rows than x has"):
    jax.block_until_ready(native.grouped_matmul(x, w, jnp.asarray([3, 2], jnp.int32)))
  with pytest.raises(Exception, match="negative"):
    jax.block_until_ready(native.grouped_matmul(x, w, jnp.asarray([-1, 2], jnp.int32)))


def test_disabled_kernels_fall_back_to_the_xla_kernel(tmp_path):
  script = ("from ringmoe_jax.moe import dispatch, native; "
            "print(native.status().detail, dispatch.resolve('auto'))")
  env = dict(os.environ, RINGMOE_JAX_NATIVE="0", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       check=True, timeout=120).stdout
  assert out.split()[-1] == "dropless_blocked" and "RINGMOE_JAX_NATIVE=0" in out, out
  # No compiler: said plainly, same fallback. Built into a fresh cache so nothing is reused.
  env = dict(env, RINGMOE_JAX_NATIVE="1", CXX="", PATH=str(tmp_path),
             RINGMOE_JAX_CACHE=str(tmp_path))
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       check=True, timeout=120).stdout
  assert "no C++ compiler" in out and out.split()[-1] == "dropless_blocked", out
