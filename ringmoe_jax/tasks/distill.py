"""Knowledge distillation of a pruned model (student) from the model it was pruned from (teacher).

Selected by `config.distill.teacher` (a training run's workdir; configs/pruned.py:DIR,distill=1
fills it from the pruned workdir's record of its source). It is pre-training with another loss:
the same data (the pruned config's data section: a modality sub-model sees its own sensors),
the same model (SimMIMModel, its decoders kept for later pre-training or fine-tuning), the same
AdamW optimizer, trainer, checkpoints and resume, so `name` stays 'pretrain' (the checkpoint is
a pre-training run for `init_checkpoint`, the linear probe and the pruning transform).

The teacher: the encoder params of the teacher run's checkpoint (`distill.teacher_step`, -1 =
latest), restored once by the trainer (`frozen_inputs`: Orbax partial restore of
params/encoder, the shape check of init_from, placed in the student's sharding rules on the
same mesh). They are an input of the jitted step, not part of the train state: never
differentiated, never in the optimizer, never checkpointed; a resume restores them again from
the same (unchanged) teacher checkpoint, so it is bit-identical.

Loss (one step, batch of the pre-training pipeline; no SimMIM mask: the features are matched on
the whole tile, which is what a pruned encoder is used on downstream):
  student features s_i = student.encoder(pixels, train=True), i = 1..4 stages (B, h_i, w_i, C_i)
  teacher features t_i = teacher encoder(pixels, train=False) (eval routing, stop_gradient)
  distill_i = sum_valid ||s_i - t_i||^2 / sum_valid ||t_i||^2  (normalised MSE over the tokens
              with a valid pixel, the encoder's own token validity per stage)
  loss = distill.weight * mean_i distill_i + moe.balance_weight * balance(student)
         [+ distill.simmim_weight * the pre-training objective (simmim_loss), when > 0]
Why normalised MSE and not cosine: the stage maps feed the next stage and every head by their
values, not only their directions, so a student must match their scale too (cosine ignores it);
dividing by the teacher's energy per stage puts the four stages (residual streams of growing
norm, the last one final-normed) on one scale, 1.0 = a student that outputs zeros, 0 = equal
features. Why all four stages: UperNet-style heads read every level (tasks/segmentation.py).
The student's routing counts (train state) come from the distillation forward.
"""
from __future__ import annotations

import os
import types
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ringmoe_jax.errors import UserError
from ringmoe_jax.objectives.simmim import simmim_loss
from ringmoe_jax.tasks.pretrain import Pretrain

_EPS = 1e-12


def teacher_of(config) -> str:
  """config.distill.teacher ('' when the config does not distil)."""
  d = config.get("distill", None)
  return "" if d is None else str(d.get("teacher", "") or "")


def token_valid(valid: jax.Array, patch: int, num_stages: int) -> list[jax.Array]:
  """valid (B, H, W) -> per stage (B, H/p/2^i, W/p/2^i) float32: a token with any valid pixel
  (the encoder's own rule, models/swin.py)."""
  b, hh, ww = valid.shape
  v = valid.reshape(b, hh // patch, patch, ww // patch, patch).max(axis=(2, 4)) > 0
  out = [v]
  for _ in range(num_stages - 1):
    bb, h, w = v.shape
    v = v.reshape(bb, h // 2, 2, w // 2, 2).max(axis=(2, 4))
    out.append(v)
  return [x.astype(jnp.float32) for x in out]


def feature_loss(student: list[jax.Array], teacher: list[jax.Array],
                 valid: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Normalised MSE per stage (module docstring). student / teacher: per stage (B, h, w, C);
  valid: per stage (B, h, w) float32 -> (mean over stages (), per stage (S,))."""
  per = []
  for s, t, w in zip(student, teacher, valid):
    s, t = s.astype(jnp.float32), t.astype(jnp.float32)
    err = jnp.sum(jnp.sum(jnp.square(s - t), -1) * w)
    ref = jnp.sum(jnp.sum(jnp.square(t), -1) * w)
    per.append(err / jnp.maximum(ref, _EPS))
  per = jnp.stack(per)
  return jnp.mean(per), per


def _fit_channels(x: jax.Array | None, c: int) -> jax.Array | None:
  """(..., C) -> (..., c): zero-padded or cut. The teacher's pixel tensor may be wider than the
  student's (a modality sub-model's Cmax is its own modalities' largest channel count); the
  channels past a modality's count are ignored by the encoder, so padding changes nothing."""
  if x is None or x.shape[-1] == c:
    return x
  if x.shape[-1] > c:
    return x[..., :c]
  pad = [(0, 0)] * (x.ndim - 1) + [(0, c - x.shape[-1])]
  return jnp.pad(x, pad)


# How the MoE runs on this machine and mesh, not what the model is: the teacher takes the
# student run's (its own may name a dispatcher for another backend), the rest from its run.
RUNTIME_FIELDS = {"moe": ("dispatcher", "expert_parallel", "dropless_block_sizes"),
                  "mesh": ("route_per_shard",)}


class Teacher:
  """The teacher run: its config, encoder graph (abstract) and checkpoint step; `load` restores
  its encoder params onto a mesh."""

  def __init__(self, workdir: str, step: int, registry, runtime=None):
    """runtime: the student's config, whose RUNTIME_FIELDS the teacher runs with."""
    # pylint: disable=import-outside-toplevel
    from ringmoe_jax.prune.plan import load_config_json
    from ringmoe_jax.train.checkpoint import open_run
    from ringmoe_jax.train.model import input_channels, make_encoder
    ckpt, self.step, meta = open_run(workdir, flag="distill.teacher",
                                     step=None if step < 0 else step,
                                     expected="the run the model was pruned from")
    ckpt.close()
    if "config" not in meta:
      raise UserError(f"distill.teacher={workdir}: the checkpoint meta has no config")
    self.workdir = os.path.abspath(workdir)
    self.config = load_config_json(meta["config"])
    for section, fields in RUNTIME_FIELDS.items():
      for k in fields:
        if runtime is not None and k in runtime.get(section, {}) and k in self.config[section]:
          self.config[section][k] = runtime[section][k]
    self.registry = registry
    with nnx.use_eager_sharding(False):
      encoder = nnx.eval_shape(lambda: make_encoder(self.config, nnx.Rngs(0), registry))
    self.graphdef, self.abstract = nnx.split(encoder, nnx.Param)
    self.channels = input_channels(self.config, registry)
    self.cfg = encoder.cfg

  def describe(self) -> str:
    return f"{self.workdir} step {self.step}"

  def load(self, mesh, rules) -> dict[str, Any]:
    """The teacher's encoder params (pure dict), in `rules`' shardings on `mesh`."""
    # pylint: disable=import-outside-toplevel
    from ringmoe_jax.parallel.sharding import state_shardings
    from ringmoe_jax.train.init_from import PretrainedRun
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          self.abstract.to_pure_dict())
    shardings = state_shardings(self.abstract, rules, mesh).to_pure_dict()
    placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          shapes, shardings)
    # init_from's partial restore and shape check, into a stand-in for a StateBuilder whose
    # params are the teacher encoder only.
    run = PretrainedRun(self.workdir, flag="distill.teacher", step=self.step,
                        expected="the run the model was pruned from")
    stand_in = types.SimpleNamespace(abstract={"params": {"encoder": placed}})
    state = run.load_encoder_into({"params": {"encoder": shapes}}, stand_in, self.config)
    return state["params"]["encoder"]

  def features(self, params, batch) -> list[jax.Array]:
    """Eval-mode stage maps of the teacher for a student batch; no gradient."""
    state = jax.tree.map(lambda x: x, self.abstract)
    nnx.replace_by_pure_dict(state, params)
    encoder = nnx.merge(self.graphdef, state)
    feats, _ = encoder(_fit_channels(batch["pixels"], self.channels), batch["modality"],
                       sensor=batch.get("sensor"), mask=None, valid=batch["valid"],
                       train=False, channels=_fit_channels(batch.get("channels"), self.channels))
    return [jax.lax.stop_gradient(f) for f in feats]


class Distill(Pretrain):
  """Pre-training whose loss is feature matching against a teacher (module docstring)."""
  log_keys = ("distill_loss", "balance_loss", "recon_loss")

  def __init__(self, config, registry):
    self.registry = registry
    d = config.distill
    self.weight = float(d.get("weight", 1.0))
    self.simmim_weight = float(d.get("simmim_weight", 0.0))
    if self.weight < 0 or self.simmim_weight < 0:
      raise UserError(f"distill.weight={self.weight}, distill.simmim_weight="
                      f"{self.simmim_weight}: weights must be >= 0")
    self.teacher = Teacher(teacher_of(config), int(d.get("teacher_step", -1)), registry,
                           runtime=config)
    if tuple(self.teacher.cfg.depths) != tuple(config.model.depths) or int(
        self.teacher.config.model.embed_dim) != int(config.model.embed_dim):
      raise UserError(f"distill.teacher={self.teacher.workdir}: its encoder (depths "
                      f"{tuple(self.teacher.cfg.depths)}, embed_dim "
                      f"{self.teacher.config.model.embed_dim}) has other stage shapes than "
                      f"this model's ({tuple(config.model.depths)}, {config.model.embed_dim})")

  def frozen_inputs(self, mesh, rules):
    """Inputs of every step that do not train: the teacher's encoder params (train/step.py)."""
    return self.teacher.load(mesh, rules)

  def loss(self, model, batch, key, config, *, train: bool = True, frozen=None):
    if frozen is None:
      raise ValueError("the distillation loss needs the teacher params (frozen_inputs)")
    enc = model.encoder
    feats, aux = enc(batch["pixels"], batch["modality"], sensor=batch.get("sensor"), mask=None,
                     valid=batch["valid"], train=train, channels=batch.get("channels"))
    teacher = self.teacher.features(frozen, batch)
    valid = token_valid(batch["valid"], int(enc.cfg.patch_size), len(feats))
    distill, per_stage = feature_loss(feats, teacher, valid)
    balance = aux["balance_loss"]
    loss = self.weight * distill + float(config.moe.balance_weight) * balance
    terms = {"distill_loss": distill, "balance_loss": balance,
             **{f"distill_stage{i}": v for i, v in enumerate(per_stage)}}
    if self.simmim_weight > 0:
      mim, mim_aux = simmim_loss(model, batch, key, config, train=train, registry=self.registry)
      loss = loss + self.simmim_weight * mim
      mim_aux.pop("routing")
      terms.update({"recon_loss": mim_aux["recon_loss"],
                    "loss_per_modality": mim_aux["loss_per_modality"],
                    "mim_pixels_per_modality": mim_aux["mim_pixels_per_modality"]})
    terms["routing"] = aux["routing"]
    return loss, terms

  def step_metrics(self, aux):
    return super().step_metrics(aux) if "loss_per_modality" in aux else {}
