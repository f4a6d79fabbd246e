"""Faults: non-finite steps are skipped and counted, K in a row stop the run without a
checkpoint, and a checkpoint whose async save was killed (kill -9) is never restored.

Run as a script, this file is the killed trainer: test_faults.py WORKDIR.
"""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _config(**kw):
  from helpers import micro_config  # pylint: disable=import-outside-toplevel
  c = micro_config(**kw)
  c.train.update(log_every=1)
  return c


def test_nonfinite_steps_are_skipped_counted_and_k_in_a_row_stop(tmp_path):
  from ringmoe_jax.train import trainer  # pylint: disable=import-outside-toplevel
  # Steps 1 and 3 (0-based 0, 2): NaN loss. Not in a row: skipped, counted, training goes on.
  c = _config(**{"train.inject_nonfinite_steps": (0, 2, 3, 4), "train.total_steps": 2,
                 "train.max_consecutive_nonfinite": 3, "train.checkpoint_every": 1})
  r = trainer.train(c, str(tmp_path))
  assert int(r["state"]["skipped_steps"]) == 1 and int(r["state"]["nonfinite_streak"]) == 0
  assert np.isnan(r["losses"][0]) and np.isfinite(r["losses"][1])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(r["state"]["params"])))
  # Resume: steps 3, 4, 5 are NaN -> three in a row -> stop, no checkpoint after step 2.
  c.train.total_steps = 6
  with pytest.raises(trainer.NonFiniteLossError, match="3 consecutive steps"):
    trainer.train(c, str(tmp_path))
  ckpt = trainer.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=3)
  assert ckpt.latest_step() == 4  # step 4 = one NaN step (streak 1 < 3) is still saved
  ckpt.close()


def _killed_during_async_save(workdir: str) -> None:
  """Train 6 steps with async checkpoints at 3 and 6; SIGKILL while step 6 is being written."""
  sys.path.insert(0, HERE)
  from ringmoe_jax.train import checkpoint, trainer  # pylint: disable=import-outside-toplevel
  original = checkpoint.Checkpointer.save

  def save_then_die(self, step, *args, **kwargs):
    out = original(self, step, *args, **kwargs)
    if step == 6:
      deadline = time.time() + 60
      while time.time() < deadline:  # the temporary directory of step 6 exists: die now
        if any(n.startswith("6") and "tmp" in n for n in os.listdir(self.directory)):
          print("KILLING", sorted(os.listdir(self.directory)), flush=True)
          os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.001)
    else:
      self.wait()
    return out

  checkpoint.Checkpointer.save = save_then_die
  c = _config(**{"train.async_checkpoint": True, "train.total_steps": 6,
                 "train.checkpoint_every": 3})
  trainer.train(c, workdir)


def test_kill_9_during_async_save_restores_the_last_complete_checkpoint(tmp_path):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, HERE])}
  p = subprocess.run([sys.executable, __file__, str(tmp_path)], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == -signal.SIGKILL, p.stdout[-2000:] + p.stderr[-2000:]
  assert "KILLING" in p.stdout
  names = os.listdir(tmp_path / "checkpoints")
  assert "3" in names and "6" not in names, names  # 6 exists only as a temporary directory
  from ringmoe_jax.train import trainer  # pylint: disable=import-outside-toplevel
  ckpt = trainer.Checkpointer(str(tmp_path / "checkpoints"), max_to_keep=3)
  assert ckpt.latest_step() == 3
  ckpt.close()
  c = _config(**{"train.total_steps": 4, "train.checkpoint_every": 100})
  r = trainer.train(c, str(tmp_path))
  assert r["step"] == 4 and len(r["losses"]) == 1 and np.isfinite(r["losses"]).all()


if __name__ == "__main__":
  _killed_during_async_save(sys.argv[1])
