"""tools.inspect counts the paper's model without allocating it; tools.aot compiles the real
train step for a fake mesh and reports per-device memory (on the micro config here: the 14.7B
run's numbers are in launch/README.md); tools.linear_probe's probe and SAR-L2 denoising ratio."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import compiled_model, micro_config
from ringmoe_jax.config.load import load_config
from ringmoe_jax.tools import aot, inspect


def test_inspect_pretrain_14b_matches_the_paper(capsys):
  out = inspect.main(["--config=configs/pretrain_14b.py"])
  printed = capsys.readouterr().out
  assert f"total_params={out['total_params']}" in printed
  assert abs(out["total_params"] / 14.7e9 - 1) < 0.01
  assert abs(out["active_params"] / 2.4e9 - 1) < 0.05
  assert abs(out["submodel_params"] / 6.5e9 - 1) < 0.02
  kinds = out["params_special"] + out["params_collab"] + out["params_shared"]
  np.testing.assert_allclose(out["params_special"] / out["params_shared"], 16)
  np.testing.assert_allclose(out["params_collab"] / out["params_shared"], 4)
  assert kinds + out["params_routers"] + out["params_other"] == out["total_params"]
  assert 0.5e12 < out["flops_per_tile"] < 0.8e12


def test_scanned_and_unscanned_models_have_the_same_parameters():
  from ringmoe_jax.train.model import abstract_model, count_params  # pylint: disable=import-outside-toplevel
  c = load_config("pretrain_14b:size=base")
  scanned = count_params(abstract_model(c))
  c.remat.scan_blocks = False
  assert count_params(abstract_model(c)) == scanned


def test_aot_compiles_the_train_step_on_a_sharded_mesh():
  # The spectral patch embedding on (fsdp=4, expert=2): left unconstrained, its generated
  # (sensors, channels, k, D) kernel table came out sharded like the batch and was replicated
  # back for the gather (2 involuntary-remat warnings here, 2 at 14B on 256 devices), 0 since
  # models/patch_embed.py pins it replicated.
  c = micro_config()
  c.mesh.update(data=1, fsdp=4, expert=2, tensor=1)
  c.sharding_preset = "fsdp_expert"
  c.remat.policy = "full"
  c.model.patch_embed = "spectral"
  c.data.batch_size = 16
  r = aot.compile_step(c)
  assert jax.device_count() == 8 and r["mesh"] == {"data": 1, "fsdp": 4, "expert": 2, "tensor": 1}
  m = r["memory"]
  assert r["compile_seconds"] > 0 and m["argument"] > 0 and m["temp"] > 0
  assert m["total"] == m["argument"] + m["output"] + m["temp"] - m["alias"]
  assert r["involuntary_remat_warnings"] == r["xla_log"].count(aot.REMAT_WARNING)
  assert r["involuntary_remat_warnings"] == 0, r["xla_log"][-2000:]


def test_aot_set_overrides_config_fields_and_names_a_missing_one():
  from ringmoe_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  c = load_config("pretrain_14b")
  aot.apply_overrides(c, ["model.patch_embed=spectral", "data.batch_size=64",
                          "moe.capacity_factor=1.5"])
  assert (c.model.patch_embed, c.data.batch_size, c.moe.capacity_factor) == ("spectral", 64, 1.5)
  with pytest.raises(UserError, match="no field 'model.patch_embd'"):
    aot.apply_overrides(c, ["model.patch_embd=spectral"])
  with pytest.raises(UserError, match="expected KEY=VALUE"):
    aot.apply_overrides(c, ["model.patch_embed"])


def test_local_mean_reference_closed_forms():
  from ringmoe_jax.tools.linear_probe import local_mean  # pylint: disable=import-outside-toplevel
  obs = np.full((1, 12, 12, 1), 2.0)
  seen = np.ones_like(obs, bool)
  seen[:, 4:8, 4:8] = False  # a masked hole: the box average of the seen ring is still 2
  np.testing.assert_allclose(local_mean(obs, seen, 5), 2.0)
  obs[:, :, 6:] = 5.0  # right half brighter, and unseen: far boxes fall back to the tile mean
  seen = np.zeros_like(obs, bool)
  seen[:, :, :3] = True
  ref = local_mean(obs, seen, 3)
  np.testing.assert_allclose(ref[0, :, :3, 0], 2.0)
  np.testing.assert_allclose(ref[0, :, 8:, 0], 2.0)  # no seen pixel within 1 px: tile mean


def test_logistic_regression_separates_separable_classes():
  from ringmoe_jax.tools.linear_probe import logistic_regression  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 120)
  x = rng.normal(size=(120, 5)) * 0.3
  x[np.arange(120), y] += 3.0  # class c is bright in feature c
  pred = logistic_regression(x[:60], y[:60], x[60:], 3, steps=200)
  assert np.mean(pred == y[60:]) == 1.0


def test_probe_and_sar_l2_ratio_on_an_untrained_micro_model():
  from ringmoe_jax.tools import linear_probe as lp  # pylint: disable=import-outside-toplevel
  config = micro_config()
  # Initialised in one compiled program (the same as test_encoder's, from the session cache)
  # instead of op by op.
  model = compiled_model(config)
  batches = lp.probe_batches(config, 96, batch_size=48)
  probe = lp.linear_probe(model, batches)
  accs = [v["accuracy"] for k, v in probe.items() if k != "mean_accuracy"]
  assert accs and all(0.0 <= a <= 1.0 for a in accs)
  r = lp.sar_l2_denoise_ratio(model, config, batches)
  assert r["pixels"] > 0 and np.isfinite(r["ratio"]) and r["ratio"] > 0
  # Context averaging cannot reach the speckled observation at masked pixels of these scenes.
  assert 1.0 < r["local_mean_ratio"] < 10.0
  # Removing the speckle's log bias helps a little; combining it with even an untrained
  # decoder's prediction (the fitted prior is then wide) costs almost nothing.
  assert 0.9 < r["observation_only_ratio"] < 1.0
  assert r["posterior_ratio"] < 1.01 * r["observation_only_ratio"]
  assert r["posterior_prior_width"] > 0


def test_profile_summary_self_times_kinds_and_sources(tmp_path):
  from ringmoe_jax.tools import profile_summary as ps  # pylint: disable=import-outside-toplevel

  def f(a):
    looped = jax.lax.fori_loop(0, 3, lambda i, x: jnp.tanh(x @ a), a)
    return jnp.sort(looped, axis=0).sum()
  a = jnp.ones((256, 256)) * 0.01
  fn = jax.jit(f)
  fn(a).block_until_ready()
  start = time.perf_counter()
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    fn(a).block_until_ready()
  wall = time.perf_counter() - start
  hlo = fn.lower(a).compile().as_text()
  times = ps.op_self_times(str(tmp_path), "jit_f")
  assert times and all(t >= 0 for t in times.values())
  assert sum(times.values()) <= wall  # self times: the loop's body is not counted twice
  infos = ps.op_infos(hlo)
  kinds = {infos[n].kind for n in times if n in infos}
  assert {"matmul", "sort"} <= kinds, kinds
  assert any(infos[n].source == "test_tools.py" for n in times if n in infos)
  report = ps.summarize(str(tmp_path), hlo)
  assert "by kind:" in report and "matmul" in report and "top ops:" in report
  with pytest.raises(FileNotFoundError, match="perfetto_trace"):
    ps.find_trace(str(tmp_path / "nothing_here"))
