"""Routing statistics of a run, from the counts saved with its latest checkpoint.

  python -m ringmoe_jax.tools.routing_report --workdir=/tmp/ringmoe_tiny

Prints, per block and router, the fraction of tokens each expert received over the whole run,
the smallest share, and `starved_experts=<n>` (experts that received no token at all). These
are the statistics the expert-pruning transform reads (frequency pruning keeps the most used
collaborative experts).
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import orbax.checkpoint as ocp

from ringmoe_jax.errors import run_cli


def load_counts(workdir: str, step: int | None = None) -> tuple[int, dict[str, np.ndarray]]:
  """(step, {router: (blocks, experts) token counts}) from WORKDIR/checkpoints."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  mgr = ocp.CheckpointManager(directory, item_names=("meta",))
  step = mgr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{directory}: no complete checkpoint")
  meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  mgr.close()
  return step, {k: np.asarray(v, np.float64) for k, v in meta["routing_counts"].items()}


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


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--step", type=int, default=None)
  args = ap.parse_args()
  step, counts = load_counts(args.workdir, args.step)
  text, _ = report(counts)
  print(f"checkpoint step={step}")
  print(text)


if __name__ == "__main__":
  run_cli(main, also=(FileNotFoundError,))  # a bad config / path: one 'error:' line, exit 2
