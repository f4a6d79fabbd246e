"""Routing statistics of a run, from the counts saved with its latest checkpoint.

  python -m ringmoe_jax.tools.routing_report --workdir=/tmp/ringmoe_tiny [--plot=routing.png]
      [--sharing_batches=1]

Prints, per block and router, the fraction of tokens each expert received over the whole run,
the smallest share, and `starved_experts=<n>` (experts that received no token at all). These
are the statistics the expert-pruning transform reads (frequency pruning keeps the most used
collaborative experts).

--plot=FILE.png (matplotlib: pip install -e ".[plots]") draws those shares as heatmaps (block x
expert: the collaborative router, and each modality's special experts) and, for a pre-training
run with --sharing_batches > 0, which modalities share collaborative experts: the run's encoder
routes N batches of 32 unseen simulator tiles in evaluation mode, each modality's tokens
counted apart (`modality_sharing`), and a panel shows 1 - the mean over blocks of the total
variation distance between two modalities' collaborative-expert shares (1: the same experts in
the same proportions, 0: disjoint experts); printed as `sharing opt~ms=<x> ...`. RingMoE
reports that opt~ms and sar_l1~sar_l2 share the most.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import orbax.checkpoint as ocp

from ringmoe_jax.errors import run_cli

SHARING_SEED = 30_000  # simulator scenes neither training nor the linear probe (10_000) uses


def load_meta(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, the checkpoint's meta: config, task, sensors, routing_counts, ...)."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  mgr = ocp.CheckpointManager(directory, item_names=("meta",))
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{directory}: no complete checkpoint")
  meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  mgr.close()
  return step, meta


def load_counts(workdir: str, step: int | None = None) -> tuple[int, dict[str, np.ndarray]]:
  """(step, {router: (blocks, experts) token counts}) from WORKDIR/checkpoints."""
  step, meta = load_meta(workdir, step)
  return step, {k: np.asarray(v, np.float64) for k, v in meta["routing_counts"].items()}


def run_modalities(meta: dict) -> list[str]:
  """The run's modality names in id order (the special router's column groups)."""
  from ringmoe_jax.sensors.modalities import MODALITIES  # pylint: disable=import-outside-toplevel
  return list(meta.get("modalities") or MODALITIES)


def load_model(workdir: str, step: int | None = None):
  """(config, sensor registry, model, meta) of a run's checkpoint: its task's model built
  abstractly (nothing initialised) holding the saved params, restored as numpy (any device
  topology). Also the model the notebooks' linear probe scores."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from ringmoe_jax.prune.run import Source
  from ringmoe_jax.train.setup import abstract_task_model
  src = Source(workdir, step)
  try:
    graphdef, state = nnx.split(abstract_task_model(src.config, src.task()), nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, src.restore_params()))
    return src.config, src.registry, nnx.merge(graphdef, state), src.meta
  finally:
    src.close()


def collab_by_modality(workdir: str, step: int | None = None, num_batches: int = 1,
                       batch_size: int = 32) -> tuple[list[str], np.ndarray]:
  """(modalities, (M, L, Ec) collaborative-router token counts of each modality's tokens) from
  the run's encoder in evaluation mode on unseen simulator tiles of its sensors. One compiled
  pass per batch and modality: the other modalities' tiles are marked invalid, and invalid
  tokens are not counted."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from ringmoe_jax.tools.linear_probe import probe_batches
  config, registry, model, meta = load_model(workdir, step)
  batches = probe_batches(config, num_batches * batch_size, batch_size=batch_size,
                          seed=SHARING_SEED, registry=registry)[:num_batches]
  graphdef, state = nnx.split(model.encoder)

  @jax.jit
  def count(state, b, keep):
    valid = b["valid"] * keep[:, None, None]
    _, aux = nnx.merge(graphdef, state)(b["pixels"], b["modality"], sensor=b["sensor"],
                                        mask=None, valid=valid, train=False,
                                        channels=b.get("channels"))
    return aux["routing"]["collab"]["tokens_per_expert"]

  from ringmoe_jax.sensors.modalities import MODALITIES  # batches carry these ids
  modalities = run_modalities(meta)
  keys = ("pixels", "modality", "valid", "sensor", "channels")
  total = 0
  for b in batches:
    b = {k: jnp.asarray(b[k]) for k in keys if k in b}
    total = total + np.stack([np.asarray(count(state, b, (b["modality"] == MODALITIES.index(
        m)).astype(b["valid"].dtype)), np.float64) for m in modalities])
  return modalities, total


def modality_sharing(per_modality: np.ndarray) -> np.ndarray:
  """(M, L, E) counts -> (M, M): 1 - mean over blocks of the total variation distance between
  two modalities' share of each expert (1: same use; 0: disjoint experts)."""
  from ringmoe_jax.tools.plots import shares  # pylint: disable=import-outside-toplevel
  p = shares(per_modality)                                    # (M, L, E)
  tv = 0.5 * np.abs(p[:, None] - p[None, :]).sum(-1)          # (M, M, L)
  return 1.0 - tv.mean(-1)


def report(counts: dict[str, np.ndarray]) -> tuple[str, int]:
  lines, starved = [], 0
  for router, c in counts.items():
    share = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
    for block, row in enumerate(share):
      lines.append(f"{router:8s} block {block:2d}: " + " ".join(f"{x:.3f}" for x in row)
                   + f"  min={row.min():.3f}")
    starved += int((c == 0).sum())
    lines.append(f"{router}: min_share={share.min():.4f} max_share={share.max():.4f} "
                 f"starved={int((c == 0).sum())}")
  lines.append(f"starved_experts={starved}")
  return "\n".join(lines), starved


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--step", type=int, default=None)
  ap.add_argument("--plot", default="", help="write the heatmaps to this PNG")
  ap.add_argument("--sharing_batches", type=int, default=1,
                  help="with --plot: simulator batches of the modality-sharing pass (0: none)")
  args = ap.parse_args(argv)
  return plot_report(args.workdir, args.step, args.plot, args.sharing_batches)


def plot_report(workdir: str, step: int | None = None, plot: str = "",
                sharing_batches: int = 1) -> dict:
  """The command line's work: prints the report; -> {step, counts, starved, sharing, plot}."""
  if plot:
    from ringmoe_jax.tools.plots import pyplot  # pylint: disable=import-outside-toplevel
    pyplot()  # no matplotlib: the error before any work
  step, meta = load_meta(workdir, step)
  counts = {k: np.asarray(v, np.float64) for k, v in meta["routing_counts"].items()}
  text, starved = report(counts)
  print(f"checkpoint step={step}")
  print(text)
  out = {"step": step, "counts": counts, "starved": starved, "sharing": None, "plot": None}
  modalities = run_modalities(meta)
  if plot and sharing_batches > 0 and "collab" in counts and meta.get("task",
                                                                      "pretrain") == "pretrain":
    modalities, per = collab_by_modality(workdir, step, sharing_batches)
    out["sharing"] = modality_sharing(per)
    print("sharing " + " ".join(f"{modalities[i]}~{modalities[j]}={out['sharing'][i, j]:.3f}"
                                for i in range(len(modalities))
                                for j in range(i + 1, len(modalities))))
  if plot:
    from ringmoe_jax.tools.plots import routing_figure  # pylint: disable=import-outside-toplevel
    out["plot"] = routing_figure(counts, plot, modalities=modalities, similarity=out["sharing"],
                                 title=f"{os.path.basename(os.path.abspath(workdir))} "
                                       f"step {step}: expert share per block")
    print(f"plot={plot}")
  return out


if __name__ == "__main__":
  run_cli(main, also=(FileNotFoundError,))  # a bad config / path: one 'error:' line, exit 2
