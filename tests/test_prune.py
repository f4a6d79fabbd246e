"""Expert pruning (ringmoe_jax/prune): plans, exact identities of the transforms, the CLI."""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import micro_config, micro_finetune_config, write_pretrain_checkpoint
from ringmoe_jax.errors import UserError
from ringmoe_jax.moe.layer import HierarchicalMoE, MoEConfig
from ringmoe_jax.prune import merge as merge_lib
from ringmoe_jax.prune import plan as plan_lib
from ringmoe_jax.prune import run, transforms
from ringmoe_jax.prune.__main__ import main as prune_main
from ringmoe_jax.prune.plan import BlockPlan, compute_plan, parse_plan, pruned_config
from ringmoe_jax.train.model import abstract_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Hand-made routing counts {router: (L, E)} of the micro model (5 blocks, 4 collaborative
# experts, 4 modalities x 4 special ones), and the collaborative experts `frequency` keeps:
# most used first, ties to the lower id, listed in ascending id order.
HAND_COUNTS = np.array([[5, 1, 9, 9], [0, 0, 0, 0], [3, 7, 2, 8], [1, 2, 3, 4], [10, 0, 0, 10]],
                       np.float64)
HAND_SPECIAL = np.arange(5 * 16, dtype=np.float64).reshape(5, 16) % 7
HAND_KEPT = {0.5: [[2, 3], [0, 1], [1, 3], [2, 3], [0, 3]], 0.25: [[2], [0], [3], [3], [0]]}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A micro pre-training workdir at step 2 in the trainer's format with the hand-made routing
  counts (helpers.write_pretrain_checkpoint: no training step to compile)."""
  return write_pretrain_checkpoint(str(tmp_path_factory.mktemp("prune") / "src"), micro_config(),
                                   counts={"special": HAND_SPECIAL, "collab": HAND_COUNTS})


def _random_params(model, seed=0):
  """Numpy values for every Param of an abstract model (no init program to compile)."""
  rng = np.random.default_rng(seed)
  params = nnx.state(model, nnx.Param).to_pure_dict()
  return jax.tree.map(lambda x: (0.3 * rng.standard_normal(x.shape)).astype(x.dtype), params)


def _bind(model_fn, params):
  """An nnx model built by `model_fn` (abstractly) holding `params`."""
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(model_fn)
  graphdef, state = nnx.split(abstract, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


# ------------------------------------------------------------------------------------ plans


def test_plan_parsing_and_bad_input_messages(tmp_path):
  steps = parse_plan("modality=opt,ms,frequency=0.25,merge=svd")
  assert [(s.method, s.value) for s in steps] == [
      ("modality", ("opt", "ms")), ("frequency", 0.25), ("merge", "svd")]
  for text, msg in [("frequency=0", r"\(0, 1\]"), ("frequency=1.5", r"\(0, 1\]"),
                    ("modality=rgb", "unknown modality 'rgb'"),
                    ("merge=svd,frequency=0.5", "order"), ("merge=best", "merge='best'"),
                    ("dropout=0.5", "unknown method")]:
    with pytest.raises(UserError, match=msg):
      parse_plan(text)
  c = micro_config()
  with pytest.raises(UserError, match="no routing counts.*--calibration=simulator"):
    compute_plan(c, "frequency=0.5", None, sizes=False)
  zeros = {"collab": np.zeros((5, 4)), "special": np.zeros((5, 16))}
  with pytest.raises(UserError, match="no routing counts"):
    compute_plan(c, "frequency=0.5", zeros, sizes=False)
  sub = pruned_config(c, compute_plan(c, "modality=opt", sizes=False).config_overrides)
  with pytest.raises(UserError, match="has no ms"):
    compute_plan(sub, "modality=ms", sizes=False)
  (tmp_path / "out").mkdir()
  with pytest.raises(UserError, match="exists; pass --overwrite"):
    run.check_output(str(tmp_path / "out"), overwrite=False)
  for flags, msg in [(["--calibration=dataset"], "expected one of simulator"),
                     (["--calibration=simulator", "--calibration_batches=0"], ">= 1")]:
    with pytest.raises(UserError, match=msg):  # refused before any checkpoint is read
      prune_main(["--checkpoint=/nonexistent", "--plan=frequency=0.5",
                  f"--output={tmp_path / 'x'}", *flags])


def test_output_appears_atomically(tmp_path):
  out = str(tmp_path / "pruned")

  def killed(tmp):
    with open(os.path.join(tmp, "half"), "w") as f:
      f.write("x")
    raise KeyboardInterrupt  # a transform stopped half-way

  with pytest.raises(KeyboardInterrupt):
    run.write_atomically(out, False, killed)
  assert os.listdir(tmp_path) == []  # neither DIR nor DIR.tmp-<pid>
  run.write_atomically(out, False, lambda tmp: open(os.path.join(tmp, "ok"), "w").close())
  assert os.listdir(out) == ["ok"]


def test_pretrain_14b_plan_sizes_without_allocating(capsys):
  from ringmoe_jax.config.load import load_config  # pylint: disable=import-outside-toplevel
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
  plan = compute_plan(load_config("pretrain_14b"), "modality=opt,frequency=0.25,merge=svd",
                      None, require_counts=False)
  print(plan.describe())
  grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
  assert grown_gib < 2, grown_gib  # 14.78B float32 parameters would be 59 GB
  total = [s["total_params"] / 1e9 for s in plan.sizes]
  active = [s["active_params"] / 1e9 for s in plan.sizes]
  assert 14.7 < total[0] < 14.85 and 6.4 < total[1] < 6.7 and 4.3 < total[2] < 4.6
  assert 1.0 < total[3] < 1.1 and active[3] == total[3]  # dense: every parameter active
  out = capsys.readouterr().out
  assert "step merge=svd: total_params=" in out and "ranks [299, 299" in out


# -------------------------------------------------------------------------------- frequency

def test_frequency_keeps_hand_computed_experts_and_slices_the_router():
  c = micro_config()
  counts = {"collab": HAND_COUNTS, "special": np.ones((5, 16))}
  params = _random_params(abstract_model(c))
  for fraction, kept in HAND_KEPT.items():
    plan = compute_plan(c, f"frequency={fraction}", counts, sizes=False)
    assert [bp.collab for bp in plan.blocks] == kept
    assert plan.config_overrides == {"moe.num_collab": len(kept[0])}
    new = transforms.apply_plan(params, plan)
    for bp in plan.blocks:
      old_moe = transforms.block_moe(params["encoder"], bp.stage, bp.where)
      new_moe = transforms.block_moe(new["encoder"], bp.stage, bp.where)
      np.testing.assert_array_equal(new_moe["collab_router"]["kernel"],
                                    old_moe["collab_router"]["kernel"][:, :, kept[bp.block]])
      np.testing.assert_array_equal(new_moe["collab"]["w1"],
                                    old_moe["collab"]["w1"][kept[bp.block]])
      np.testing.assert_array_equal(new_moe["special"]["w2"], old_moe["special"]["w2"])
    sliced = transforms.apply_counts(counts, plan)["collab"]
    np.testing.assert_array_equal(sliced, [HAND_COUNTS[b, k] for b, k in enumerate(kept)])


def _layer_fn(cfg, dim=16, hidden=64):
  return lambda: HierarchicalMoE(dim, hidden, cfg, rngs=nnx.Rngs(0))


def _run_layer(layer, x, modality):
  graphdef, state = nnx.split(layer)

  @jax.jit
  def fwd(state, x, modality):
    return nnx.merge(graphdef, state)(x, modality, train=False)
  return jax.tree.map(np.asarray, fwd(state, x, modality))


def test_tokens_route_only_to_kept_experts():
  base = dict(num_special=0, num_shared=1, top_k=1, dispatcher="dropless_blocked")
  full_cfg = MoEConfig(num_collab=4, **base)
  params = _random_params(nnx.eval_shape(_layer_fn(full_cfg)), seed=1)
  kept = [1, 3]
  bp = BlockPlan(0, 0, ["tail", 0], 16, 64, {}, kept)
  plan = compute_plan(micro_config(), "frequency=0.5", {"collab": HAND_COUNTS}, sizes=False)
  new = transforms.transform_block(params, bp, plan)
  layer = _bind(_layer_fn(MoEConfig(num_collab=2, **base)), new)
  x = np.random.default_rng(2).standard_normal((64, 16)).astype(np.float32)
  y, aux = _run_layer(layer, x, np.zeros(64, np.int32))
  # Hand reference: softmax over the kept experts' logits only, top-1, gate * expert + shared.
  logits = x.astype(np.float64) @ params["collab_router"]["kernel"][0][:, kept]
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  choice = probs.argmax(1)
  ffn = lambda kind, i: tuple(params[kind][k][i] for k in ("w1", "b1", "w2", "b2"))
  want = merge_lib.ffn_apply(x, ffn("shared", 0))
  for j, e in enumerate(kept):
    rows = choice == j
    want[rows] += probs[rows, j:j + 1] * merge_lib.ffn_apply(x[rows], ffn("collab", e))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(aux["collab"]["tokens_per_expert"], np.bincount(choice, None, 2))
  full_choice = (x @ params["collab_router"]["kernel"][0]).argmax(1)
  assert set(full_choice) - set(kept), "some tokens' first choice was a dropped expert"


# ------------------------------------------------------------------------------ merge maths


def _ffn(rng, d=8, f=32):
  return (rng.standard_normal((d, f)), rng.standard_normal(f), rng.standard_normal((f, d)),
          rng.standard_normal(d))


def test_svd_factors_full_rank_exact_and_eckart_young():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((20, 8))
  for _ in range(3):
    ffn = _ffn(rng)
    f = ffn[0].shape[1]
    np.testing.assert_allclose(merge_lib.ffn_apply(x, merge_lib.reconstruct(ffn, f)),
                               merge_lib.ffn_apply(x, ffn), rtol=1e-10, atol=1e-10)
    k = f // 4  # d_ff / N with N = 4 experts
    _, _, _, _, s = merge_lib.svd_factors(ffn, k)
    err = np.linalg.norm(merge_lib.stacked(ffn) - merge_lib.stacked(merge_lib.reconstruct(ffn, k)))
    np.testing.assert_allclose(err, np.sqrt(np.sum(s[k:] ** 2)), rtol=1e-10)
    assert err > 0.1  # something really was discarded
    # Any other rank-k projection of the hidden space loses more (Eckart-Young is the optimum).
    q, _ = np.linalg.qr(rng.standard_normal((f, k)))
    assert np.linalg.norm(merge_lib.stacked(ffn) @ (np.eye(f) - q @ q.T)) > err
  members = [_ffn(rng) for _ in range(4)]
  dense = merge_lib.merge_svd(members, [8, 8, 8, 8])
  assert [a.shape for a in dense] == [(8, 32), (32,), (32, 8), (8,)]  # the normal width d_ff


def test_one_collab_expert_plus_shared_fuse_into_one_dense_ffn():
  """After frequency keeps one collaborative expert (gate = softmax over one = 1), that branch
  plus the shared FFN == one dense FFN of width 2 d_ff (merge=sum:beside)."""
  base = dict(num_special=0, top_k=1, dispatcher="dropless_blocked")
  pruned_cfg = MoEConfig(num_collab=1, num_shared=1, **base)
  params = _random_params(nnx.eval_shape(_layer_fn(pruned_cfg)), seed=3)
  plan = compute_plan(micro_config(**{"moe.num_special": 0}), "frequency=0.25,merge=sum:beside",
                      {"collab": HAND_COUNTS}, sizes=False)
  assert plan.config_overrides["moe.shared_mlp_ratio"] == 8.0  # 2 x mlp_ratio 4
  bp = BlockPlan(0, 0, ["tail", 0], 16, 64, {}, [0],
                 merge={"method": "sum", "beside": True, "members": ["collab/0"],
                        "weights": [1.0], "hidden": 64})
  dense = transforms.transform_block(params, bp, plan)
  assert set(dense) == {"shared"} and dense["shared"]["w1"].shape == (1, 16, 128)
  dense_layer = _bind(_layer_fn(MoEConfig(num_collab=0, num_shared=1, shared_mlp_ratio=8.0,
                                          **base)), dense)
  x = np.random.default_rng(4).standard_normal((48, 16)).astype(np.float32)
  mod = np.zeros(48, np.int32)
  y_moe, _ = _run_layer(_bind(_layer_fn(pruned_cfg), params), x, mod)
  y_dense, _ = _run_layer(dense_layer, x, mod)
  np.testing.assert_allclose(y_dense, y_moe, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- modality sub-model


def _encoder(model_fn, params):
  """(jitted pixels, modality -> eval-mode features, the model)."""
  model = _bind(model_fn, params)
  graphdef, state = nnx.split(model.encoder)

  @jax.jit
  def enc(state, pixels, modality):
    feats, _ = nnx.merge(graphdef, state)(pixels, modality, train=False)
    return feats
  return lambda p, m: [np.asarray(f) for f in enc(state, p, m)], model


def test_modality_submodel_features_equal_full_model(source):
  from ringmoe_jax.train.model import make_model  # pylint: disable=import-outside-toplevel
  src = run.Source(source)
  try:
    params = src.restore_params()
    config = src.config
  finally:
    src.close()
  # Eval mode, dropless: no token is dropped in either model.
  config.moe.dispatcher = "dropless_blocked"
  plan = compute_plan(config, "modality=opt", None, sizes=False)
  sub_config = pruned_config(config, plan.config_overrides)
  sub_params = transforms.apply_plan(params, plan)
  pixels = np.random.default_rng(0).standard_normal((4, 32, 32, 8)).astype(np.float32)
  opt = np.zeros(4, np.int32)
  full_enc, _ = _encoder(lambda: make_model(config), params)
  sub_enc, sub_model = _encoder(lambda: make_model(sub_config), sub_params)
  for a, b in zip(full_enc(pixels, opt), sub_enc(pixels, opt)):
    np.testing.assert_array_equal(b, a)  # bit for bit
  mixed = np.array([0, 0, 0, 1], np.int32)  # the last tile is ms
  for f in sub_enc(pixels, mixed):  # under jit a dropped modality's tile is NaN, never plausible
    assert np.isnan(f[3]).all() and np.isfinite(f[:3]).all()
  with pytest.raises(UserError, match="tiles of modality ms: this model has only opt"):
    sub_model.encoder(pixels, mixed, train=False)
  # Its pre-training objective has terms for its own modality only (the dropped ones' channels
  # exceed its prediction's): continued pre-training of a sub-model (benchmarks/prune.py).
  from ringmoe_jax.objectives.objective import Objective  # pylint: disable=import-outside-toplevel
  obj = Objective.from_config(sub_config, sub_model)
  ko = sub_model.out_channels[0]
  batch = {"pixels": pixels, "raw": np.abs(pixels), "valid": np.ones((4, 32, 32), np.float32),
           "modality": opt, "sensor": np.zeros(4, np.int32)}
  terms = jax.jit(lambda pred, batch: obj.terms(
      pred, None, {"balance_loss": jnp.zeros(()), "routing": {}}, batch,
      np.ones((4, 8, 8), bool), jnp.zeros(()))[0])(np.zeros((4, 32, 32, ko), np.float32), batch)
  assert np.isfinite(terms) and terms > 0
  ms_config = pruned_config(config, plan.config_overrides)
  ms_config.data.sensors = ("gaofen2_pms", "gaofen1_wfv")
  with pytest.raises(UserError, match="'gaofen1_wfv' is ms but this model has only opt"):
    abstract_model(ms_config)


# ------------------------------------------------------------------------------------- CLI


def test_cli_end_to_end_output_fine_tunes(source, tmp_path, capsys):
  from ringmoe_jax.tools import inspect as inspect_tool  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train import trainer  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / "pruned")
  text = "modality=opt,ms,sar_l2,frequency=0.5,merge=svd"  # the classification task's modalities
  plan = prune_main([f"--checkpoint={source}", f"--plan={text}", f"--output={out}"])
  printed = capsys.readouterr().out
  assert "step merge=svd: total_params=" in printed and f"wrote {out}" in printed
  assert sorted(os.listdir(tmp_path)) == ["pruned"]  # the .tmp-<pid> folder was renamed
  assert sorted(os.listdir(out)) == ["checkpoints", "config.json", "prune_plan.json"]
  with open(os.path.join(out, "prune_plan.json")) as f:
    saved = json.load(f)
  assert saved["config_overrides"] == plan.config_overrides == {
      "model.modalities": ["opt", "ms", "sar_l2"], "moe.num_collab": 0, "moe.num_special": 0,
      "moe.num_shared": 1, "moe.shared_mlp_ratio": None}
  # 3 modalities x 4 special + 2 collab (the hand-computed ones) + 1 shared = 15 members,
  # d_ff / 15 hidden units each.
  for bp, kept in zip(plan.blocks, HAND_KEPT[0.5]):
    assert [m for m in bp.merge["members"] if m.startswith("collab")] == [
        f"collab/{j}" for j in kept]
    assert len(bp.merge["members"]) == 15 and sum(bp.merge["ranks"]) == bp.hidden
  sizes = inspect_tool.main([f"--config={out}/config.json"])
  assert sizes["total_params"] == plan.sizes[-1]["total_params"]
  # configs/pruned.py:DIR: the --config of evaluate / the linear probe / main for the output.
  pruned_py = os.path.join(REPO, "configs", "pruned.py")
  assert inspect_tool.main([f"--config={pruned_py}:{out}"]) == sizes
  with pytest.raises(UserError, match="no .*config.json"):
    inspect_tool.main([f"--config={pruned_py}:{tmp_path}"])
  meta = run.Source(out)
  try:
    assert meta.meta["pruned"]["plan"] == text and meta.meta["sensors"]
    assert meta.meta["routing_counts"] == {} and meta.step == 2
  finally:
    meta.close()
  with pytest.raises(UserError, match="exists; pass --overwrite"):
    prune_main([f"--checkpoint={source}", f"--plan={text}", f"--output={out}"])
  # The output is a pre-training run that fine-tuning takes as init_checkpoint (with the
  # smaller model's encoder fields, prune_plan.json's config_overrides).
  ft = micro_finetune_config("classification", **{"init_checkpoint": out,
                                                   "train.total_steps": 1,
                                                   **plan.config_overrides})
  result = trainer.train(ft, str(tmp_path / "ft"))
  assert result["step"] == 1 and math.isfinite(result["losses"][-1])
  assert "encoder from " + out in capsys.readouterr().out
  # Bad input through the real entry point: one `error:` line, exit 2.
  proc = subprocess.run(
      [sys.executable, "-m", "ringmoe_jax.prune", f"--checkpoint={source}",
       "--plan=frequency=1.5", f"--output={tmp_path / 'x'}"],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "(0, 1]" in lines[0], lines


def test_calibration_counts_routing_like_training_and_feed_frequency(source, tmp_path, capsys):
  """--calibration=simulator: eval-mode routing of unseen simulator tiles, counted per block and
  router in meta['routing_counts']' layout: every token top_k times per router."""
  from ringmoe_jax.prune import calibrate  # pylint: disable=import-outside-toplevel
  src = run.Source(source)
  try:
    config, registry, task = src.config, src.registry, src.task()
    params = src.restore_params()
  finally:
    src.close()
  batches = calibrate.simulator_batches(config, registry, 1)
  counts = calibrate.routing_counts(calibrate.bind(config, task, params), batches)
  mods = batches[0]["modality"]
  assert set(mods) == {0, 1, 2, 3} and len(mods) == 32
  grid = config.model.img_size // config.model.patch_size
  tokens = np.array([grid ** 2 // 4 ** stage for stage, _ in plan_lib.block_layout(config)])
  k = config.moe.top_k
  assert counts["collab"].shape == (5, 4) and counts["special"].shape == (5, 16)
  np.testing.assert_array_equal(counts["collab"].sum(1), 32 * tokens * k)
  for m in range(4):  # each modality's tokens go to its own four special experts only
    np.testing.assert_array_equal(counts["special"][:, 4 * m:4 * m + 4].sum(1),
                                  np.sum(mods == m) * tokens * k)
  # The CLI: the same pass (32 tiles) replaces the hand-made counts; frequency plans from it.
  out = str(tmp_path / "calibrated")
  plan = prune_main([f"--checkpoint={source}", "--plan=frequency=0.5", f"--output={out}",
                     "--calibration=simulator", "--calibration_batches=1"])
  assert "calibration=simulator" in capsys.readouterr().out
  order = np.argsort(-counts["collab"], axis=1, kind="stable")[:, :2]
  assert [bp.collab for bp in plan.blocks] == [sorted(r.tolist()) for r in order]
  saved = run.Source(out)
  try:
    assert saved.meta["pruned"]["calibration"] == "simulator:1"
    np.testing.assert_array_equal(np.asarray(saved.counts["collab"]),
                                  np.take_along_axis(counts["collab"],
                                                     np.sort(order, axis=1), axis=1))
  finally:
    saved.close()
