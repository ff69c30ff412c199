#!/usr/bin/env bash
# shellcheck disable=SC2034  # the recipe variables below are read by common.sh's functions
# run_scripts/snli_ve/train_snli_ve.sh: fine-tune OFA for visual entailment on SNLI-VE (image premise +
# hypothesis -> yes / no / maybe; --task snli_ve; the official run_scripts/snli_ve/train_snli_ve*.sh).
#
# Usage: train_snli_ve.sh SIZE [--smoke] [ofa-train options...]      SIZE: tiny|medium|base|large|huge
#
# Data layout (DATA_DIR default <repo>/data; the official snli_ve_data.zip unpacked):
#   $DATA_DIR/snli_ve_data/snli_ve_train.tsv    training rows
#   $DATA_DIR/snli_ve_data/snli_ve_dev.tsv      validation (best checkpoint by accuracy, "snli_score")
#   snli_ve_test.tsv is scored afterwards with run_scripts/evaluate.sh.
#   Or DATA=train.tsv[,train2.tsv,...],valid.tsv (epoch e reads train file (e-1) mod n; the last is valid).
#   Official TSV, tab-separated, no header, 6 columns:
#     0 uniq-id | 1 image-id | 2 image (base64 of the JPEG/PNG bytes) | 3 hypothesis |
#     4 caption (the text premise, read with --add-caption) | 5 label (entailment / neutral / contradiction)
#   Tokenizer: BPE_DIR (GPT-2 BPE). Pretrained weights: RESTORE_FILE [$CKPT_DIR/ofa_<size>.pt;
#   `ofa-checkpoints download ofa_<size> --cache-dir data/checkpoints`].
#   Output: SAVE_DIR [<repo>/runs/snli_ve/<size>]: checkpoint_best.pt, checkpoint_last.pt, train.log.
#
# Recipe (docs/tasks.md 2.4, 2.9, 5): image 480x480 squashed, max 80 source / 20 target words, the text
#   premise in the prompt (--add-caption, as officially; it hands the model the premise text, OFA issue
#   #357: ADD_CAPTION=0 for image-only entailment), decoder prompt = the source (--prompt-type prev_output),
#   answers constrained to yes/no/maybe, no label smoothing, dropout 0.1, attention dropout 0, 6% warm-up and
#   linear decay, effective batch 256, validate and save every 500 updates.
#     large, huge:         lr 2e-5, 6 epochs, drop path 0.2
#     tiny, medium, base:  lr 5e-5, 5 epochs, drop path 0.1
#   No official Huge fine-tuning script exists (OFA issue #308): huge takes the Large recipe.
#
# GPUs: the official runs use 8 GPUs x batch 4 x update-freq 8. Any count works: update-freq is chosen so
#   that GPUs x batch x update-freq stays 256 (UPDATE_FREQ=N or --update-freq N fixes it).
#   One GPU:       CUDA_VISIBLE_DEVICES=0 run_scripts/snli_ve/train_snli_ve.sh base
#   Several GPUs:  GPUS_PER_NODE=8 run_scripts/snli_ve/train_snli_ve.sh large       (torchrun)
#   Several nodes: on node i of 2: NNODES=2 NODE_RANK=i MASTER_ADDR=<ip of node 0> MASTER_PORT=29500 \
#                    GPUS_PER_NODE=8 run_scripts/snli_ve/train_snli_ve.sh large
#   Override example (arguments after SIZE reach ofa-train last and win):
#     run_scripts/snli_ve/train_snli_ve.sh large --lr 3e-5 --max-epoch 5
#   DRY_RUN=1 prints the command only. Paths, resuming, FP16, workers: see run_scripts/common.sh.
#
# Expected (official README, SNLI-VE accuracy dev / test):
#   tiny 85.3 / 85.2   medium 86.6 / 87.0   base 89.3 / 89.2   large 90.3 / 90.2   huge 91.0 / 91.2
#
# CPU demo (what CI runs; about a minute): run_scripts/snli_ve/train_snli_ve.sh --smoke   (or SMOKE=1)
#   builds the embedded benchmark once in $DEMO_DIR [$SMOKE_DIR/demo_data] (ofa-synth generate, 24 images at
#   64 px, plus an ofa-tokenizer vocabulary), trains 2 updates of the ofa_test arch at 64 px with --cpu,
#   then ofa-evaluate writes $SMOKE_DIR/snli_ve/results/test_metrics.json (SMOKE_DIR [<repo>/runs/smoke]).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../common.sh
source "$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)/common.sh"
ofa_init snli_ve "$@"

case "$OFA_SIZE" in
    large | huge) LR=2e-5 EPOCHS=6 DROP_PATH=0.2 ;;
    *) LR=5e-5 EPOCHS=5 DROP_PATH=0.1 ;;
esac
MAX_EPOCH=${MAX_EPOCH:-$EPOCHS}
WARMUP_RATIO=0.06
BATCH_SIZE=${BATCH_SIZE:-4}
EFFECTIVE_BATCH=256
PATCH_IMAGE_SIZE=480
BEST_METRIC=snli_score
VALIDATE_EVERY=500

if [[ "$SMOKE" == 1 ]]; then
    DATA="$DEMO_DIR/snli_ve_train.tsv,$DEMO_DIR/snli_ve_valid.tsv"
else
    DATA=${DATA:-$DATA_DIR/snli_ve_data/snli_ve_train.tsv,$DATA_DIR/snli_ve_data/snli_ve_dev.tsv}
fi

TASK_ARGS=(
    --task snli_ve --prompt-type prev_output --val-inference-type allcand --valid-batch-size 20
    --criterion adjust_label_smoothed_cross_entropy --label-smoothing 0.0
    --max-src-length 80 --max-tgt-length 20 --num-bins 1000
    --dropout 0.1 --attention-dropout 0.0
    --encoder-drop-path-rate "$DROP_PATH" --decoder-drop-path-rate "$DROP_PATH" --resnet-drop-path-rate 0.0
)
if [[ "${ADD_CAPTION:-1}" == 1 ]]; then
    TASK_ARGS+=(--add-caption)
fi
ofa_train "${TASK_ARGS[@]}"
if [[ "$SMOKE" == 1 ]]; then
    ofa_smoke_evaluate "$DEMO_DIR/snli_ve_test.tsv"
fi
