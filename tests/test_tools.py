"""tools.inspect counts the paper's model without allocating it; tools.aot compiles the real
train step for a fake mesh and reports per-device memory (on the micro config here: the 14.7B
run's numbers are in launch/README.md)."""
import jax
import numpy as np

from helpers import micro_config
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
  c = micro_config()
  c.mesh.update(data=2, fsdp=2, expert=2, tensor=1)
  c.sharding_preset = "fsdp_expert"
  c.remat.policy = "full"
  r = aot.compile_step(c)
  assert jax.device_count() == 8 and r["mesh"] == {"data": 2, "fsdp": 2, "expert": 2, "tensor": 1}
  m = r["memory"]
  assert r["compile_seconds"] > 0 and m["argument"] > 0 and m["temp"] > 0
  assert m["total"] == m["argument"] + m["output"] + m["temp"] - m["alias"]
  assert r["involuntary_remat_warnings"] == r["xla_log"].count(aot.REMAT_WARNING)
