#!/bin/bash
# The small preset at its default budget (docs/quality.md): the default wave model and the
# transformer, each with its own sweep of five rates, for the seeds given (default 0 1 2).
# One thread per run; about an hour per seed on a 2-core CPU with one other job beside it.
cd "$(dirname "$0")/../../.."  # the repository root
WAVEFIELD=${WAVEFIELD:-.venv/bin/wavefield}
for seed in ${@:-0 1 2}; do
  start=$(date +%s)
  $WAVEFIELD bench quality --preset small --models wave,transformer --lrs 5e-4,1e-3,2e-3,4e-3,8e-3 \
     --seed $seed --threads 1 --out runs/ladder/small-s$seed
  echo "small seed $seed rc=$? wall=$(( $(date +%s)-start ))s"
done
