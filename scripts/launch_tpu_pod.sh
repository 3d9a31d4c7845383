#!/usr/bin/env bash
# Launches vit_jax training on every worker of a Cloud TPU pod slice (one process per host).
#
#   scripts/launch_tpu_pod.sh [--dry-run] --tpu NAME --zone ZONE [--project PROJECT] [--repo URL] [--dir DIR] \
#       [--no-setup] -- --config=configs/vit_b16_i21k.py --workdir=gs://BUCKET/run --config.dataset=/mnt/imagenet21k
#
# Step 1 clones (or updates) the repository and installs it on all workers; step 2 starts
# `python -m vit_jax.main --distributed ...` on all workers at once (jax.distributed finds the pod's hosts
# itself); --no-setup skips step 1 (a sweep's later points). The workdir must be on GCS: every host writes its
# shards of the checkpoints there.
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

dry_run=0; setup=1; tpu=""; zone=""; project=""; dir="vit_jax"
repo="https://github.com/google-research/vision_transformer"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --no-setup) setup=0; shift ;;
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "Unknown option $1: see the usage at the top of $0." >&2; exit 2 ;;
  esac
done
if [[ -z "$tpu" || -z "$zone" ]]; then
  echo "--tpu and --zone are required: see the usage at the top of $0." >&2; exit 2
fi
if [[ $# -eq 0 ]]; then
  echo "Give the training flags after --, e.g. -- --config=configs/vit_b16_i21k.py --workdir=gs://BUCKET/run" >&2
  exit 2
fi

gcloud_ssh=(gcloud compute tpus tpu-vm ssh "$tpu" "--zone=$zone" --worker=all)
if [[ -n "$project" ]]; then gcloud_ssh+=("--project=$project"); fi

setup_cmd="if [ -d $dir ]; then git -C $dir pull --ff-only; else git clone $repo $dir; fi && \
pip install -q -r $dir/requirements.txt \"jax[tpu]\""
train="cd $dir && python -m vit_jax.main --distributed $(printf '%q ' "$@")"

run() {  # run COMMAND: on all workers, or printed with --dry-run
  if [[ $dry_run -eq 1 ]]; then
    echo "${gcloud_ssh[*]} --command='$1'"
  else
    "${gcloud_ssh[@]}" "--command=$1"
  fi
}
if [[ $setup -eq 1 ]]; then run "$setup_cmd"; fi
run "$train"
