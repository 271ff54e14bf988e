#!/bin/sh
# Data A/B (docs/ARCHITECTURES.md §8): Fluent 3D only vs Fluent 3D + Noto + Twemoji, 600 U-Net steps each, one
# thread per arm, judged on the Fluent 3D held-out set at the model's sampler defaults (10 steps, CFG 3).
# Run from a work folder outside the repository, with the npm tarballs in /tmp/npm (`npm pack` each package):
#   sh $REPO/benchmarks/default_model/data_ab/run.sh $REPO
# What ran on 2026-11-30 (shared 2-core machine): arm A in full; arm B stopped at step 360 for time. Both were judged
# at step 300 from copies of runs/ab-data-*/unet/checkpoint taken before step 600 (EMA and raw weights: eval-*-300*.json).
set -e
REPO=${1:?repository root}
HERE=$REPO/benchmarks/default_model/data_ab
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=$REPO
LD="python -m latentdiff.cli"
$LD data emoji data/emoji-3d --tarballs /tmp/npm
$LD data emoji data/emoji-mix --tarballs /tmp/npm --sets fluent3d,noto,twemoji
for arm in 3d mix; do
  python $HERE/setup.py $HERE/$arm.yaml                   # the shipped VAE, latents at the shipped scale
  $LD train $HERE/$arm.yaml --stage unet > train-$arm.log 2>&1 &
done
wait
for arm in 3d mix; do
  $LD train $HERE/$arm.yaml --stage export
  $LD eval data/emoji-3d --model runs/ab-data-$arm/model --work-dir runs/eval --out $HERE/eval-$arm.json
  cp runs/ab-data-$arm/unet/log.csv $HERE/loss-$arm.csv
done
