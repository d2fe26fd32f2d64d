#!/usr/bin/env bash
# Train a bundled model with the project's own CLI (docs/models.md gives the runs behind the
# shipped weights). Seeded; resumable from runs/<model>.ckpt.
#   scripts/train-models.sh rgb|em|grey|rgb-l1|rgb-mse|grey-gpu STEPS [DATA_DIR] [OUT_DIR]
# The last three are the GPU fine-tunes behind the shipped models (scripts/gpu-session.sh runs
# them); each starts from the model file in $BASE, and stops after $TIME_LIMIT minutes if set.
# DATA_DIR defaults to ../shared/data, OUT_DIR to the package's weights folder, checkpoints go
# to $CHECKPOINT_DIR (default runs/).
set -euo pipefail
kind=$1 steps=$2 data=${3:-../shared/data} out=${4:-src/napari_srgan/weights}
checkpoints=${CHECKPOINT_DIR:-runs}
mkdir -p "$checkpoints"
common=(--from-scratch --no-batch-norm --input-skip --pixel-loss mse --learning-rate 2e-4
        --steps "$steps" --patch 96 --batch 16 --seed 0 --checkpoint-every 500 --resume
        --no-download --half)
case $kind in
rgb)
  "${PYTHON:-python}" -m napari_srgan train --hr "$data/train/T91" "$data/train/BSD200" \
    --val "$data/val/Set5" --val-crop 0 --validate-every 1000 \
    --out "$out/srresnet-rgb-x4.safetensors" --checkpoint "$checkpoints"/srresnet-rgb-x4.ckpt "${common[@]}" \
    --description "SRResNet-style 4x RGB photo model (no BN, bicubic input skip, MSE), napari-srgan default"
  ;;
em)
  em=$data/microscopy/em_isbi2012_train  # slices 0-23 train, 24-29 are held out
  slices() { for i in $(seq "$1" "$2"); do ls "$em/$i".*; done; }
  "${PYTHON:-python}" -m napari_srgan train --hr $(slices 0 23) --val $(slices 24 29) --val-crop 256 \
    --validate-every 1000 --grey-model --degradation crappifier --normalization percentile \
    --blur-sigma 0.5 1.5 --photons 5 100 --read-noise 0 0.03 \
    --out "$out/srresnet-em-grey-x4.safetensors" --checkpoint "$checkpoints"/srresnet-em-grey-x4.ckpt \
    "${common[@]}" \
    --description "SRResNet-style 4x grey model for noisy, low-light microscopy (crappifier: blur, 5-100 photons shot noise, read noise), EM slices 0-23"
  ;;
grey | grey-gpu)
  # The shipped grey model: the em model fine-tuned on a mixture of clean, blurred and noisy LR
  # (EM slices 0-23 plus T91 in grey), so one model beats bicubic on clean and noisy data alike:
  # 'grey' on 64 px patches (on a shared 2-core CPU run it with OMP_NUM_THREADS=1: two spinning
  # OpenMP threads were 3-7x slower), 'grey-gpu' continuing from it on a GPU with 192 px patches.
  if [[ $kind == grey ]]; then patch=64 every=250 save=100 run=mixture
  else patch=192 every=2000 save=2000 run=gpu; fi
  em=$data/microscopy/em_isbi2012_train
  slices() { for i in $(seq "$1" "$2"); do ls "$em/$i".*; done; }
  "${PYTHON:-python}" -m napari_srgan train --hr $(slices 0 23) "$data/train/T91" --val $(slices 24 29) \
    --val-crop 256 --validate-every $every --base "${BASE:?set BASE to the model to fine-tune (grey: the first EM model, made by: $0 em 5200 DATA DIR)}" \
    --degradation mixture --blur-probability 0.5 --blur-sigma 0.3 1.5 --noise-probability 0.6 \
    --photons 10 1000 --read-noise 0 0.1 \
    --pixel-loss mse --learning-rate 1e-4 --steps "$steps" --patch $patch --batch 16 --seed 0 \
    --checkpoint-every $save --resume --no-download --half ${TIME_LIMIT:+--time-limit "$TIME_LIMIT"} \
    --out "$out/srresnet-em-grey-x4.safetensors" --checkpoint "$checkpoints/srresnet-grey-$run.ckpt" \
    --description "SRResNet-style 4x grey model for microscopy, clean or noisy: srresnet-em-grey-x4 fine-tuned on a mixture of degradations (clean bicubic; blur 0.3-1.5 px; shot noise 10-1000 photons, read noise 0-0.1), EM slices 0-23 + T91 in grey, on $patch px patches"
  ;;
rgb-l1 | rgb-mse)
  # The shipped RGB model: the first one (made by 'rgb') fine-tuned on a GPU on 192 px patches
  # (48 px LR, as EDSR), first with L1 (Adam restarted at 1e-4), then briefly with MSE.
  if [[ $kind == rgb-l1 ]]; then loss=l1 rate=1e-4; else loss=mse rate=2e-5; fi
  "${PYTHON:-python}" -m napari_srgan train --hr "$data/train/T91" "$data/train/BSD200" \
    --val "$data/val/Set5" --val-crop 0 --validate-every 2000 --base "${BASE:?set BASE to the model to fine-tune}" \
    --pixel-loss $loss --learning-rate $rate --steps "$steps" --patch 192 --batch 16 --seed 0 \
    --checkpoint-every 2000 --resume --no-download --half ${TIME_LIMIT:+--time-limit "$TIME_LIMIT"} \
    --out "$out/srresnet-rgb-x4.safetensors" --checkpoint "$checkpoints/srresnet-rgb-x4-$kind.ckpt" \
    --description "SRResNet-style 4x RGB photo model (no BN, bicubic input skip), napari-srgan default: trained with MSE, then fine-tuned on a GPU with L1 and MSE on 192 px patches of T91 + BSD200"
  ;;
*) echo "usage: $0 rgb|em|grey|rgb-l1|rgb-mse|grey-gpu STEPS [DATA_DIR] [OUT_DIR]" >&2; exit 2 ;;
esac
