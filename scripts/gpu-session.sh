#!/usr/bin/env bash
# What a lent GPU machine runs for issue 12 (docs/models.md records its output): the GPU rows of
# benchmarks/training.py; then the RGB fine-tune (L1, then MSE) and the grey fine-tune side by
# side on the one GPU, their step counts sized from the measured speed so that both end within
# TRAIN_SECONDS; then the quality and inference benchmarks of the new models.
#   scripts/gpu-session.sh RESULTS_DIR [TRAIN_SECONDS]
# Reads ../shared/data; writes the models, tables and logs to RESULTS_DIR. DRY_RUN=1 runs every
# step in miniature on the CPU, to check the script where there is no GPU.
set -uo pipefail
results=$(realpath -m "$1") seconds=${2:-330}
if [[ ${DRY_RUN:-} ]]; then
  device=cpu fast=(--steps 1 --batches 1) slow=(--steps 1 --batches 1) quick=(--limit 1 --crop 64)
  STEPS="3 2 3"
else
  device=cuda fast=(--steps 200 --batches 100) slow=(--steps 60 --batches 20) quick=()
fi
mkdir -p "$results"
work=$(mktemp -d)
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 CHECKPOINT_DIR=$work/runs
say() { echo "[$(date +%T)] $*"; }
rgb_base=src/napari_srgan/weights/srresnet-rgb-x4.safetensors
grey_base=src/napari_srgan/weights/srresnet-em-grey-x4.safetensors

say "$(python -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")')"
say "training speed: the default recipe (batch 16 of 96 px), then the fine-tunes' 192 px"
speed=$results/training-speed.md
timeout 150 python benchmarks/training.py --device "$device" "${fast[@]}" | tee "$speed"
timeout 120 python benchmarks/training.py --device "$device" "${slow[@]}" --patch 192 | tee -a "$speed"
rate=$(grep "^| new: DeviceSampler on $device |" "$speed" | tail -1 | cut -d'|' -f4 | tr -d ' ')
# Two jobs share the GPU (each gets half of it when the GPU sets the pace); 10% is left for
# validation and checkpoints, and each stage's start (reading the data) takes about 30 s.
read -r l1 mse grey <<<"${STEPS:-$(python -c "
rate, seconds = float('${rate:-20}') / 2 * 0.9, $seconds
rgb = rate * (seconds - 60)
print(int(rgb * 0.8) // 100 * 100, int(rgb * 0.2) // 100 * 100, int(rate * (seconds - 30)) // 100 * 100)
")}"
say "training: RGB $l1 L1 + $mse MSE steps and grey $grey steps side by side (${rate:-?} steps/s alone)"
limit=$((seconds + 90))
timeout "$limit" bash -c '
  BASE=$0 scripts/train-models.sh rgb-l1 "$1" ../shared/data "$2/l1" &&
  BASE=$2/l1/srresnet-rgb-x4.safetensors scripts/train-models.sh rgb-mse "$3" ../shared/data "$4"' \
  "$rgb_base" "$l1" "$work" "$mse" "$results" >"$results/rgb.log" 2>&1 &
BASE=$grey_base timeout "$limit" scripts/train-models.sh grey-gpu "$grey" ../shared/data "$results" \
  >"$results/grey.log" 2>&1 &
wait
say "training done: $(ls "$results"/*.safetensors 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"

say "quality of the new models next to the shipped ones"
quality=$results/quality.md
timeout 150 python benchmarks/quality.py --device "$device" --skip-em --ensemble both "${quick[@]}" \
  --model "$results/srresnet-rgb-x4.safetensors" "$rgb_base" >"$quality" 2>&1
timeout 100 python benchmarks/quality.py --device "$device" --skip-photo --ensemble both "${quick[@]}" \
  --model "$results/srresnet-em-grey-x4.safetensors" "$grey_base" >>"$quality" 2>&1
cat "$quality"
if [[ $device == cuda ]]; then
  say "inference speed on the GPU"
  timeout 70 python benchmarks/gpu.py --sizes 1024 4096 --channels 3 --precisions fp32 bf16 |
    tee "$results/gpu-inference.md"
fi
say "done"
