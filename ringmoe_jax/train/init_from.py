"""Start a fine-tune from a pre-training run: `config.init_checkpoint=PRETRAIN_WORKDIR`.

Only the encoder is taken (the pre-training decoders and optimizer state are not read: Orbax
partial restore of `params/encoder`), from the run's latest finished checkpoint, straight into
this run's shardings, so any mesh works. The run's sensor registry (ids and normalisation)
becomes this run's (`trainer.build_registry(saved=...)`). Encoder parameters the checkpoint does not have
(Convpass adapters) keep their fresh initialisation; a parameter whose shape differs is an error
naming it, both shapes and the config fields that differ.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from ringmoe_jax.errors import UserError
from ringmoe_jax.sensors.registry import SensorRegistry
from ringmoe_jax.train.checkpoint import open_run

# Encoder parameters that fine-tuning may add (not in a pre-training checkpoint).
NEW_IN_FINETUNING = ("adapter",)


def saved_registry(meta: Mapping[str, Any]) -> SensorRegistry | None:
  """The sensor registry a checkpoint's meta carries (None for a meta without one)."""
  sensors = meta.get("sensors")
  return None if sensors is None else SensorRegistry.from_dict(sensors)


def _flat(tree, prefix=()) -> dict[tuple[str, ...], Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, prefix + (str(k),)))
    return out
  return {prefix: tree}


def _config_diff(saved: Mapping[str, Any], config) -> list[str]:
  """'model.embed_dim: checkpoint 32, config 16' for each differing encoder field."""
  out = []
  for section in ("model", "moe"):
    ours = config[section].to_dict() if hasattr(config[section], "to_dict") else dict(config[section])
    theirs = saved.get(section, {})
    for k, v in ours.items():
      if k in theirs and _norm(theirs[k]) != _norm(v):
        out.append(f"{section}.{k}: checkpoint {theirs[k]!r}, config {v!r}")
  return out


def _norm(v):
  if isinstance(v, Mapping):
    return {k: _norm(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_norm(x) for x in v]
  return v


class PretrainedRun:
  """A pre-training (or fine-tuning) workdir whose latest checkpoint gives the encoder."""

  def __init__(self, workdir: str, *, flag: str = "init_checkpoint", step: int | None = None,
               expected: str = "a pre-training run"):
    """flag / expected: how errors name the setting (distillation's teacher uses this too);
    step: that checkpoint (None: the latest)."""
    self.workdir = os.path.abspath(workdir)
    self.flag = flag
    self._ckpt, self.step, self.meta = open_run(workdir, flag=flag, step=step,
                                                expected=expected)

  def describe(self) -> str:
    return f"{self.workdir} step {self.step}"

  def check_shapes(self, abstract_encoder, config) -> dict[tuple[str, ...], Any]:
    """Saved encoder leaves that this config's encoder takes; errors on a shape mismatch."""
    saved = _flat(self._ckpt.state_metadata(self.step)["params"].get("encoder", {}))
    if not saved:
      raise UserError(f"{self.flag}={self.workdir}: the checkpoint has no params/encoder")
    ours = _flat(abstract_encoder)
    diff = _config_diff(self.meta.get("config", {}), config)
    hint = ("; differing config fields: " + ", ".join(diff)) if diff else ""
    taken = {}
    for path, leaf in ours.items():
      name = "encoder/" + "/".join(path)
      if path not in saved:
        if any(n in name for n in NEW_IN_FINETUNING):
          continue
        raise UserError(f"{self.flag}={self.workdir}: parameter {name} {tuple(leaf.shape)} "
                        f"is not in the checkpoint{hint}")
      if tuple(saved[path].shape) != tuple(leaf.shape):
        raise UserError(f"{self.flag}={self.workdir}: parameter {name} has shape "
                        f"{tuple(saved[path].shape)} in the checkpoint but {tuple(leaf.shape)} in "
                        f"this config{hint or '; set the encoder fields (model.*, moe.*) as in the checkpoint config'}")
      taken[path] = leaf
    extra = sorted("/".join(p) for p in saved if p not in ours)
    if extra:
      raise UserError(f"{self.flag}={self.workdir}: the checkpoint's encoder has parameters "
                      f"this config lacks: encoder/{extra[0]} (+{len(extra) - 1} more){hint}")
    return taken

  def load_encoder_into(self, state: dict[str, Any], builder, config) -> dict[str, Any]:
    """`state` with params/encoder replaced by the checkpoint's (in `builder`'s shardings)."""
    abstract = builder.abstract["params"]["encoder"]
    taken = self.check_shapes(abstract, config)

    def subset(tree, prefix=()):
      out = {}
      for k, v in tree.items():
        p = prefix + (str(k),)
        if isinstance(v, Mapping):
          sub = subset(v, p)
          if sub:
            out[k] = sub
        elif p in taken:
          out[k] = v
      return out

    item = {"params": {"encoder": subset(abstract)}}
    restored = self._ckpt.manager.restore(self.step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
            partial_restore=True)))
    loaded = restored.state["params"]["encoder"]

    def merge(fresh, new):
      if isinstance(fresh, Mapping):
        return {k: merge(v, new[k]) if k in new else v for k, v in fresh.items()}
      return new

    params = dict(state["params"])
    params["encoder"] = merge(state["params"]["encoder"], loaded)
    self._ckpt.close()
    return {**state, "params": params}
