"""Test set-up: 8 fake CPU devices, configured before JAX initialises its backend.

Every sharding path (data, fsdp, expert, tensor) therefore runs on a real 8-device mesh in CI.
Compiled programs go to a persistent cache for the session (also used by the subprocesses the
tests start, through the environment): the trainer tests compile the same step several times
(straight run, interrupted run, resumed run), and on a 2-core machine a cache hit saves ~80%.
"""
import os
import tempfile

from xla_flags import with_devices  # noqa: E402  (tests/xla_flags.py: fast-compile flags)

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + with_devices(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="ringmoe_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
