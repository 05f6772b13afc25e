#!/bin/bash
# The 0.5M and 2M rungs of the tiny ladder (docs/quality.md): wave and transformer, each with its
# own sweep of five rates, seeds 0, 1 and 2. One thread per run; about an hour on a 2-core CPU.
cd "$(dirname "$0")/../../.."  # the repository root
WAVEFIELD=${WAVEFIELD:-.venv/bin/wavefield}
for seed in 0 1 2; do
  start=$(date +%s)
  $WAVEFIELD bench quality --preset tiny --models wave,transformer --steps 244 --sweep-steps 60 --lrs 1e-3,2e-3,4e-3,8e-3,1.6e-2 \
     --batch-size 16 --seq-len 128 --eval-interval 61 --eval-windows 32 --final-windows 200 --seed $seed --threads 1 --out runs/ladder/tiny-0.5M-s$seed
  echo "0.5M seed $seed rc=$? wall=$(( $(date +%s)-start ))s"
done
for seed in 0 1 2; do
  start=$(date +%s)
  $WAVEFIELD bench quality --preset tiny --models wave,transformer --steps 977 --sweep-steps 100 --lrs 1e-3,2e-3,4e-3,8e-3,1.6e-2 \
     --batch-size 16 --seq-len 128 --eval-interval 100 --eval-windows 32 --final-windows 200 --seed $seed --threads 1 --out runs/ladder/tiny-2M-s$seed
  echo "2M seed $seed rc=$? wall=$(( $(date +%s)-start ))s"
done
