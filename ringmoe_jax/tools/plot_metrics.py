"""Training curves of a run: WORKDIR/metrics.jsonl -> PNG (matplotlib: pip install -e ".[plots]").

  python -m ringmoe_jax.tools.plot_metrics --workdir=/tmp/ringmoe_tiny --output=curves.png
      [--keys=loss,recon_loss,routing/collab/dropped_fraction]

One panel per key present in the records (nested keys as metrics_log.flatten names them, e.g.
`routing/collab/dropped_fraction`; per-block lists: one line per block). Default keys: the
losses, grad_norm, the dropped-token fractions and every `eval/` metric. Prints `plot=FILE
keys=...`. A missing file or no key found: one `error: ...` line naming the keys it has.
"""
from __future__ import annotations

import argparse

from ringmoe_jax.errors import run_cli

DEFAULT_KEYS = ("loss", "recon_loss", "task_loss", "contrastive_loss", "balance_loss",
                "grad_norm", "routing/collab/dropped_fraction",
                "routing/special/dropped_fraction")


def default_keys(records) -> list[str]:
  """DEFAULT_KEYS + the eval metrics the records hold (eval/<name>, first seen first)."""
  evals = []
  for r in records:
    evals += [k for k in r if k.startswith("eval/") and k not in evals]
  return list(DEFAULT_KEYS) + evals


def plot_metrics(workdir: str, output: str, keys=None, title: str | None = None) -> list[str]:
  """Writes the PNG; -> the keys it plotted."""
  from ringmoe_jax.tools import plots  # pylint: disable=import-outside-toplevel
  plots.pyplot()  # no matplotlib: the error before reading anything
  records = plots.read_metrics(workdir)
  keys = list(keys) if keys else default_keys(records)
  plotted = [k for k in keys if len(plots.series(records, k)[0])]
  plots.curves_figure(records, output, keys, title=workdir if title is None else title)
  return plotted


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--workdir", required=True, help="a run's workdir (or its metrics.jsonl)")
  ap.add_argument("--output", required=True, help="the PNG to write")
  ap.add_argument("--keys", default="", help="comma-separated metric names (default: see above)")
  args = ap.parse_args(argv)
  keys = [k.strip() for k in args.keys.split(",") if k.strip()]
  plotted = plot_metrics(args.workdir, args.output, keys)
  print(f"plot={args.output} keys={','.join(plotted)}")
  return plotted


if __name__ == "__main__":
  run_cli(main)
