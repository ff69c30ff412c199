#!/usr/bin/env bash
# shellcheck disable=SC2034  # the recipe variables below are read by common.sh's functions
# run_scripts/caption/train_caption_stage2.sh: COCO captioning stage 2, CIDEr optimisation (self-critical
# sequence training: --criterion scst_reward_criterion; the 5 beam hypotheses of each image are its
# samples, with a leave-one-out baseline), restored from the stage-1 best checkpoint (the official
# run_scripts/caption/train_caption_stage2*.sh).
#
# Usage: train_caption_stage2.sh SIZE [--smoke] [ofa-train options...]   SIZE: tiny|medium|base|large|huge
#
# Data layout (DATA_DIR default <repo>/data; the official caption_data.zip unpacked):
#   $DATA_DIR/caption_data/caption_stage2_train.tsv   training rows, one image per row, its references
#                                                     joined by "&&" (the CIDEr reward's references)
#   $DATA_DIR/caption_data/caption_val.tsv            validation (best checkpoint by CIDEr-D)
#   $DATA_DIR/caption_data/cider_cached_tokens/coco-train-words.p   optional: document frequencies of the
#                                                     reward (without it: the references of each batch;
#                                                     for other data: ofa-data cider-df TRAIN.tsv --out F.p)
#   Or DATA=train.tsv[,train2.tsv,...],valid.tsv.
#   Official TSV, tab-separated, no header, 5 columns:
#     0 uniq-id | 1 image-id | 2 references joined by "&&" | 3 predicted object labels (unused) |
#     4 image (base64 of the JPEG/PNG bytes)
#   Stage 2 uses column 1 (the COCO image id) as the sample id: --selected-cols 1,4,2 as officially.
#   Tokenizer: BPE_DIR (GPT-2 BPE). Start: RESTORE_FILE [<repo>/runs/caption_stage1/<size>/checkpoint_best.pt,
#   written by train_caption_stage1.sh; the official Large one: `ofa-checkpoints download caption_stage1_best`].
#   Output: SAVE_DIR [<repo>/runs/caption_stage2/<size>]: checkpoint_best.pt, checkpoint_last.pt, train.log.
#
# Recipe (docs/tasks.md 4.2, 5): image 480x480, max 80 source / 20 target words, no label smoothing, no
#   dropout or drop path, lr 1e-5 with 6% warm-up and linear decay (to 2e-7 for large/huge, to 0 for the
#   smaller sizes), 3 epochs, effective batch 64, frozen token embeddings, --memory-efficient-fp16 on GPU,
#   SCST beam 5, max 16 tokens, no repeated trigrams; validate and save every 500 updates.
#   No official Huge fine-tuning script exists (OFA issue #308): huge takes the Large recipe.
#   If CIDEr collapses (fp16 overflow, OFA issues #28 #108 #267): lower --lr, raise UPDATE_FREQ, add
#   --freeze-resnet.
#
# GPUs: the official runs use 8 GPUs x batch 2 x update-freq 4 (batch 4 does not fit a 32 GB V100 with
#   Large). Any count works: update-freq is chosen so that GPUs x batch x update-freq stays 64.
#   One GPU:       CUDA_VISIBLE_DEVICES=0 run_scripts/caption/train_caption_stage2.sh large
#   Several GPUs:  GPUS_PER_NODE=8 run_scripts/caption/train_caption_stage2.sh large       (torchrun)
#   Several nodes: on node i of 2: NNODES=2 NODE_RANK=i MASTER_ADDR=<ip of node 0> MASTER_PORT=29500 \
#                    GPUS_PER_NODE=8 run_scripts/caption/train_caption_stage2.sh large
#   Override example (arguments after SIZE reach ofa-train last and win):
#     RESTORE_FILE=/ckpt/caption_stage1_best.pt run_scripts/caption/train_caption_stage2.sh large --lr 5e-6
#   DRY_RUN=1 prints the command only. Paths, resuming, FP16, workers: see run_scripts/common.sh.
#
# Expected (official README, COCO Karpathy test CIDEr after stage 2; stage 1 in brackets):
#   tiny 128.7 (119.0)   medium 140.3 (130.4)   base 146.7 (138.2)   large 150.7 (142.2)   huge 154.9 (145.3)
#   (the released Large caption checkpoint reproduces 149.6).
#
# CPU demo (what CI runs; about a minute): run_scripts/caption/train_caption_stage2.sh --smoke  (or SMOKE=1)
#   builds the embedded benchmark once in $DEMO_DIR [$SMOKE_DIR/demo_data], restores the stage-1 demo
#   checkpoint $SMOKE_DIR/caption_stage1/checkpoint_best.pt when it exists (else starts from scratch), trains
#   2 SCST updates of the ofa_test arch at 64 px with --cpu, then ofa-evaluate writes
#   $SMOKE_DIR/caption_stage2/results/test_metrics.json (SMOKE_DIR [<repo>/runs/smoke]).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../common.sh
source "$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)/common.sh"
ofa_init caption_stage2 "$@"

case "$OFA_SIZE" in
    large | huge) END_LR=2e-7 ;;
    *) END_LR=0 ;;
esac
LR=1e-5
MAX_EPOCH=${MAX_EPOCH:-3}
WARMUP_RATIO=0.06
BATCH_SIZE=${BATCH_SIZE:-2}
EFFECTIVE_BATCH=64
PATCH_IMAGE_SIZE=480
BEST_METRIC=cider
VALIDATE_EVERY=500
FREEZE_EMBEDDINGS=1
FP16_FLAG=--memory-efficient-fp16

TASK_ARGS=(
    --task caption --selected-cols "1,4,2"
    --criterion scst_reward_criterion --scst-beam 5 --scst-max-len-b 16 --scst-no-repeat-ngram-size 3
    --max-src-length 80 --max-tgt-length 20 --num-bins 1000
    --dropout 0.0 --attention-dropout 0.0
    --encoder-drop-path-rate 0.0 --decoder-drop-path-rate 0.0 --resnet-drop-path-rate 0.0
    --eval-beam 5 --eval-max-len-b 16 --eval-no-repeat-ngram-size 3
)
if [[ "$SMOKE" == 1 ]]; then
    # the official stage-2 layout from the demo's stage-1 rows: one row per image, its captions joined by &&
    STAGE2_TRAIN=$DEMO_DIR/caption_stage2_train.tsv
    if [[ "$DRY_RUN" != 1 && ! -s "$STAGE2_TRAIN" ]]; then
        ofa_demo_data
        awk -F'\t' -v OFS='\t' '{ if ($2 in cap) cap[$2] = cap[$2] "&&" $3;
                                   else { ids[++n] = $2; cap[$2] = $3; lab[$2] = $4; img[$2] = $5 } }
             END { for (i = 1; i <= n; i++) { k = ids[i]; print k, k, cap[k], lab[k], img[k] } }' \
            "$DEMO_DIR/caption_train.tsv" > "$STAGE2_TRAIN.tmp" && mv "$STAGE2_TRAIN.tmp" "$STAGE2_TRAIN"
    fi
    DATA="$STAGE2_TRAIN,$DEMO_DIR/caption_valid.tsv"
    SMOKE_RESTORE=$SMOKE_DIR/caption_stage1/checkpoint_best.pt
    if [[ ! -f "$SMOKE_RESTORE" ]]; then
        ofa_log "no stage-1 demo checkpoint ($SMOKE_RESTORE): the SCST demo starts from scratch"
    fi
else
    DATA=${DATA:-$DATA_DIR/caption_data/caption_stage2_train.tsv,$DATA_DIR/caption_data/caption_val.tsv}
    DEFAULT_RESTORE=$OFA_REPO/runs/caption_stage1/$OFA_SIZE/checkpoint_best.pt
    CIDER_CACHED=${CIDER_CACHED:-$DATA_DIR/caption_data/cider_cached_tokens/coco-train-words.p}
    if [[ -f "$CIDER_CACHED" ]]; then
        TASK_ARGS+=(--scst-cider-cached-tokens "$CIDER_CACHED")
    fi
    VALID_CIDER_CACHED=$DATA_DIR/caption_data/cider_cached_tokens/coco-valid-words.p
    if [[ -f "$VALID_CIDER_CACHED" ]]; then
        TASK_ARGS+=(--eval-cider-cached-tokens "$VALID_CIDER_CACHED")
    fi
fi

ofa_train "${TASK_ARGS[@]}"
if [[ "$SMOKE" == 1 ]]; then
    ofa_smoke_evaluate "$DEMO_DIR/caption_test.tsv"
fi
