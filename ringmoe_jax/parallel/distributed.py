"""Multi-host start-up: `jax.distributed.initialize()` from flags or the environment.

Call `initialize(...)` before anything touches jax devices (ringmoe_jax.main does). Where the
values come from, first match wins:
  1. explicit arguments (main.py flags --coordinator_address, --num_processes, --process_id);
  2. JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (any cluster, set by hand or
     by launch/single_host_gpu.sh);
  3. SLURM (SLURM_JOB_ID with SLURM_NTASKS > 1) and Cloud TPU pods (TPU_WORKER_HOSTNAMES with
     more than one worker): `jax.distributed.initialize()` without arguments, which reads
     SLURM_* (coordinator = first node of SLURM_JOB_NODELIST) or the TPU metadata itself;
  4. otherwise a single process: nothing to initialise.
On CPU (tests, several processes on one machine) collectives go through gloo.

Every process then feeds its own shard of the data (pipeline shard = process index / count)
and the trainer assembles global arrays with `jax.make_array_from_process_local_data`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this process joins the job (plain data, printable, testable)."""
  mode: str  # 'single' | 'explicit' | 'auto'
  source: str  # where the values came from
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def plan(coordinator_address: str | None = None, num_processes: int | None = None,
         process_id: int | None = None, env: Mapping[str, str] | None = None) -> Plan:
  """Decide how to initialise (see the module doc for the order)."""
  env = os.environ if env is None else env
  if coordinator_address or num_processes or process_id is not None:
    if not (coordinator_address and num_processes and process_id is not None):
      raise ValueError("multi-host flags: give all of --coordinator_address, --num_processes "
                       f"and --process_id (got {coordinator_address!r}, {num_processes!r}, "
                       f"{process_id!r})")
    if int(num_processes) == 1:
      return Plan("single", "flags")
    return Plan("explicit", "flags", coordinator_address, int(num_processes), int(process_id))
  if env.get("JAX_COORDINATOR_ADDRESS"):
    n = int(env.get("JAX_NUM_PROCESSES", "1"))
    if n == 1:
      return Plan("single", "JAX_* environment")
    return Plan("explicit", "JAX_* environment", env["JAX_COORDINATOR_ADDRESS"], n,
                int(env["JAX_PROCESS_ID"]))
  if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
    return Plan("auto", "SLURM")
  workers = [w for w in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if w]
  if len(workers) > 1:
    return Plan("auto", "Cloud TPU pod")
  return Plan("single", "no cluster environment")


def initialize(p: Plan | None = None, **kwargs) -> Plan:
  """Join the job described by `p` (default: `plan(**kwargs)`); returns the plan used."""
  p = plan(**kwargs) if p is None else p
  if p.mode == "single":
    return p
  import jax  # pylint: disable=import-outside-toplevel
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if p.mode == "explicit":
    jax.distributed.initialize(p.coordinator_address, num_processes=p.num_processes,
                               process_id=p.process_id)
  else:
    jax.distributed.initialize()
  print(f"distributed: process {jax.process_index()} of {jax.process_count()} ({p.source}), "
        f"{jax.local_device_count()} local / {jax.device_count()} devices", flush=True)
  return p
