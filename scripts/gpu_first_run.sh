#!/usr/bin/env bash
# The first run on a new GPU (docs/performance.md, section 1): checks, then our speed beside timm's, one report.
#
#   scripts/gpu_first_run.sh [--tiny] TIMM_SCRIPT        (or TIMM_SCRIPT=... in the environment)
#
# Writes under $OUT (default ./first_run_out): device.json (cuDNN attention against XLA attention on the device,
# the cuDNN calls of the lowered train step, the measured bf16 matmul peak), b16.json / l16.json (timm +
# torch.compile, then our real train step and bf16 inference: ViT-B/16 train 512 and inference 1024 with cuDNN and
# with XLA attention, ViT-L/16 train 128 with cuDNN), a .log beside each, and the report first_run.json +
# first_run.md. About 6 minutes on one H100. Every step runs even when one before it failed; the exit status is
# non-zero when any did (its log says why).
#
# --tiny runs the same steps with scaled-down shapes, dot_product attention in place of cuDNN and a small peak
# matmul, so that the whole script runs on a CPU (tests/perf/gpu_first_run_test.py runs it on every CI run).
# Needs only jax, flax, optax, numpy (+ torch and timm for TIMM_SCRIPT): no TensorFlow, TFDS, ml_collections, clu.
set -u -o pipefail

TINY=0
if [[ "${1:-}" == "--tiny" ]]; then TINY=1; shift; fi
TIMM_SCRIPT="${1:-${TIMM_SCRIPT:-}}"
if [[ -z "$TIMM_SCRIPT" || ! -f "$TIMM_SCRIPT" ]]; then
  echo "gpu_first_run.sh: TIMM_SCRIPT '${TIMM_SCRIPT}' is not a file; pass the path of timm_baseline.py" \
       "(copied into a carried, git-ignored folder such as .bench/) as the argument." >&2
  exit 2
fi
TIMM_SCRIPT="$(cd "$(dirname "$TIMM_SCRIPT")" && pwd)/$(basename "$TIMM_SCRIPT")"
OUT="${OUT:-first_run_out}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

if (( TINY )); then
  CHECK=(--attention dot_product --peak_n 256 --resolution 64 --layers 1)
  SIZE=(--num_layers 1 --resolution 32 --num_classes 10 --dtype float32 --steps 1 --reps 2 --warmup 1)
  ATTN=dot_product; B16=(8 8); L16=8
else
  CHECK=(--attention cudnn)
  SIZE=(--dtype bfloat16 --steps 10 --reps 3)
  ATTN=cudnn; B16=(512 1024); L16=128
fi
status=0
step() {  # step NAME COMMAND...: runs it with its output shown and kept in $OUT/NAME.log
  echo "=== $1: ${*:2}"
  "${@:2}" 2>&1 | tee "$OUT/$1.log"
  local rc=${PIPESTATUS[0]}
  if (( rc )); then status=1; echo "=== $1 FAILED (exit $rc): $OUT/$1.log"; fi
}

step env bash -c "nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null; \
  $PY -c 'import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())'"
# First, seconds: does the fused attention compute what XLA's does, on this device?
step device "$PY" -m vit_jax.perf.device_check "${CHECK[@]}" --json "$OUT/device.json"
# timm runs first inside each benchmark process, before JAX takes 75 % of the GPU.
step b16 "$PY" scripts/benchmark.py --model ViT-B_16 --batch "${B16[0]}" --infer_batch "${B16[1]}" "${SIZE[@]}" \
  --sweep --sweep_attn "$ATTN,xla" --sweep_remat none --sweep_scan false --sweep_modes train,infer \
  --timm --timm_script "$TIMM_SCRIPT" --json "$OUT/b16.json"
step l16 "$PY" scripts/benchmark.py --model ViT-L_16 --batch "$L16" "${SIZE[@]}" --attention_impl "$ATTN" \
  --modes train --timm --timm_script "$TIMM_SCRIPT" --json "$OUT/l16.json"
step report "$PY" -m vit_jax.perf.first_run "$OUT"
exit $status
