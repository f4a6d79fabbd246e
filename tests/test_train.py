"""End-to-end training on the micro config: loss falls, checkpoints round-trip, runs resume
exactly, signals save, bad sensors fail clearly."""
import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import micro_config
from xla_flags import with_devices
from ringmoe_jax.tools import profile_summary, routing_report
from ringmoe_jax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _params(result):
  return jax.tree.map(np.asarray, jax.device_get(result["state"]["params"]))


def _user_sensor_file(path, name, modality, bands, bandwidth_nm):
  """A user sensor definition (JSON) with the given (band name, centre nm) pairs."""
  sensor = {"name": name, "modality": modality, "gsd_m": 2.0, "product_level": "L2A",
            "scale": "reflectance", "mean": [0.1] * len(bands), "std": [0.1] * len(bands),
            "bands": [{"name": n, "center_wavelength_nm": w, "bandwidth_nm": bandwidth_nm}
                      for n, w in bands]}
  path.write_text(json.dumps(sensor))
  return str(path)


def test_loss_falls_over_a_few_steps(tmp_path):
  c = micro_config()
  c.train.update(total_steps=12, log_every=1, checkpoint_every=100, profile_steps=(6, 6))
  r = trainer.train(c, str(tmp_path))
  losses = r["losses"]
  assert len(losses) == 12 and all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
  rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [row["step"] for row in rows] == list(range(1, 13))
  for key in ("loss", "recon_loss", "balance_loss", "loss_opt", "loss_sar_l1", "grad_norm"):
    assert key in rows[-1], key
  load = np.asarray(rows[-1]["routing"]["collab"]["load"])  # (blocks, experts)
  np.testing.assert_allclose(load.sum(-1), 1.0, rtol=1e-5)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
  # train.profile_steps: a trace of step 6 that tools/profile_summary reads (the HLO ops of
  # the compiled train step).
  times = profile_summary.op_self_times(str(tmp_path / "profile"))
  assert len(times) > 100 and sum(times.values()) > 0


def test_resume_is_bit_identical_and_checkpoints_round_trip(tmp_path):
  # 4 steps (a step takes ~2 s on 8 fake devices): checkpoints at 3 and 4; the interrupted run
  # stops at 2, so the resumed run still writes a periodic checkpoint (3) after restoring.
  c = micro_config(**{"train.total_steps": 4})
  straight = trainer.train(c, str(tmp_path / "a"))
  first = trainer.train(c, str(tmp_path / "b"), max_steps_this_run=2)
  assert first["step"] == 2
  resumed = trainer.train(c, str(tmp_path / "b"))
  assert resumed["step"] == 4
  jax.tree.map(np.testing.assert_array_equal, _params(straight), _params(resumed))
  counts = jax.device_get(resumed["state"]["routing_counts"])
  np.testing.assert_array_equal(counts["collab"],
                                jax.device_get(straight["state"]["routing_counts"])["collab"])
  # Checkpoint content: the sensor registry and routing counts travel with the weights.
  ckpt = trainer.Checkpointer(str(tmp_path / "b" / "checkpoints"), max_to_keep=3)
  assert ckpt.latest_step() == 4
  builder_state, data_state, meta = ckpt.restore(4, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), resumed["state"]))
  ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(builder_state["params"]),
               _params(resumed))
  assert "gaofen3_slc" in json.dumps(meta["sensors"])
  assert np.asarray(meta["routing_counts"]["collab"]).shape == counts["collab"].shape
  assert data_state  # the Grain iterator position
  # The routing report reads the same counts back (what the pruning transform will read).
  step, saved = routing_report.load_counts(str(tmp_path / "b"))
  assert step == 4
  np.testing.assert_array_equal(saved["collab"], counts["collab"])
  text, starved = routing_report.report(saved)
  assert f"starved_experts={starved}" in text and starved == int((counts["collab"] == 0).sum()
                                                                 + (counts["special"] == 0).sum())


def test_programs_are_reused_only_for_the_same_program():
  """The trainer's memo: host-only keys share a program, anything the program reads does not."""
  from ringmoe_jax.parallel.mesh import make_mesh  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.parallel.sharding import rules_for  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.tasks import get_task  # pylint: disable=import-outside-toplevel
  c = micro_config()
  mesh, task = make_mesh(c.mesh), get_task(c)
  first = trainer.programs(c, task, mesh, rules_for(c))
  # log_every is host-side; total_steps is not read while optim.schedule_steps fixes the LR.
  same = micro_config(**{"train.log_every": 5, "train.total_steps": 9})
  assert trainer.programs(same, get_task(same), make_mesh(same.mesh), rules_for(same)) is first
  for key, value in (("optim.base_lr", 1e-3), ("optim.schedule_steps", 0), ("seed", 7)):
    other = micro_config(**{key: value})
    assert trainer.programs(other, get_task(other), make_mesh(other.mesh),
                            rules_for(other)) is not first, key


def test_unknown_sensor_and_channel_mismatch_fail_clearly(tmp_path):
  c = micro_config()
  c.data.sensors = ("gaofen2_pms", "nope")
  with pytest.raises(KeyError, match="unknown sensor 'nope'; registered: gaofen2_pms"):
    trainer.train(c, str(tmp_path / "x"))
  path = _user_sensor_file(tmp_path / "s.json", "my_rgbn", "opt",
                           (("B", 490), ("G", 560), ("R", 665), ("N", 842)), 60.0)
  c = micro_config()
  c.data.update(sensors=("my_rgbn",), sensor_files=(path,))
  with pytest.raises(ValueError, match=r"sensor 'my_rgbn' \(opt\) has 4 channels but "
                     r"model.in_channels.opt is 3"):
    trainer.train(c, str(tmp_path / "y"))


def test_sigterm_saves_and_a_rerun_resumes(tmp_path):
  """The real entry point: SIGTERM mid-run -> checkpoint at that step -> rerun resumes there."""
  cmd = [sys.executable, "-m", "ringmoe_jax.main", "--config=configs/pretrain_tiny.py",
         f"--workdir={tmp_path}", "--config.model.img_size=32", "--config.model.embed_dim=16",
         "--config.model.depths=(1,1,1,1)", "--config.model.num_heads=(1,2,2,4)",
         "--config.mim.mask_cell=8", "--config.data.tile_size=40", "--config.data.batch_size=8",
         "--config.train.log_every=1", "--config.train.checkpoint_every=1000",
         "--config.optim.schedule_steps=400",  # the rerun below compiles the same step
         "--config.train.total_steps=400"]
  env = {**os.environ, "XLA_FLAGS": with_devices(1), "JAX_PLATFORMS": "cpu"}
  p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, env=env)
  lines = []
  for line in p.stdout:
    lines.append(line)
    if line.startswith("step=3 "):
      p.send_signal(signal.SIGTERM)
  assert p.wait(timeout=300) == 0, "".join(lines[-20:])
  out = "".join(lines)
  assert "stopped by signal 15 at step" in out, out[-2000:]
  # The console: no library INFO logging (absl's 'I1207 12:00:00...' lines) by default.
  assert not [l for l in lines if re.match(r"[IW]\d{4} ", l)], lines[:5]
  assert "checkpoints: " in out
  stopped = int(out.split("stopped by signal 15 at step ")[1].split(";")[0])
  assert 3 <= stopped < 400
  r = subprocess.run(cmd[:-1] + [f"--config.train.total_steps={stopped + 2}"], cwd=REPO,
                     capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  assert f"resumed from step {stopped}" in r.stdout
  assert f"step={stopped + 2} " in r.stdout
