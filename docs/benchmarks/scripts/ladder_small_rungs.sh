#!/bin/bash
# The 0.5M and 2M rungs of the tiny ladder (docs/quality.md): wave and transformer, each with its
# own sweep of five rates, seeds 0, 1 and 2. One thread per run; about an hour on a 2-core CPU.
cd "$(dirname "$0")/../../.."  # the repository root
WAVEFIELD=${WAVEFIELD:-.venv/bin/wavefield}
rung() {  # NAME STEPS SWEEP_STEPS EVAL_INTERVAL: one rung, three seeds
  for seed in 0 1 2; do
    start=$(date +%s)
    $WAVEFIELD bench quality --preset tiny --models wave,transformer --steps $2 --sweep-steps $3 --lrs 1e-3,2e-3,4e-3,8e-3,1.6e-2 \
       --batch-size 16 --seq-len 128 --eval-interval $4 --eval-windows 32 --final-windows 200 --seed $seed --threads 1 --out runs/ladder/tiny-$1-s$seed
    echo "$1 seed $seed rc=$? wall=$(( $(date +%s)-start ))s"
  done
}
rung 0.5M 244 60 61
rung 2M 977 100 100
