#!/usr/bin/env bash
# shellcheck disable=SC2034  # the recipe variables below are read by common.sh's functions
# run_scripts/caption/train_caption_stage1.sh: fine-tune OFA for COCO image captioning, stage 1
# (cross-entropy with label smoothing and drop-worst; --task caption; the official
# run_scripts/caption/train_caption_stage1*.sh). Stage 2 (CIDEr optimisation) continues from its best
# checkpoint: run_scripts/caption/train_caption_stage2.sh.
#
# Usage: train_caption_stage1.sh SIZE [--smoke] [ofa-train options...]   SIZE: tiny|medium|base|large|huge
#
# Data layout (DATA_DIR default <repo>/data; the official caption_data.zip unpacked):
#   $DATA_DIR/caption_data/caption_stage1_train.tsv   training rows, one caption per row
#   $DATA_DIR/caption_data/caption_val.tsv            validation (best checkpoint by CIDEr-D)
#   $DATA_DIR/caption_data/caption_test.tsv           Karpathy test: run_scripts/evaluate.sh afterwards
#   $DATA_DIR/caption_data/cider_cached_tokens/coco-valid-words.p   optional: CIDEr document frequencies
#                                                     (without it they come from the validation references)
#   Or DATA=train.tsv[,train2.tsv,...],valid.tsv (epoch e reads train file (e-1) mod n; the last is valid).
#   Official TSV, tab-separated, no header, 5 columns:
#     0 uniq-id | 1 image-id | 2 caption (val/test: ~5 references joined by "&&") |
#     3 predicted object labels ("&&"-joined, unused) | 4 image (base64 of the JPEG/PNG bytes)
#   Stage 1 uses column 0 as the sample id (official --selected-cols 0,4,2, the default by name here).
#   Tokenizer: BPE_DIR (GPT-2 BPE). Pretrained weights: RESTORE_FILE [$CKPT_DIR/ofa_<size>.pt;
#   `ofa-checkpoints download ofa_<size> --cache-dir data/checkpoints`].
#   Output: SAVE_DIR [<repo>/runs/caption_stage1/<size>]: checkpoint_best.pt (stage 2 starts from it), train.log.
#
# Recipe (docs/tasks.md 2.1, 2.9, 5): image 480x480 squashed, max 80 source / 20 target words, label
#   smoothing 0.1, drop-worst ratio 0.2, dropout 0.1, attention dropout 0, drop path 0.1 (ResNet 0), lr 1e-5
#   with 6% warm-up and linear decay, effective batch 128, frozen token embeddings, validate and save every
#   500 updates, validation beam 5, max 16 tokens, no repeated trigrams.
#     large, huge:         2 epochs, drop-worst after 2500 updates
#     tiny, medium, base:  5 epochs, drop-worst after 6000 updates
#   No official Huge fine-tuning script exists (OFA issue #308): huge takes the Large recipe.
#
# GPUs: the official runs use 4 GPUs x batch 8 x update-freq 4. Any count works: update-freq is chosen so
#   that GPUs x batch x update-freq stays 128 (UPDATE_FREQ=N or --update-freq N fixes it).
#   One GPU:       CUDA_VISIBLE_DEVICES=0 run_scripts/caption/train_caption_stage1.sh large
#   Several GPUs:  GPUS_PER_NODE=4 run_scripts/caption/train_caption_stage1.sh large       (torchrun)
#   Several nodes: on node i of 2: NNODES=2 NODE_RANK=i MASTER_ADDR=<ip of node 0> MASTER_PORT=29500 \
#                    GPUS_PER_NODE=8 run_scripts/caption/train_caption_stage1.sh large
#   Override example (arguments after SIZE reach ofa-train last and win):
#     BATCH_SIZE=16 run_scripts/caption/train_caption_stage1.sh base --lr 2e-5 --drop-worst-after 4000
#   DRY_RUN=1 prints the command only. Paths, resuming, FP16, workers: see run_scripts/common.sh.
#
# Expected (official README, COCO Karpathy test CIDEr after stage 1 / after stage 2):
#   tiny 119.0 / 128.7   medium 130.4 / 140.3   base 138.2 / 146.7   large 142.2 / 150.7   huge 145.3 / 154.9
#   (the official Large stage-1 script reaches about 139.5 validation CIDEr).
#
# CPU demo (what CI runs; about a minute): run_scripts/caption/train_caption_stage1.sh --smoke  (or SMOKE=1)
#   builds the embedded benchmark once in $DEMO_DIR [$SMOKE_DIR/demo_data] (ofa-synth generate, 24 images at
#   64 px, plus an ofa-tokenizer vocabulary), trains 2 updates of the ofa_test arch at 64 px with --cpu,
#   then ofa-evaluate writes $SMOKE_DIR/caption_stage1/results/test_metrics.json
#   (SMOKE_DIR [<repo>/runs/smoke]); the stage-2 demo starts from this checkpoint.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../common.sh
source "$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)/common.sh"
ofa_init caption_stage1 "$@"

case "$OFA_SIZE" in
    large | huge) EPOCHS=2 DROP_WORST_AFTER=2500 ;;
    *) EPOCHS=5 DROP_WORST_AFTER=6000 ;;
esac
LR=1e-5
MAX_EPOCH=${MAX_EPOCH:-$EPOCHS}
WARMUP_RATIO=0.06
BATCH_SIZE=${BATCH_SIZE:-8}
EFFECTIVE_BATCH=128
PATCH_IMAGE_SIZE=480
BEST_METRIC=cider
VALIDATE_EVERY=500
FREEZE_EMBEDDINGS=1

TASK_ARGS=(
    --task caption --criterion adjust_label_smoothed_cross_entropy --label-smoothing 0.1
    --drop-worst-ratio 0.2 --drop-worst-after "$DROP_WORST_AFTER"
    --max-src-length 80 --max-tgt-length 20 --num-bins 1000
    --dropout 0.1 --attention-dropout 0.0
    --encoder-drop-path-rate 0.1 --decoder-drop-path-rate 0.1 --resnet-drop-path-rate 0.0
    --eval-beam 5 --eval-max-len-b 16 --eval-no-repeat-ngram-size 3
)
if [[ "$SMOKE" == 1 ]]; then
    DATA="$DEMO_DIR/caption_train.tsv,$DEMO_DIR/caption_valid.tsv"
else
    DATA=${DATA:-$DATA_DIR/caption_data/caption_stage1_train.tsv,$DATA_DIR/caption_data/caption_val.tsv}
    CIDER_CACHED=${CIDER_CACHED:-$DATA_DIR/caption_data/cider_cached_tokens/coco-valid-words.p}
    if [[ -f "$CIDER_CACHED" ]]; then
        TASK_ARGS+=(--eval-cider-cached-tokens "$CIDER_CACHED")
    fi
fi

ofa_train "${TASK_ARGS[@]}"
if [[ "$SMOKE" == 1 ]]; then
    ofa_smoke_evaluate "$DEMO_DIR/caption_test.tsv"
fi
