"""Two processes on localhost (4 fake CPU devices each, gloo collectives) train the micro
config with per-process data shards; their losses equal one process with 8 devices fed the
same global batches, and both processes write the checkpoint.

Run as a script, this file is one worker: test_multihost.py WORKDIR PORT PROCESS_ID.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STEPS = 3


def _config():
  from helpers import micro_config  # pylint: disable=import-outside-toplevel
  c = micro_config()
  c.train.update(total_steps=STEPS, log_every=1, checkpoint_every=STEPS)
  # Capacity dispatch: the same drops on any mesh, and a smaller program for the three
  # processes to compile than the dropless blocked loop 'auto' picks for several CPU devices.
  c.moe.dispatcher = "capacity"
  return c


def _worker(workdir: str, port: int, pid: int) -> None:
  sys.path.insert(0, HERE)
  from xla_flags import with_devices  # pylint: disable=import-outside-toplevel
  os.environ["XLA_FLAGS"] = with_devices(4)
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_num_cpu_devices", 4)
  from ringmoe_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
  distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                         process_id=pid)
  assert jax.process_count() == 2 and jax.device_count() == 8
  from ringmoe_jax.train import trainer  # pylint: disable=import-outside-toplevel
  r = trainer.train(_config(), workdir)
  print("LOSSES " + json.dumps(r["losses"]), flush=True)


class _BothShards:
  """The global batch of 2 processes, in one process: shard 0's rows, then shard 1's."""

  def __init__(self, config, registry, task):
    from ringmoe_jax.data import pipeline as pipeline_lib  # pylint: disable=import-outside-toplevel
    self.iters = [pipeline_lib.make_iterator(
        task.make_dataset(config, registry, "train", batch_size=config.data.batch_size // 2,
                          shard_index=i, shard_count=2), num_workers=0) for i in range(2)]

  def __next__(self):
    parts = [next(it) for it in self.iters]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self):
    return [it.get_state() for it in self.iters]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_process_with_8_devices(tmp_path, monkeypatch):
  port = _free_port()
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, HERE])}
  procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path / "multi"), str(port),
                             str(i)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=1200)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  multi = [json.loads(out.split("LOSSES ")[1].splitlines()[0]) for out in outs]
  assert multi[0] == multi[1]  # every process sees the same (global) loss

  from ringmoe_jax.train import trainer  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(trainer, "make_data", _BothShards)
  single = trainer.train(_config(), str(tmp_path / "single"))
  assert len(single["losses"]) == STEPS
  np.testing.assert_allclose(multi[0], single["losses"], rtol=2e-5)

  # One checkpoint, written by both processes together, restorable.
  ckpt = trainer.Checkpointer(str(tmp_path / "multi" / "checkpoints"), max_to_keep=3)
  assert ckpt.latest_step() == STEPS
  ckpt.close()


if __name__ == "__main__":
  sys.path.insert(0, HERE)
  _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
