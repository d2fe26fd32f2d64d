#!/usr/bin/env bash
# What a lent GPU machine runs for issue 12 (docs/models.md records its output): the GPU rows of
# benchmarks/training.py; then the RGB fine-tune (L1, then MSE) and the grey fine-tune side by
# side on the one GPU, their step counts sized from the measured speed and each stopped by
# --time-limit at the latest; then the quality and inference benchmarks of the new models.
#   scripts/gpu-session.sh RESULTS_DIR [BUDGET_SECONDS]
# The whole script ends within BUDGET_SECONDS (default 520): every phase gets a timeout from what
# is left, and a phase that no longer fits is skipped, so the results always come back from a
# device call with a longer limit. Reads ../shared/data; writes the models, tables and logs
# (8 files) to RESULTS_DIR. DRY_RUN=1 runs every phase in miniature on the CPU.
# PYTHON names the interpreter (default: python; the same for scripts/train-models.sh). On a
# remote machine with an upload limit and a bare Python (torch, Pillow, scikit-image, ...):
#   python scripts/pack-data.py pack ../shared/data gpudata            # here; 51 MB, lossless
#   python3 scripts/pack-data.py unpack gpudata ../shared/data &&
#     PYTHON=python3 scripts/gpu-session.sh "$OUT" 520                 # there
# The lent machines' Python lacks platformdirs, filelock, dask, partd and locket: carry them as
# wheels (pip download --no-deps ... -d .whl, then pip install --target there; see the device
# tool's README).
set -uo pipefail
results=$(realpath -m "$1") budget=${2:-520}
if [[ ${DRY_RUN:-} ]]; then
  device=cpu fast=(--steps 1 --batches 1) slow=(--steps 1 --batches 1) quick=(--limit 1 --crop 64)
  STEPS="3 2 3"
else
  device=cuda fast=(--steps 100 --batches 50) slow=(--steps 40 --batches 10) quick=()
fi
export PYTHON=${PYTHON:-python}
mkdir -p "$results"
work=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 CHECKPOINT_DIR=$work/runs
say() { echo "[$(date +%T) +${SECONDS}s] $*"; }
# phase CAP COMMAND...: run COMMAND with a timeout of CAP seconds or what the budget has left
# (keeping RESERVE seconds for the phases after it); skip it when less than 20 s would remain.
phase() {
  local cap=$1 left=$((budget - SECONDS - ${RESERVE:-0}))
  shift
  ((left < 20)) && { say "skipped (budget): $*"; return 1; }
  timeout $((cap < left ? cap : left)) "$@"
}
rgb_base=src/napari_srgan/weights/srresnet-rgb-x4.safetensors
grey_base=src/napari_srgan/weights/srresnet-em-grey-x4.safetensors

say "$("$PYTHON" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")')"
say "training speed: the default recipe (batch 16 of 96 px), then the fine-tunes' 192 px"
speed=$results/training-speed.md
RESERVE=300 phase 90 "$PYTHON" benchmarks/training.py --device "$device" "${fast[@]}" | tee "$speed"
RESERVE=300 phase 60 "$PYTHON" benchmarks/training.py --device "$device" "${slow[@]}" --patch 192 |
  tee -a "$speed"
rate=$(grep "^| new: DeviceSampler on $device |" "$speed" | tail -1 | cut -d'|' -f4 | tr -d ' ')

# Training gets what is left but 110 s for the quality and inference tables. Two jobs share the
# GPU: a 1.55M-parameter step leaves it two-thirds idle, so each ran at the speed of one alone
# (an H200, 2026-11-27: 38.6 steps/s alone, 40 and 39 side by side); 10% goes to validation and
# checkpoints, and each stage's start (reading the data) takes about 20 s.
seconds=$((budget - SECONDS - 110))
read -r l1 mse grey <<<"${STEPS:-$("$PYTHON" -c "
rate, seconds = float('${rate:-20}') * 0.9, $seconds
rgb = rate * (seconds - 40)
print(int(rgb * 0.8) // 100 * 100, int(rgb * 0.2) // 100 * 100, int(rate * (seconds - 20)) // 100 * 100)
")}"
say "training for ${seconds}s: RGB $l1 L1 + $mse MSE steps and grey $grey steps side by side (${rate:-?} steps/s alone)"
export TIME_LIMIT
TIME_LIMIT=$("$PYTHON" -c "print(round(($seconds - 20) * 0.8 / 60, 2))")
RESERVE=110 phase "$seconds" bash -c '
  BASE=$0 scripts/train-models.sh rgb-l1 "$1" ../shared/data "$2/l1" &&
  TIME_LIMIT=$("$PYTHON" -c "print(round(($5 - 20) * 0.2 / 60, 2))") \
  BASE=$2/l1/srresnet-rgb-x4.safetensors scripts/train-models.sh rgb-mse "$3" ../shared/data "$4"' \
  "$rgb_base" "$l1" "$work" "$mse" "$results" "$seconds" >"$results/rgb.log" 2>&1 &
TIME_LIMIT=$("$PYTHON" -c "print(round(($seconds - 20) / 60, 2))") BASE=$grey_base RESERVE=110 \
  phase "$seconds" scripts/train-models.sh grey-gpu "$grey" ../shared/data "$results" \
  >"$results/grey.log" 2>&1 &
wait
say "training done: $(cd "$results" && ls -- *.safetensors 2>/dev/null | tr '\n' ' ')"

say "quality of the new models next to the shipped ones"
quality=$results/quality.md
RESERVE=50 phase 60 "$PYTHON" benchmarks/quality.py --device "$device" --skip-em --ensemble both \
  "${quick[@]}" --model "$results/srresnet-rgb-x4.safetensors" "$rgb_base" >"$quality" 2>&1
RESERVE=40 phase 50 "$PYTHON" benchmarks/quality.py --device "$device" --skip-photo --ensemble both \
  "${quick[@]}" --model "$results/srresnet-em-grey-x4.safetensors" "$grey_base" >>"$quality" 2>&1
cat "$quality"
if [[ $device == cuda ]]; then
  say "inference speed on the GPU"
  phase 60 "$PYTHON" benchmarks/gpu.py --sizes 1024 4096 --channels 3 --precisions fp32 bf16 |
    tee "$results/gpu-inference.md"
fi
say "done"
