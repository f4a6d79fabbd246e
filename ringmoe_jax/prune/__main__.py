r"""Prune a RingMoE checkpoint into a smaller model (issue 14).

  python -m ringmoe_jax.prune --checkpoint=WORKDIR --plan=modality=opt,frequency=0.25,merge=svd \
      --output=DIR [--overwrite] [--step=N] [--calibration=simulator|DIR|FORMAT:ROOT:SENSOR \
      [--calibration_batches=N]]
  python -m ringmoe_jax.prune --config=configs/pretrain_14b.py --plan=...   # sizes only

Prints the plan (total / active parameters after each step, one line per block), then writes DIR
(run.py: Orbax checkpoint, config.json, prune_plan.json; atomic). With --config instead of
--checkpoint nothing is read or written: the plan of that config's abstract model (frequency
then takes the first experts for the most used). --calibration: the routing counts of up to N
batches of 32 tiles, counted in eval mode, replace the checkpoint's (calibrate.py; for a
checkpoint without counts): `simulator` (unseen simulator tiles of the run's sensors), DIR (an
ingestion output of `python -m ringmoe_jax.data.ingest`) or FORMAT:ROOT:SENSOR (a dataset of a
fine-tuning reader, e.g. class_folders:/data/eurosat:sentinel2_l2a). Methods: plan.py. Bad
input: one `error: ...` line, exit 2.
"""
from __future__ import annotations

import argparse

from ringmoe_jax.errors import UserError, run_cli


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--checkpoint", help="a training run's --workdir (its latest checkpoint)")
  ap.add_argument("--config", help="configs/NAME.py[:ARG]: print the abstract plan only")
  ap.add_argument("--plan", required=True, help="e.g. modality=opt,frequency=0.25,merge=svd")
  ap.add_argument("--output", help="the pruned workdir to write")
  ap.add_argument("--overwrite", action="store_true", help="replace an existing --output")
  ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  ap.add_argument("--calibration", default=None,
                  help="simulator | DIR (ingestion output) | FORMAT:ROOT:SENSOR (reader "
                  "dataset): count routing on its tiles instead of using the saved counts")
  ap.add_argument("--calibration_batches", type=int, default=4,
                  help="batches of 32 tiles in the calibration pass")
  args = ap.parse_args(argv)
  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.prune import run
  if bool(args.checkpoint) == bool(args.config):
    raise UserError("give one of --checkpoint=WORKDIR (prune it) or --config=FILE (plan only)")
  if args.config:
    plan = run.plan_for_config(args.config, args.plan)
    print(plan.describe())
    return plan
  return run.prune(args.checkpoint, args.plan, args.output, overwrite=args.overwrite,
                   step=args.step, calibration=args.calibration,
                   calibration_batches=args.calibration_batches)


if __name__ == "__main__":
  run_cli(main, also=(FileNotFoundError,))
