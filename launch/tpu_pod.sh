#!/usr/bin/env bash
# Pre-train on a Cloud TPU pod slice: queued resource -> wait ACTIVE -> install + run on all workers.
#
#   launch/tpu_pod.sh --name=ringmoe-v5p256 --zone=us-east5-a --accelerator=v5p-256 \
#     --workdir=gs://BUCKET/ringmoe_14b [--config=configs/pretrain_14b.py] [--dry_run] [-- EXTRA]
#
# Every worker runs the same command; jax.distributed.initialize() finds the pod by itself.
# The trainer saves on SIGTERM (maintenance / preemption) and exits 42; rerunning this script
# resumes from the last complete checkpoint in --workdir.
set -euo pipefail
NAME=ringmoe; ZONE=us-east5-a; ACCEL=v5p-256; VERSION=v2-alpha-tpuv5; PROJECT=""
CONFIG=configs/pretrain_14b.py; WORKDIR=""; REPO_URL=https://github.com/ORG/ringmoe_jax.git
DRY_RUN=0; EXTRA=()
for a in "$@"; do
  case "$a" in
    --name=*) NAME="${a#*=}";; --zone=*) ZONE="${a#*=}";; --accelerator=*) ACCEL="${a#*=}";;
    --version=*) VERSION="${a#*=}";; --project=*) PROJECT="${a#*=}";;
    --config=*) CONFIG="${a#*=}";; --workdir=*) WORKDIR="${a#*=}";; --repo=*) REPO_URL="${a#*=}";;
    --dry_run) DRY_RUN=1;; --) ;; *) EXTRA+=("$a");;
  esac
done
[[ -n "$WORKDIR" ]] || { echo "--workdir is required (e.g. gs://BUCKET/run)" >&2; exit 2; }
P=(); [[ -n "$PROJECT" ]] && P=(--project="$PROJECT")
run() { if (( DRY_RUN )); then printf '%q ' "$@"; echo; else "$@"; fi; }

run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" --zone="$ZONE" \
  --accelerator-type="$ACCEL" --runtime-version="$VERSION" "${P[@]}"
if (( ! DRY_RUN )); then
  until gcloud compute tpus queued-resources describe "$NAME" --zone="$ZONE" "${P[@]}" \
      --format='value(state.state)' | grep -q ACTIVE; do sleep 30; done
else
  echo "# wait until: gcloud compute tpus queued-resources describe $NAME --zone=$ZONE shows ACTIVE"
fi
REMOTE="set -e; [ -d ringmoe_jax ] || git clone $REPO_URL ringmoe_jax; cd ringmoe_jax && \
pip install -q -e . 'jax[tpu]' && python -m ringmoe_jax.main --config=$CONFIG \
--workdir=$WORKDIR --exit_code_on_preempt=42 ${EXTRA[*]:-}"
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" "${P[@]}" --worker=all --command="$REMOTE"
