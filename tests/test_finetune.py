"""Fine-tuning through the one trainer: init from a pre-training run, modes, resume, evaluate,
meshes, and every finetune config's abstract build."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from helpers import (FINETUNE_MESHES, assert_layouts_match_single_device, finetune_one_step,
                     micro_config, micro_finetune_config, write_pretrain_checkpoint)
from ringmoe_jax.config.load import load_config
from ringmoe_jax.errors import UserError
from ringmoe_jax.evaluate import evaluate
from ringmoe_jax.models.features import encode_views
from ringmoe_jax.tasks import get_task
from ringmoe_jax.tools.linear_probe import load_trained_model
from ringmoe_jax.train import init_from, trainer
from ringmoe_jax.train.setup import abstract_task_model

TASK_CONFIGS = ("classification", "segmentation", "change_detection", "height", "detection")


@pytest.fixture(scope="module")
def pretrain_dir(tmp_path_factory):
  """A micro pre-training workdir (its init state saved as step 2 in the trainer's format, no
  training step compiled): the init_checkpoint of the fine-tunes below. Another seed than the
  fine-tunes': an encoder that was not restored differs from it."""
  return write_pretrain_checkpoint(str(tmp_path_factory.mktemp("pretrain")),
                                   micro_config(seed=1234))


def _params(result):
  return jax.device_get(result["state"]["params"])


def test_frozen_finetune_keeps_the_restored_encoder_bit_identical(pretrain_dir, tmp_path,
                                                                  capsys):
  c = micro_finetune_config("classification", "mode=frozen",
                            **{"train.total_steps": 2, "train.eval_every": 2})
  c.init_checkpoint = pretrain_dir
  out = trainer.train(c, str(tmp_path / "ft"))
  printed = capsys.readouterr().out
  assert "mode frozen" in printed and "encoder from" in printed and "eval step=2 oa=" in printed
  pre_config = micro_config()
  pre_config.moe.dispatcher = c.moe.dispatcher  # the fine-tune's program, to compare features
  pre, _ = load_trained_model(pre_config, pretrain_dir)
  want = jax.device_get(nnx.state(pre.encoder, nnx.Param).to_pure_dict())
  got = _params(out)
  jax.tree.map(np.testing.assert_array_equal, got["encoder"], want)
  assert 0.0 <= out["eval"]["oa"] <= 1.0 and "macro_f1" in out["eval"]
  # The restored encoder computes the pre-training model's features on the same batch.
  task = get_task(c)
  batch = task.make_dataset(c, trainer.build_registry(c), "eval", batch_size=8)[0]
  ft = abstract_task_model(c, task)
  state = nnx.state(ft, nnx.Param)
  nnx.replace_by_pure_dict(state, got)
  ft = nnx.merge(nnx.graphdef(ft), state)
  feats = nnx.jit(lambda enc, b: encode_views(enc, b, train=False)[0])(ft.encoder, batch)
  # The same jitted program on both encoders (same dispatcher): bit-identical parameters give
  # bit-identical features.
  ref = nnx.jit(lambda enc, b: encode_views(enc, b, train=False)[0])(pre.encoder, batch)
  for f, r in zip(feats, ref):
    np.testing.assert_array_equal(np.asarray(f), np.asarray(r))


def test_finetune_resume_is_bit_identical_and_evaluate_writes_eval_json(tmp_path, capsys):
  # One view (fusion=off): resume is about the trainer, and half the encoder to compile.
  c = micro_finetune_config("segmentation", "fusion=off", **{"train.total_steps": 3})
  straight = trainer.train(c, str(tmp_path / "a"))
  first = trainer.train(c, str(tmp_path / "b"), max_steps_this_run=1)
  assert first["step"] == 1
  resumed = trainer.train(c, str(tmp_path / "b"))
  assert resumed["step"] == 3
  jax.tree.map(np.testing.assert_array_equal, _params(straight), _params(resumed))
  capsys.readouterr()
  metrics = evaluate(c, str(tmp_path / "b"))
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].startswith("miou=")
  assert any(l.startswith("iou/water=") for l in lines)
  saved = json.loads((tmp_path / "b" / "eval.json").read_text())
  assert saved["task"] == "segmentation" and saved["step"] == 3
  assert saved["metrics"]["oa"] == pytest.approx(metrics["oa"])


@pytest.mark.parametrize("task, arg, keys", [
    ("change_detection", "pair=cross", ("f1", "iou", "precision", "recall", "oa")),
    ("height", "", ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")),
    ("classification", "multilabel,mode=adapter", ("map_macro", "map_micro", "f1_macro@0.5")),
])
def test_each_task_trains_and_evaluates(task, arg, keys, tmp_path, capsys):
  c = micro_finetune_config(task, arg, **{"train.total_steps": 1, "train.eval_every": 1})
  out = trainer.train(c, str(tmp_path))
  assert np.isfinite(out["losses"]).all()
  for k in keys:
    assert k in out["eval"], (k, sorted(out["eval"]))
  if "adapter" in arg:
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("parameters:")][0]
    frac = float(line.split("(")[1].split("%")[0])
    assert 0 < frac < 10, line


def test_init_checkpoint_shape_mismatch_names_the_parameter_and_field(pretrain_dir):
  c = micro_finetune_config("classification")
  c.model.embed_dim = 32
  c.init_checkpoint = pretrain_dir
  run = init_from.PretrainedRun(pretrain_dir)
  encoder = nnx.state(abstract_task_model(c, get_task(c)).encoder, nnx.Param).to_pure_dict()
  with pytest.raises(UserError, match=r"parameter encoder/.* has shape .* model.embed_dim: "
                                      r"checkpoint 16, config 32"):
    run.check_shapes(encoder, c)
  with pytest.raises(UserError, match="no checkpoints/ folder"):
    init_from.PretrainedRun(pretrain_dir + "/nothing")


def test_finetune_step_on_meshes_equals_single_device():
  # Fused optical + SAR segmentation (two views through the encoder, view fusion, UperNet);
  # capacity dispatch (micro_finetune_config): the same drops everywhere.
  assert_layouts_match_single_device(
      lambda cfg, devices: finetune_one_step(micro_finetune_config("segmentation"), cfg,
                                             devices), FINETUNE_MESHES)


@pytest.mark.parametrize("name", TASK_CONFIGS)
def test_every_finetune_config_builds_abstract(name):
  for arg in ("", "size=14b", "mode=adapter", "size=14b,mode=frozen"):
    c = load_config(f"finetune_{name}" + (f":{arg}" if arg else ""))
    task = get_task(c)
    model = abstract_task_model(c, task)
    enc = sum(x.size for x in jax.tree.leaves(nnx.state(model.encoder, nnx.Param)))
    head = sum(x.size for x in jax.tree.leaves(nnx.state(model.head, nnx.Param)))
    assert head > 0
    if "14b" in arg:
      assert 14.5e9 < enc < 14.9e9, enc  # the pre-training encoder, decoders left out
