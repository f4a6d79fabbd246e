"""Test set-up: 8 fake CPU devices, configured before JAX initialises its backend.

Every sharding path (data, fsdp, expert, tensor) therefore runs on a real 8-device mesh in CI.
"""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
