#!/usr/bin/env bash
# shellcheck disable=SC2034  # the recipe variables below are read by common.sh's functions
# run_scripts/detection/train_detection.sh: fine-tune OFA for object detection as a sequence (--task
# detection: image -> four <bin_i> tokens and the class name per object, Pix2Seq-style), e.g. on COCO.
#
# Usage: train_detection.sh SIZE [--smoke] [ofa-train options...]      SIZE: tiny|medium|base|large|huge
#
# Data layout (DATA_DIR default <repo>/data), written by `ofa-data convert coco_detection`:
#   $DATA_DIR/coco_detection/detection_train.tsv          training rows (instances_train2017.json)
#   $DATA_DIR/coco_detection/detection_val.tsv            validation (best checkpoint by COCO AP, "ap")
#   $DATA_DIR/coco_detection/detection_train.classes.txt  the class list (CLASS_NAMES; the converter's)
#   Or DATA=train.tsv[,train2.tsv,...],valid.tsv (epoch e reads train file (e-1) mod n; the last is valid).
#   Official TSV (the pretraining detection layout), tab-separated, no header, 3 columns:
#     0 uniq-id (COCO image id) | 1 image (base64 of the JPEG/PNG bytes) | 2 boxes: "x0,y0,x1,y1,cat_id,
#     cat_name" items joined by && (pixels of the original image, left, top, right, bottom; empty: no objects)
#   (check files with `ofa-data validate FILE --task detection`.) Tokenizer: BPE_DIR (GPT-2 BPE). Pretrained
#   weights: RESTORE_FILE [$CKPT_DIR/ofa_<size>.pt; `ofa-checkpoints download ofa_<size> --cache-dir
#   data/checkpoints`]. Output: SAVE_DIR [<repo>/runs/detection/<size>]: checkpoint_best.pt,
#   checkpoint_last.pt, train.log. Score val / test afterwards with run_scripts/evaluate.sh (pycocotools AP,
#   AP50, AP75, APs, APm, APl as ap, ap50, ...).
#
# Recipe (the project's; the official code has no detection finetuning): image 512x512, at most 100 objects
#   a sequence in a random order per epoch (by position in validation), label smoothing 0.1, dropout 0.1,
#   12 epochs with 6% warm-up (polynomial decay to 0), effective batch 128, validate and save every 1000
#   updates, greedy grammar-constrained decoding (bins, class name, ... EOS).
#     large, huge:         lr 3e-5, encoder/decoder drop path 0.2
#     tiny, medium, base:  lr 5e-5, drop path 0.1
#
# GPUs: the official runs use 4 GPUs x batch 4 x update-freq 8 for RefCOCO (effective 128), as this recipe does.
#   Any count works: update-freq is chosen so that GPUs x batch x update-freq stays 128 (UPDATE_FREQ=N or
#   --update-freq N fixes it).
#   One GPU:       CUDA_VISIBLE_DEVICES=0 run_scripts/detection/train_detection.sh large
#   Several GPUs:  GPUS_PER_NODE=8 run_scripts/detection/train_detection.sh large       (torchrun)
#   Several nodes: on node i of 2: NNODES=2 NODE_RANK=i MASTER_ADDR=<ip of node 0> MASTER_PORT=29500 \
#                    GPUS_PER_NODE=8 run_scripts/detection/train_detection.sh large
#   Override example (arguments after SIZE reach ofa-train last and win):
#     run_scripts/detection/train_detection.sh base --max-objects 50 --lr 3e-5
#   DRY_RUN=1 prints the command only. Paths, resuming, FP16, workers: see run_scripts/common.sh.
#
# Expected: no official OFA detection results exist. On the embedded benchmark (ofa-synth run --tasks
#   detection; experiments/README.md) the main job's small model reaches the AP50 given there.
#
# CPU demo (what CI runs; about a minute): run_scripts/detection/train_detection.sh --smoke   (or SMOKE=1)
#   builds the embedded benchmark once in $DEMO_DIR [$SMOKE_DIR/demo_data], trains 2 updates of the ofa_test
#   arch at 64 px with --cpu, then ofa-evaluate writes $SMOKE_DIR/detection/results/test_metrics.json.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../common.sh
source "$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)/common.sh"
ofa_init detection "$@"

case "$OFA_SIZE" in
    large | huge) LR=3e-5 DROP_PATH=0.2 ;;
    *) LR=5e-5 DROP_PATH=0.1 ;;
esac
MAX_EPOCH=${MAX_EPOCH:-12}
WARMUP_RATIO=0.06
BATCH_SIZE=${BATCH_SIZE:-4}
EFFECTIVE_BATCH=128
PATCH_IMAGE_SIZE=512
BEST_METRIC=ap
VALIDATE_EVERY=1000
MAX_OBJECTS=100

if [[ "$SMOKE" == 1 ]]; then
    DATA="$DEMO_DIR/detection_train.tsv,$DEMO_DIR/detection_valid.tsv"
    CLASS_NAMES="$DEMO_DIR/class_names.txt"
    MAX_OBJECTS=4
else
    DATA=${DATA:-$DATA_DIR/coco_detection/detection_train.tsv,$DATA_DIR/coco_detection/detection_val.tsv}
    CLASS_NAMES=${CLASS_NAMES:-$DATA_DIR/coco_detection/detection_train.classes.txt}
    ofa_require_file "$CLASS_NAMES" "class list (CLASS_NAMES)"
fi

TASK_ARGS=(
    --task detection --criterion adjust_label_smoothed_cross_entropy --label-smoothing 0.1
    --class-names "$CLASS_NAMES" --max-objects "$MAX_OBJECTS" --num-bins 1000 --max-image-size 512
    --dropout 0.1 --attention-dropout 0.0
    --encoder-drop-path-rate "$DROP_PATH" --decoder-drop-path-rate "$DROP_PATH" --resnet-drop-path-rate 0.0
    --eval-beam 1 --eval-min-len 0
)
ofa_train "${TASK_ARGS[@]}"
if [[ "$SMOKE" == 1 ]]; then
    ofa_smoke_evaluate "$DEMO_DIR/detection_test.tsv"
fi
