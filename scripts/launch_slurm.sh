#!/usr/bin/env bash
# Submits vit_jax training to a multi-node GPU SLURM cluster: one process per node, all its GPUs each.
#
#   scripts/launch_slurm.sh [--dry-run] [--nodes 2] [--gpus-per-node 8] [--partition P] [--time 24:00:00] \
#       [--job-name vit] [--restarts 3] [--array-file FILE] -- --config=configs/vit_b16_i1k_augreg.py \
#       --workdir=/shared/runs/vit_b16
#
# Writes a batch script and runs `sbatch` on it. Inside the job, `srun` starts `python -m vit_jax.main
# --distributed ...` in this checkout on every node; jax.distributed.initialize() reads the SLURM environment to
# find the coordinator (the first node), the process count and this process's index, and JAX_LOCAL_DEVICE_IDS
# gives each process all of its node's GPUs. The workdir must be on a file system all nodes share (or gs://).
# Restarts (docs/pods.md): SLURM sends SIGTERM two minutes before the time limit (and on preemption); every
# process saves the same step and exits 75, and the job requeues itself and resumes there. A lost process (exit
# status 5 from the others, 134 from JAX's abort when process 0 is the one lost, 137 from a killed one) requeues
# it too, at most --restarts times in all. A finished run (exit 0) or a failed one (any other status) is not requeued.
# --dry-run prints the batch script and the sbatch command instead.
# --array-file: a job array (what `python -m vit_jax.sweep --runner slurm` submits), task i runs with the flags
# after -- followed by line i of FILE (shell-quoted flags, e.g. --workdir=/shared/sweep/a --config.base_lr=0.001).
set -euo pipefail

dry_run=0; nodes=2; gpus=8; partition=""; time_limit="24:00:00"; job_name="vit_jax"; array_file=""
restarts=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --nodes) nodes="$2"; shift 2 ;;
    --gpus-per-node) gpus="$2"; shift 2 ;;
    --partition) partition="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --job-name) job_name="$2"; shift 2 ;;
    --array-file) array_file="$2"; shift 2 ;;
    --restarts) restarts="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "Unknown option $1: see the usage at the top of $0." >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "Give the training flags after --, e.g. -- --config=configs/vit_b16_i1k_augreg.py --workdir=/shared/run" >&2
  exit 2
fi

repo_dir="$(cd "$(dirname "$0")/.." && pwd)"
train="srun python -m vit_jax.main --distributed --preempted_exit_code=75 $(printf '%q ' "$@")"
array=""
if [[ -n "$array_file" ]]; then
  tasks=0; cases=""
  while IFS= read -r line; do
    if [[ -n "$line" ]]; then cases+="  $tasks) $train$line ;;
"; tasks=$((tasks + 1)); fi
  done < "$array_file"
  if [[ $tasks -eq 0 ]]; then echo "--array-file $array_file has no lines." >&2; exit 2; fi
  array="#SBATCH --array=0-$((tasks - 1))
"
  train="case \"\$SLURM_ARRAY_TASK_ID\" in
${cases}esac"
fi
script="#!/usr/bin/env bash
#SBATCH --job-name=$job_name
#SBATCH --nodes=$nodes
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$gpus
#SBATCH --cpus-per-task=$((gpus * 8))
#SBATCH --time=$time_limit
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
${partition:+#SBATCH --partition=$partition
}${array}set -euo pipefail
cd $(printf "%q" "$repo_dir")
export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus - 1)))
status=0
$train || status=\$?
lost=0; if [[ \$status -eq 5 || \$status -eq 134 || \$status -eq 137 ]]; then lost=1; fi
if [[ \$status -eq 75 || ( \$lost -eq 1 && \${SLURM_RESTART_COUNT:-0} -lt $restarts ) ]]; then
  echo \"vit_jax: exit status \$status (75: saved at the time limit or a preemption; 5, 134, 137: a process was lost);\" \\
       \"requeueing job \$SLURM_JOB_ID to resume from its newest checkpoint.\" >&2
  scontrol requeue \"\$SLURM_JOB_ID\"
fi
exit \$status
"
# --signal=TERM@120: SLURM sends SIGTERM two minutes before the time limit; the loop saves and exits 75 (above).
# JAX_LOCAL_DEVICE_IDS: JAX's SLURM detection would otherwise give each process only the GPU of its local task id.

if [[ $dry_run -eq 1 ]]; then
  printf '%s' "$script"
  echo "sbatch <the script above>"
else
  file="$(mktemp "${TMPDIR:-/tmp}/vit_jax_sbatch.XXXXXX")"
  printf '%s' "$script" > "$file"
  sbatch "$file"
fi
