"""Orbax checkpoints of the train state plus JSON side data (data iterator, sensors, config).

Orbax writes each step into a temporary directory and renames it only once every item is
complete, and `latest_step()` lists only finalised steps: a save killed midway is never restored;
the previous complete checkpoint is.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from ringmoe_jax.errors import UserError


def _no_replica_parallel_on_cpu() -> None:
  """On CPU, save each replicated array from one device instead of a slice per replica.

  Replica-parallel saving (Orbax's default) splits a replicated array into one eager slice per
  device so that accelerators write in parallel. CPU devices share the host's memory, so this
  buys nothing, and every (shape, device) pair compiles its own slice: ~40 s of compiles per
  fresh process for the micro model on 8 fake devices.
  """
  if jax.default_backend() == "cpu":
    # Orbax logs a WARNING for every override; this one is deliberate, so a user is not told.
    from absl import logging  # pylint: disable=import-outside-toplevel
    level = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
      ocp.type_handlers.register_type_handler(
          jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    finally:
      logging.set_verbosity(level)


class Checkpointer:
  """Save / restore {'state': pytree, 'data': json, 'meta': json} per step."""

  def __init__(self, directory: str, *, max_to_keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    _no_replica_parallel_on_cpu()
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data: Any, meta: Any, *, force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
        meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any, Any]:
    """abstract_state: ShapeDtypeStructs with shardings (any topology) -> (state, data, meta)."""
    r = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return r.state, r.data, r.meta

  def read_meta(self, step: int) -> dict[str, Any]:
    """The JSON meta item of `step` (config, sensors, routing counts) without the arrays."""
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def state_metadata(self, step: int) -> Any:
    """Shapes / dtypes of the saved state tree as nested dicts of ArrayMetadata (`.shape`,
    `.dtype`); nothing is read from the arrays."""
    tree = ocp.StandardCheckpointer().metadata(
        os.path.join(self.directory, str(step), "state")).item_metadata

    def plain(node):
      if hasattr(node, "keys") and not hasattr(node, "shape"):
        return {k: plain(node[k]) for k in node.keys()}
      return node
    return plain(tree)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def open_run(workdir: str, *, flag: str = "--workdir", step: int | None = None,
             expected: str = "a training run") -> tuple[Checkpointer, int, dict[str, Any]]:
  """A run's finished checkpoint `step` (None: the latest) -> (Checkpointer, step, meta).

  Every command that reads another run's workdir (fine-tuning's init_checkpoint, evaluate,
  predict, track, prune, the linear probe) opens it here, so that a missing folder or an
  unfinished checkpoint gives the same `flag=workdir: ...` message. Close the Checkpointer."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise UserError(f"{flag}={workdir}: no checkpoints/ folder there (expected the --workdir of "
                    f"{expected})")
  ckpt = Checkpointer(directory, max_to_keep=1, async_save=False)
  found = ckpt.latest_step() if step is None else int(step)
  if found is None or found not in ckpt.manager.all_steps():
    ckpt.close()
    raise UserError(f"{flag}={workdir}: no finished checkpoint in {directory}"
                    + ("" if step is None else f" at step {step}"))
  return ckpt, int(found), ckpt.read_meta(found)
