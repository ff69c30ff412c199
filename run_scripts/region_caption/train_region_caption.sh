#!/usr/bin/env bash
# shellcheck disable=SC2034  # the recipe variables below are read by common.sh's functions
# run_scripts/region_caption/train_region_caption.sh: fine-tune OFA for grounded (region) captioning
# (--task region_caption: image + a region as four <bin_i> tokens -> its caption), e.g. on RefCOCO's
# expressions or Visual Genome's region descriptions.
#
# Usage: train_region_caption.sh SIZE [--smoke] [ofa-train options...]  SIZE: tiny|medium|base|large|huge
#
# Data layout (DATA_DIR default <repo>/data), written by `ofa-data convert refcoco_regions` (training file
#   without --join-refs, validation with --join-refs) or `ofa-data convert vg_regions`:
#   $DATA_DIR/region_caption/region_caption_train.tsv   training rows (one caption per row)
#   $DATA_DIR/region_caption/region_caption_val.tsv     validation (references &&-joined; best by CIDEr-D)
#   Or DATA=train.tsv[,train2.tsv,...],valid.tsv (epoch e reads train file (e-1) mod n; the last is valid).
#   Official TSV (the refcoco layout with the caption in the text column), tab-separated, no header,
#   5 columns:
#     0 uniq-id | 1 image-id | 2 caption (validation: the references joined by &&) | 3 region "x0,y0,x1,y1"
#     (pixels of the original image, left, top, right, bottom) | 4 image (base64 of the JPEG/PNG bytes)
#   (check files with `ofa-data validate FILE --task region_caption`.) Tokenizer: BPE_DIR (GPT-2 BPE).
#   Pretrained weights: RESTORE_FILE [$CKPT_DIR/ofa_<size>.pt]. Output: SAVE_DIR
#   [<repo>/runs/region_caption/<size>]: checkpoint_best.pt, checkpoint_last.pt, train.log. Score the test
#   split afterwards with run_scripts/evaluate.sh (CIDEr, BLEU, METEOR, ROUGE-L by pycocoevalcap).
#
# Recipe (the project's, after the official caption stage 1; the official code has no region-caption
#   finetuning): image 480x480, max 80 source / 20 target words, label smoothing 0.1, dropout 0.1,
#   5 epochs with 6% warm-up (polynomial decay to 0), effective batch 128, validate and save every 500
#   updates, validation beam 5, at most 16 tokens, no repeated trigram.
#     every size:  lr 1e-5, encoder/decoder drop path 0.1 (large, huge: 0.2)
#   CIDEr optimisation afterwards: --criterion scst_reward_criterion, as caption stage 2.
#
# GPUs: the official runs use 8 GPUs x batch 8 x update-freq 2 for captioning (effective 128), as this recipe does.
#   Any count works: update-freq is chosen so that GPUs x batch x update-freq stays 128
#   (UPDATE_FREQ=N or --update-freq N fixes it).
#   One GPU:       CUDA_VISIBLE_DEVICES=0 run_scripts/region_caption/train_region_caption.sh large
#   Several GPUs:  GPUS_PER_NODE=8 run_scripts/region_caption/train_region_caption.sh large       (torchrun)
#   Several nodes: on node i of 2: NNODES=2 NODE_RANK=i MASTER_ADDR=<ip of node 0> MASTER_PORT=29500 \
#                    GPUS_PER_NODE=8 run_scripts/region_caption/train_region_caption.sh large
#   Override example (arguments after SIZE reach ofa-train last and win):
#     run_scripts/region_caption/train_region_caption.sh base --lr 2e-5 --max-epoch 3
#   DRY_RUN=1 prints the command only. Paths, resuming, FP16, workers: see run_scripts/common.sh.
#
# Expected: no official OFA region-caption results exist. On the embedded benchmark (ofa-synth run --tasks
#   region_caption; experiments/README.md) the main job's small model reaches the CIDEr given there.
#
# CPU demo (what CI runs; about a minute): run_scripts/region_caption/train_region_caption.sh --smoke
#   (or SMOKE=1) builds the embedded benchmark once in $DEMO_DIR [$SMOKE_DIR/demo_data], trains 2 updates of
#   the ofa_test arch at 64 px with --cpu, then ofa-evaluate writes
#   $SMOKE_DIR/region_caption/results/test_metrics.json.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../common.sh
source "$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)/common.sh"
ofa_init region_caption "$@"

case "$OFA_SIZE" in
    large | huge) DROP_PATH=0.2 ;;
    *) DROP_PATH=0.1 ;;
esac
LR=1e-5
MAX_EPOCH=${MAX_EPOCH:-5}
WARMUP_RATIO=0.06
BATCH_SIZE=${BATCH_SIZE:-8}
EFFECTIVE_BATCH=128
PATCH_IMAGE_SIZE=480
BEST_METRIC=cider
VALIDATE_EVERY=500

if [[ "$SMOKE" == 1 ]]; then
    DATA="$DEMO_DIR/region_caption_train.tsv,$DEMO_DIR/region_caption_valid.tsv"
else
    DATA=${DATA:-$DATA_DIR/region_caption/region_caption_train.tsv,$DATA_DIR/region_caption/region_caption_val.tsv}
fi

TASK_ARGS=(
    --task region_caption --criterion adjust_label_smoothed_cross_entropy --label-smoothing 0.1
    --max-src-length 80 --max-tgt-length 20 --num-bins 1000 --max-image-size 512
    --dropout 0.1 --attention-dropout 0.0
    --encoder-drop-path-rate "$DROP_PATH" --decoder-drop-path-rate "$DROP_PATH" --resnet-drop-path-rate 0.0
    --eval-beam 5 --eval-max-len-b 16 --eval-no-repeat-ngram-size 3
)
ofa_train "${TASK_ARGS[@]}"
if [[ "$SMOKE" == 1 ]]; then
    ofa_smoke_evaluate "$DEMO_DIR/region_caption_test.tsv"
fi
