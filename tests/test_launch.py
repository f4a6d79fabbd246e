"""launch/ scripts: --dry_run prints the exact command each would execute."""
import os
import subprocess

import pytest

LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch")


def _dry(script, *args):
  r = subprocess.run(["bash", os.path.join(LAUNCH, script), "--dry_run", *args],
                     capture_output=True, text=True, timeout=60)
  assert r.returncode == 0, r.stderr
  return r.stdout


def test_tpu_pod_creates_a_queued_resource_and_runs_on_all_workers():
  out = _dry("tpu_pod.sh", "--name=rm", "--zone=us-east5-a", "--accelerator=v5p-512",
             "--workdir=gs://b/run")
  assert "gcloud compute tpus queued-resources create rm" in out
  assert "--accelerator-type=v5p-512" in out
  assert "tpu-vm ssh rm" in out and "--worker=all" in out
  assert "ringmoe_jax.main" in out and "gs://b/run" in out and "exit_code_on_preempt=42" in out


def test_slurm_runs_srun_with_the_main_entry_point():
  out = _dry("slurm_gpu.sbatch", "--workdir=/shared/r", "--config.train.total_steps=5")
  assert out.startswith("srun ") and "python -m ringmoe_jax.main" in out
  assert "--workdir=/shared/r" in out and "--config.train.total_steps=5" in out
  assert "#SBATCH --requeue" in open(os.path.join(LAUNCH, "slurm_gpu.sbatch")).read()


def test_single_host_gpu():
  out = _dry("single_host_gpu.sh", "--workdir=/tmp/r")
  assert "python -m ringmoe_jax.main --config=configs/pretrain_14b.py:size=base" in out


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm_gpu.sbatch", "single_host_gpu.sh"])
def test_workdir_is_required(script):
  r = subprocess.run(["bash", os.path.join(LAUNCH, script), "--dry_run"], capture_output=True,
                     text=True, timeout=60)
  assert r.returncode == 2 and "--workdir is required" in r.stderr


def test_distributed_plan_from_flags_and_environment():
  from ringmoe_jax.parallel.distributed import plan  # pylint: disable=import-outside-toplevel
  assert plan(env={}).mode == "single"
  p = plan("10.0.0.1:1234", 4, 2, env={})
  assert (p.mode, p.coordinator_address, p.num_processes, p.process_id) == \
      ("explicit", "10.0.0.1:1234", 4, 2)
  assert plan(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}).source == "SLURM"
  assert plan(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).mode == "single"
  assert plan(env={"TPU_WORKER_HOSTNAMES": "a,b,c,d"}).source == "Cloud TPU pod"
  e = plan(env={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
  assert (e.mode, e.process_id) == ("explicit", 1)
  with pytest.raises(ValueError, match="give all of"):
    plan("h:1", None, None, env={})
