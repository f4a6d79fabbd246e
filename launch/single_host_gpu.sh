#!/usr/bin/env bash
# Pre-train on one GPU host (all its GPUs, one process).
#
#   launch/single_host_gpu.sh --workdir=/data/ringmoe_base --config=configs/pretrain_14b.py:size=base
#   launch/single_host_gpu.sh --dry_run --workdir=/tmp/x
#
# The mesh comes from the config (data=-1 uses every local GPU). Rerun the same command to
# resume; exit status 42 = stopped by SIGTERM after saving.
set -euo pipefail
CONFIG=configs/pretrain_14b.py:size=base; WORKDIR=""; DRY_RUN=0; EXTRA=()
for a in "$@"; do
  case "$a" in
    --config=*) CONFIG="${a#*=}";; --workdir=*) WORKDIR="${a#*=}";; --dry_run) DRY_RUN=1;;
    *) EXTRA+=("$a");;
  esac
done
[[ -n "$WORKDIR" ]] || { echo "--workdir is required" >&2; exit 2; }
CMD=(env XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 python -m ringmoe_jax.main --config="$CONFIG"
     --workdir="$WORKDIR" --exit_code_on_preempt=42 "${EXTRA[@]}")
if (( DRY_RUN )); then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
exec "${CMD[@]}"
