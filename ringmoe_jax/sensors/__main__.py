"""Prints the sensor registry: `python -m ringmoe_jax.sensors [--file sensors.json]`.

One sensor per line, name first, then modality, channels, GSD, product level, scale and bands.
User sensors from `--file` are registered after the built-ins, so built-in ids never shift.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ringmoe_jax.errors import run_cli
from ringmoe_jax.sensors.registry import SensorRegistry, default_registry


def format_registry(registry: SensorRegistry) -> str:
  """One line per sensor, columns aligned: name, modality, channels, gsd, level, scale, bands."""
  rows = [(s.name, s.modality, f"{s.num_channels}ch", f"{s.gsd_m:g}m", s.product_level, s.scale,
           ",".join(s.band_names)) for s in registry]
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)] if rows else []
  return "\n".join("  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]) for r in rows)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ringmoe_jax.sensors", description=__doc__)
  parser.add_argument("--file", action="append", default=[], metavar="PATH",
                      help="JSON/YAML file with one sensor or a list; may repeat")
  args = parser.parse_args(argv)
  registry = default_registry()
  for path in args.file:
    registry.load_file(path)  # a bad file: SensorDefinitionError naming file, sensor and field
  print(format_registry(registry))
  return 0


if __name__ == "__main__":
  sys.exit(run_cli(main))  # a UserError: one 'error: ...' line, exit status 2
