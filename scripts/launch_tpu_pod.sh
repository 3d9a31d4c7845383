#!/usr/bin/env bash
# Deploys this repository to every worker of a Cloud TPU pod slice and trains there, one process per host.
#
#   scripts/launch_tpu_pod.sh [--dry-run] --tpu NAME --zone ZONE [--project PROJECT] [--repo PATH|URL] [--ref REF] \
#       [--dir DIR] [--no-setup] [--restarts N] [--restart-wait S] \
#       -- --config=configs/vit_b16_i21k.py --workdir=gs://BUCKET/run --config.dataset=gs://BUCKET/i21k_prepared
#
# Step 1 (set-up) copies the code to ~/DIR (default vit_jax) on all workers and installs it there
# (`pip install -e DIR "jax[tpu]"`): by default the checkout this script is in, as it is now (tracked and
# untracked files that git does not ignore, so uncommitted changes go too); --repo PATH another checkout;
# --repo URL (with --ref REF) `git clone`s on the workers instead. --no-setup skips step 1 (a sweep's later points).
# Step 2 starts `python3 -m vit_jax.main --distributed ...` in ~/DIR on all workers at once (jax.distributed finds
# the pod's hosts itself). The workdir must be on GCS: every host writes its shards of the checkpoints there.
# --restarts N: when step 2 fails (a host lost, a preemption save before the end: docs/pods.md), start it again,
# up to N times, after --restart-wait seconds (default 60); the run resumes from its newest checkpoint.
# --dry-run prints the commands instead of running them.
set -euo pipefail

dry_run=0; setup=1; tpu=""; zone=""; project=""; dir="vit_jax"; ref=""; restarts=0; restart_wait=60
repo="$(cd "$(dirname "$0")/.." && pwd)"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --no-setup) setup=0; shift ;;
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --ref) ref="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --restarts) restarts="$2"; shift 2 ;;
    --restart-wait) restart_wait="$2"; shift 2 ;;
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
if [[ ! "$restarts" =~ ^[0-9]+$ ]]; then echo "--restarts takes a count, not '$restarts'." >&2; exit 2; fi

where=("--zone=$zone" --worker=all)
if [[ -n "$project" ]]; then where+=("--project=$project"); fi
q_dir="$(printf '%q' "$dir")"

show_or_run() {  # show_or_run COMMAND...: run it, or print it with --dry-run
  if [[ $dry_run -eq 1 ]]; then
    local shown=() a
    for a in "$@"; do
      if [[ "$a" == --command=* ]]; then shown+=("--command='${a#--command=}'"); else shown+=("$a"); fi
    done
    echo "${shown[*]}"
  else
    "$@"
  fi
}
on_workers() { show_or_run gcloud compute tpus tpu-vm ssh "$tpu" "${where[@]}" "--command=$1"; }

install="pip install -q -e $q_dir \"jax[tpu]\""
if [[ $setup -eq 1 ]]; then
  if [[ "$repo" == *://* || "$repo" == git@* ]]; then
    checkout="rm -rf $q_dir && git clone -q $(printf '%q' "$repo") $q_dir"
    if [[ -n "$ref" ]]; then checkout+=" && git -C $q_dir checkout -q $(printf '%q' "$ref")"; fi
    on_workers "$checkout && $install"
  else
    if [[ -n "$ref" ]]; then echo "--ref goes with a --repo URL; a local --repo is deployed as it is." >&2; exit 2; fi
    if ! git -C "$repo" rev-parse --show-toplevel > /dev/null 2>&1; then
      echo "--repo $repo is neither a URL nor a git checkout." >&2; exit 2
    fi
    archive="${TMPDIR:-/tmp}/vit_jax_deploy.$$.tar.gz"
    if [[ $dry_run -eq 0 ]]; then
      trap 'rm -f "$archive"' EXIT
      # The files git knows of, less those deleted in the working tree.
      (cd "$repo" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do if [[ -e "$f" ]]; then printf '%s\0' "$f"; fi; done \
        | tar -czf "$archive" --null -T -)
    fi
    show_or_run gcloud compute tpus tpu-vm scp "$archive" "$tpu:vit_jax_deploy.tar.gz" "${where[@]}"
    on_workers "rm -rf $q_dir && mkdir -p $q_dir && tar -xzf vit_jax_deploy.tar.gz -C $q_dir && $install"
  fi
fi

train="cd $q_dir && python3 -m vit_jax.main --distributed $(printf '%q ' "$@")"
if [[ $dry_run -eq 1 ]]; then on_workers "$train"; exit 0; fi
for ((attempt = 0; ; attempt++)); do
  status=0
  on_workers "$train" || status=$?
  if [[ $status -eq 0 ]]; then exit 0; fi
  if [[ $attempt -ge $restarts ]]; then
    echo "Training exited with status $status on some worker (attempt $((attempt + 1)) of $((restarts + 1)))." >&2
    exit "$status"
  fi
  echo "Training exited with status $status on some worker; starting it again in ${restart_wait} s" \
       "(restart $((attempt + 1)) of $restarts); it resumes from its newest checkpoint." >&2
  sleep "$restart_wait"
done
