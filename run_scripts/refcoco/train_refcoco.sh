#!/usr/bin/env bash
# shellcheck disable=SC2034  # the recipe variables below are read by common.sh's functions
# run_scripts/refcoco/train_refcoco.sh: fine-tune OFA for visual grounding (referring expression
# comprehension: text -> one box as four <bin_i> tokens) on RefCOCO, RefCOCO+ or RefCOCOg
# (--task refcoco; the official run_scripts/refcoco/train_refcoco*.sh).
#
# Usage: train_refcoco.sh SIZE [--smoke] [ofa-train options...]        SIZE: tiny|medium|base|large|huge
#
# Data layout (DATA_DIR default <repo>/data; the official refcoco_data.zip etc. unpacked):
#   $DATA_DIR/refcoco_data/refcoco_train.tsv   training rows
#   $DATA_DIR/refcoco_data/refcoco_val.tsv     validation (best checkpoint by Acc@0.5, logged as "acc")
#   refcoco_testA.tsv / refcoco_testB.tsv are scored afterwards with run_scripts/evaluate.sh.
#   DATASET=refcocoplus reads refcocoplus_data/refcocoplus_{train,val}.tsv (tests: testA, testB), and
#   DATASET=refcocog refcocog_data/refcocog_{train,val}.tsv (test: refcocog_test.tsv).
#   Or DATA=train.tsv[,train2.tsv,...],valid.tsv (epoch e reads train file (e-1) mod n; the last is valid).
#   Official TSV, tab-separated, no header, 5 columns:
#     0 uniq-id | 1 image-id | 2 referring text | 3 region "x0,y0,x1,y1" (pixels of the original image,
#     left, top, right, bottom) | 4 image (base64 of the JPEG/PNG bytes)
#   ($DATA_DIR/refcoco_data is the official dataset zip unpacked; check files with `ofa-data validate
#   FILE --task refcoco`.) Tokenizer: BPE_DIR (GPT-2 BPE). Pretrained weights: RESTORE_FILE
#   [$CKPT_DIR/ofa_<size>.pt; `ofa-checkpoints download ofa_<size> --cache-dir data/checkpoints`].
#   Output: SAVE_DIR [<repo>/runs/refcoco/<size>]: checkpoint_best.pt, checkpoint_last.pt, train.log.
#
# Recipe (docs/tasks.md 2.2, 2.9, 5): image 512x512, max 80 source / 20 target words, label smoothing 0.1,
#   dropout 0.1, attention dropout 0, 10 epochs with 6% warm-up (polynomial decay to 0), effective batch
#   128, validate and save every 500 updates, validation beam 5 with exactly 4 tokens.
#     large, huge:         lr 3e-5, encoder/decoder drop path 0.2 (README: "unlike the paper, 0.2")
#     tiny, medium, base:  lr 5e-5, drop path 0.1 (RefCOCOg: 12 epochs)
#   No official Huge fine-tuning script exists (OFA issue #308): huge takes the Large recipe.
#
# GPUs: the official runs use 4 GPUs x batch 4 x update-freq 8. Any count works: update-freq is chosen so
#   that GPUs x batch x update-freq stays 128 (UPDATE_FREQ=N or --update-freq N fixes it).
#   One GPU:       CUDA_VISIBLE_DEVICES=0 run_scripts/refcoco/train_refcoco.sh large
#   Several GPUs:  GPUS_PER_NODE=4 run_scripts/refcoco/train_refcoco.sh large       (torchrun)
#   Several nodes: on node i of 2: NNODES=2 NODE_RANK=i MASTER_ADDR=<ip of node 0> MASTER_PORT=29500 \
#                    GPUS_PER_NODE=8 run_scripts/refcoco/train_refcoco.sh large
#   Override example (arguments after SIZE reach ofa-train last and win):
#     DATASET=refcocoplus run_scripts/refcoco/train_refcoco.sh base --lr 3e-5 --max-epoch 12
#   DRY_RUN=1 prints the command only. Paths, resuming, FP16, workers: see run_scripts/common.sh.
#
# Expected (official README, Acc@0.5; RefCOCO / RefCOCO+ val, testA, testB; RefCOCOg val-u, test-u):
#   tiny    RefCOCO 80.20 84.07 75.00   RefCOCO+ 68.22 75.13 57.66   RefCOCOg 72.02 69.74
#   medium  RefCOCO 85.34 87.68 77.92   RefCOCO+ 76.09 83.04 66.25   RefCOCOg 78.76 78.58
#   base    RefCOCO 88.48 90.67 83.30   RefCOCO+ 81.39 87.15 74.29   RefCOCOg 82.29 82.31
#   large   RefCOCO 90.05 92.93 85.26   RefCOCO+ 85.80 89.87 79.22   RefCOCOg 85.89 86.55
#   huge    RefCOCO 92.04 94.03 88.44   RefCOCO+ 87.86 91.70 80.71   RefCOCOg 88.07 88.78
#
# CPU demo (what CI runs; about a minute): run_scripts/refcoco/train_refcoco.sh --smoke   (or SMOKE=1)
#   builds the embedded benchmark once in $DEMO_DIR [$SMOKE_DIR/demo_data] (ofa-synth generate, 24 images at
#   64 px, plus an ofa-tokenizer vocabulary), trains 2 updates of the ofa_test arch at 64 px with --cpu,
#   then ofa-evaluate writes $SMOKE_DIR/refcoco/results/test_metrics.json (SMOKE_DIR [<repo>/runs/smoke]).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../common.sh
source "$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)/common.sh"
ofa_init refcoco "$@"

DATASET=${DATASET:-refcoco}
case "$DATASET" in
    refcoco | refcocoplus | refcocog) ;;
    *) ofa_die "DATASET must be one of refcoco, refcocoplus, refcocog; got '$DATASET'" ;;
esac
case "$OFA_SIZE" in
    large | huge) LR=3e-5 DROP_PATH=0.2 EPOCHS=10 ;;
    *) LR=5e-5 DROP_PATH=0.1 EPOCHS=10 ;;
esac
if [[ "$DATASET" == refcocog && "$OFA_SIZE" != large && "$OFA_SIZE" != huge ]]; then
    EPOCHS=12
fi
MAX_EPOCH=${MAX_EPOCH:-$EPOCHS}
WARMUP_RATIO=0.06
BATCH_SIZE=${BATCH_SIZE:-4}
EFFECTIVE_BATCH=128
PATCH_IMAGE_SIZE=512
BEST_METRIC=acc
VALIDATE_EVERY=500

if [[ "$SMOKE" == 1 ]]; then
    DATA="$DEMO_DIR/refcoco_train.tsv,$DEMO_DIR/refcoco_valid.tsv"
else
    DATA=${DATA:-$DATA_DIR/${DATASET}_data/${DATASET}_train.tsv,$DATA_DIR/${DATASET}_data/${DATASET}_val.tsv}
fi

TASK_ARGS=(
    --task refcoco --criterion adjust_label_smoothed_cross_entropy --label-smoothing 0.1
    --max-src-length 80 --max-tgt-length 20 --num-bins 1000 --max-image-size 512
    --dropout 0.1 --attention-dropout 0.0
    --encoder-drop-path-rate "$DROP_PATH" --decoder-drop-path-rate "$DROP_PATH" --resnet-drop-path-rate 0.0
    --eval-beam 5 --eval-min-len 4 --eval-max-len-a 0 --eval-max-len-b 4
)
ofa_train "${TASK_ARGS[@]}"
if [[ "$SMOKE" == 1 ]]; then
    ofa_smoke_evaluate "$DEMO_DIR/refcoco_test.tsv"
fi
