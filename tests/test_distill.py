"""Distillation of a pruned model from its source (tasks/distill.py) through the one trainer."""
from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ringmoe_jax.config.load import load_config
from ringmoe_jax.errors import UserError
from ringmoe_jax.prune import run
from ringmoe_jax.tasks import get_task
from ringmoe_jax.tasks.distill import Distill
from test_prune import source  # noqa: F401  pylint: disable=unused-import  (the micro teacher run)

STEP = 2  # the source fixture's checkpoint step


def _distill_config(workdir, steps):
  c = load_config(f"pruned:{workdir},distill")
  # Capacity dispatch: a smaller program to compile than the dropless loop on 8 CPU devices.
  c.moe.dispatcher = "capacity"
  c.train.update(total_steps=STEP + steps, log_every=1, checkpoint_every=2)
  c.optim.update(schedule_steps=6, warmup_steps=1, base_lr=2e-4)
  return c


@pytest.fixture(scope="module")
def half(source, tmp_path_factory):  # noqa: F811
  out = str(tmp_path_factory.mktemp("distill") / "half")
  run.prune(source, "frequency=0.5", out, log=lambda _: None)
  return out


def _loss_on_one_device(config, workdir):
  """(task, loss(student params, teacher params) -> distillation loss on one fixed batch,
  teacher params on one device). Jitted on one device: a much smaller compile than the
  8-device step, and the same `task.loss` the trainer differentiates."""
  # pylint: disable=import-outside-toplevel
  import ml_collections
  from flax import nnx
  from ringmoe_jax.parallel.mesh import make_mesh
  from ringmoe_jax.parallel.sharding import rules_for
  from ringmoe_jax.train.setup import abstract_task_model
  from ringmoe_jax.train.trainer import build_registry, make_data
  registry = build_registry(config)
  task = get_task(config, registry)
  assert isinstance(task, Distill)
  one = make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, expert=1, tensor=1)),
                  jax.devices()[:1])
  teacher = task.teacher.load(one, rules_for(config))
  batch = {k: jnp.asarray(v) for k, v in next(make_data(config, registry, task)).items()}
  graphdef, abstract = nnx.split(abstract_task_model(config, task), nnx.Param)

  @jax.jit
  def loss(params, teacher_params):
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, params)
    _, aux = task.loss(nnx.merge(graphdef, state), batch, jax.random.PRNGKey(0), config,
                       train=True, frozen=teacher_params)
    return aux["distill_loss"]
  return lambda params: float(loss(params, teacher)), teacher


def _params(workdir):
  src = run.Source(workdir)
  try:
    return src.restore_params()
  finally:
    src.close()


def test_distillation_lowers_feature_loss_resumes_exactly_teacher_untouched(source, half,  # noqa: F811
                                                                            tmp_path):
  from ringmoe_jax.train.trainer import train  # pylint: disable=import-outside-toplevel
  teacher_before = _params(source)
  start = _params(half)
  c = _distill_config(half, 3)
  assert c.distill.teacher == source and c.distill.teacher_step == STEP
  loss, _ = _loss_on_one_device(c, half)
  second = str(tmp_path / "resumed")
  shutil.copytree(half, second)
  out = train(c, half)
  trained = jax.device_get(out["state"]["params"])
  # On one fixed batch (the steps' own losses are on different batches: too noisy to compare).
  before, after = loss(start), loss(trained)
  assert after < 0.95 * before, (before, after)
  # The teacher is an input, not state: the student's params only, the teacher run unchanged.
  assert set(trained) == set(start)
  jax.tree.map(np.testing.assert_array_equal, _params(source), teacher_before)
  # Stop after 2 steps, resume (a new config from the same workdir: the teacher is found again
  # in the distillation's own checkpoint meta) to step 5: bit for bit the straight run.
  train(_distill_config(second, 3), second, max_steps_this_run=2)
  resumed = train(_distill_config(second, 3), second)
  assert int(resumed["state"]["step"]) == STEP + 3
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed["state"]["params"]),
               trained)


def test_identity_student_has_zero_loss_and_mismatch_is_seen(source, tmp_path):  # noqa: F811
  ident = str(tmp_path / "ident")
  run.prune(source, "frequency=1.0", ident, log=lambda _: None)
  c = _distill_config(ident, 1)
  # Train-mode routing with the evaluation capacity: the student drops what the eval-mode
  # teacher drops, so an identical student has identical features.
  c.moe.capacity_factor = c.moe.eval_capacity_factor
  loss, _ = _loss_on_one_device(c, ident)
  student = _params(ident)
  same = loss(student)
  assert same < 1e-10, same
  # One expert's weights changed: the features differ and the loss sees it.
  flat, treedef = jax.tree_util.tree_flatten_with_path(student["encoder"])
  leaves = [np.array(x) for _, x in flat]
  i = next(i for i, (p, _) in enumerate(flat) if "collab" in jax.tree_util.keystr(p))
  leaves[i] = leaves[i] + 0.5
  bumped = {**student, "encoder": jax.tree_util.tree_unflatten(treedef, leaves)}
  assert loss(bumped) > 1e-4


def test_bad_teacher_is_one_line_error(half, tmp_path):
  c = _distill_config(half, 1)
  c.distill.teacher = str(tmp_path / "nowhere")
  with pytest.raises(UserError, match=r"^distill\.teacher=.*nowhere: no checkpoints/") as e:
    get_task(c)
  assert "\n" not in str(e.value)
  plain = str(tmp_path / "plain")
  os.makedirs(os.path.join(plain, "checkpoints"))
  shutil.copy(os.path.join(half, "config.json"), plain)
  with pytest.raises(UserError, match="no finished checkpoint"):
    load_config(f"pruned:{plain},distill")
