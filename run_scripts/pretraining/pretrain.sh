#!/usr/bin/env bash
# run_scripts/pretraining/pretrain.sh: OFA pretraining on the unified multi-task mixture (task `unify`,
# the official `unify_task`; docs/tasks.md 3.4 and the official pretrain_ofa_{base,large}.sh).
#
# Usage: pretrain.sh {tiny|medium|base|large|huge} [--smoke] [ofa-train options...]
#
# Recipe (official script): lr 1e-4, batch 4 per GPU, 50 epochs, warm-up ratio 0.01, clip-norm 5.0,
# label smoothing 0, dropout 0.1, encoder/decoder drop-path 0.1, resnet drop-path 0, patch 384,
# --sample-patch-num 196 (random patches of the V-L batch v1), max-image-size 512, code-image-size 128,
# fp16 scale window 128, --disable-validation, save every 6000 updates, keep the last 15 epochs.
# It continues from the released checkpoint (RESTORE_FILE, default $CKPT_DIR/ofa_<size>.pt);
# RESTORE_FILE=none pretrains from scratch; with a randomly initialised ResNet (no ImageNet weights) pass
# --image-backbone-lr-scale 0.1, which kept its shape features on the embedded data (experiments/README.md).
# The global batch of the released models is not known (docs/tasks.md 3.4); EFFECTIVE_BATCH [4] sets it
# (update_freq is derived from it).
#
# Files (official names; DATA_DIR/pretrain_data/ by default, or set each variable):
#   VL_DATA         vision_language_examples.tsv (pretrain_vl: uniq_id, image, caption, question, refs,
#                   gt_objects, dataset_name, type)
#   TEXT_DATA       text_examples.tsv (uniq_id, text)
#   IMAGE_DATA      image_examples.tsv (uniq_id, 256 px image, 256 VQGAN codes of the centre)
#   DETECTION_DATA  detection_examples.tsv (uniq_id, image, x0,y0,x1,y1,cat_id,cat_name&&...)
#   NEG_SAMPLE_DIR  negative_sample/ (type2ans.json, object.txt, all_captions.txt)
# A source whose file is missing is left out of the mixture (with a warning).
#
# --smoke: CPU demo. Makes the embedded benchmark's pretraining sources (ofa-synth pretrain,
# train-split scenes only; no image-infilling file unless VQGAN_DIR
# names a VQGAN checkpoint folder, since codes are never invented), then 2 updates of ofa_test at 64 px
# with code-image-size 32. No evaluation follows (pretraining has no metric).
#
# Other variables: see run_scripts/common.sh (DATA_DIR, BPE_DIR, CKPT_DIR, SAVE_DIR, DRY_RUN, ...).
# shellcheck shell=bash
set -euo pipefail
source "$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)/common.sh"
ofa_init pretraining "$@"

LR=1e-4
MAX_EPOCH=${MAX_EPOCH:-50}
WARMUP_RATIO=0.01
BATCH_SIZE=${BATCH_SIZE:-4}
EFFECTIVE_BATCH=${EFFECTIVE_BATCH:-4}
PATCH_IMAGE_SIZE=384
BEST_METRIC=loss
KEEP_EPOCHS=15
CODE_IMAGE_SIZE=128

if [[ "$SMOKE" == 1 ]]; then
    ofa_demo_data
    PRE_DIR=$DEMO_DIR/pretrain
    if [[ ! -f "$PRE_DIR/pretrain_manifest.json" ]]; then
        gen=("$(ofa_bin ofa-synth)" pretrain "$PRE_DIR" --num-images 40 --image-size 64 --seed 0
             --code-image-size 32 --quiet)
        [[ -n "${VQGAN_DIR:-}" ]] && gen+=(--vqgan "$VQGAN_DIR")
        ofa_run "${gen[@]}"
    fi
    VL_DATA=$PRE_DIR/pretrain_vl.tsv
    TEXT_DATA=$PRE_DIR/pretrain_text.tsv
    IMAGE_DATA=$PRE_DIR/pretrain_image.tsv
    DETECTION_DATA=$PRE_DIR/pretrain_detection.tsv
    NEG_SAMPLE_DIR=$PRE_DIR
    CODE_IMAGE_SIZE=32
    DATA=$VL_DATA
else
    PRE_DIR=${DATA_DIR}/pretrain_data
    VL_DATA=${VL_DATA:-$PRE_DIR/vision_language_examples.tsv}
    TEXT_DATA=${TEXT_DATA:-$PRE_DIR/text_examples.tsv}
    IMAGE_DATA=${IMAGE_DATA:-$PRE_DIR/image_examples.tsv}
    DETECTION_DATA=${DETECTION_DATA:-$PRE_DIR/detection_examples.tsv}
    NEG_SAMPLE_DIR=${NEG_SAMPLE_DIR:-$PRE_DIR/negative_sample}
    DATA=${DATA:-$VL_DATA}
fi

EXTRA_ARGS=()
add_source() {  # add_source FLAG FILE NAME
    if [[ -e "$2" ]]; then
        EXTRA_ARGS+=("$1" "$2")
    elif [[ "$DRY_RUN" == 1 && "$SMOKE" != 1 ]]; then
        EXTRA_ARGS+=("$1" "$2")
        ofa_log "warning: $3 not found: $2"
    else
        ofa_log "warning: $3 not found ($2): left out of the mixture"
    fi
}
add_source --text-data "$TEXT_DATA" "text source"
add_source --image-data "$IMAGE_DATA" "image-infilling source"
add_source --detection-data "$DETECTION_DATA" "detection source"
[[ -d "$NEG_SAMPLE_DIR" ]] && EXTRA_ARGS+=(--neg-sample-dir "$NEG_SAMPLE_DIR")

# official values that differ from the fine-tuning defaults of common.sh; placed before the user's
# overrides so that those still win
OFA_OVERRIDES=(--clip-norm 5.0 --disable-validation "${OFA_OVERRIDES[@]}")
[[ "$ON_GPU" == 1 ]] && OFA_OVERRIDES=(--fp16-scale-window 128 "${OFA_OVERRIDES[@]}")

TASK_ARGS=(
    --task unify --criterion adjust_label_smoothed_cross_entropy --label-smoothing 0.0
    --sample-patch-num 196 --max-src-length 80 --max-tgt-length 30 --num-bins 1000
    --max-image-size 512 --code-image-size "$CODE_IMAGE_SIZE" --pretrain-seed 7
    --mask-ratio 0.3 --poisson-lambda 3.0 --replace-length 1
    --dropout 0.1 --attention-dropout 0.0
    --encoder-drop-path-rate 0.1 --decoder-drop-path-rate 0.1 --resnet-drop-path-rate 0.0
    "${EXTRA_ARGS[@]}"
)
[[ "$SMOKE" == 1 ]] || TASK_ARGS+=(--save-interval-updates 6000)
ofa_train "${TASK_ARGS[@]}"
[[ "$SMOKE" == 1 && "$DRY_RUN" != 1 ]] && ofa_log "smoke pretraining done: $SAVE_DIR"
exit 0
