#!/usr/bin/env bash
# run_scripts/evaluate.sh: score a fine-tuned checkpoint on one data split with ofa-evaluate, for every task
# (the official run_scripts/*/evaluate_*.sh). The task, its options (beam size, lengths, candidate answers,
# image size, ...) and the architecture come from the checkpoint, as officially; options given after the
# data file override them. There is no size argument: the checkpoint carries its architecture.
#
# Usage: evaluate.sh CHECKPOINT [DATA_FILE] [ofa-evaluate options...]
#        evaluate.sh --smoke [ofa-evaluate options...]
#   CHECKPOINT  a .pt written by the training scripts, an official checkpoint, or a published name
#               (`ofa-checkpoints list`; downloaded once into ~/.cache/ofa)
#   DATA_FILE   the TSV to score (same layout as the task's training files; see the header of the task's
#               training script). Without it: the checkpoint's validation file.
#
# Writes $RESULTS_DIR/<subset>_predict.json (the official per-task record layout: caption
# {"image_id","caption"}, refcoco {"uniq_id","box"} in original pixels, vqa_gen {"question_id","answer"},
# snli_ve / image_classify {"uniq_id","answer"}) and <subset>_metrics.json, and prints the metrics.
#
# Environment: GEN_SUBSET [DATA_FILE's name without .tsv, or "valid"], RESULTS_DIR [<checkpoint folder>/results],
#   BATCH_SIZE [16], EMA=1 (score the EMA weights: VQA), BPE_DIR (only when the checkpoint's tokenizer
#   path is not valid here), FORCE_CPU=1, FP16=0 (no --fp16 on GPU), DRY_RUN=1 (print only), and the
#   launcher variables of run_scripts/common.sh.
#
# GPUs: one is enough; with several, each rank scores its slice and rank 0 gathers and writes.
#   One GPU:       CUDA_VISIBLE_DEVICES=0 run_scripts/evaluate.sh runs/refcoco/large/checkpoint_best.pt \
#                    data/refcoco_data/refcoco_testA.tsv
#   Several GPUs:  GPUS_PER_NODE=4 run_scripts/evaluate.sh CHECKPOINT DATA_FILE       (torchrun)
#   Several nodes: NNODES=2 NODE_RANK=i MASTER_ADDR=<ip of node 0> MASTER_PORT=29500 GPUS_PER_NODE=8 \
#                    run_scripts/evaluate.sh CHECKPOINT DATA_FILE
# Official evaluation settings per task (docs/tasks.md 6.2) and override examples:
#   caption:  evaluate.sh runs/caption_stage2/large/checkpoint_best.pt data/caption_data/caption_test.tsv \
#               --selected-cols 1,4,2        (beam 5, max 16, no repeated trigrams: saved in the checkpoint;
#               keyed by COCO image id; adds corpus BLEU / METEOR / ROUGE-L / CIDEr with pycocoevalcap)
#   refcoco:  evaluate.sh CKPT data/refcoco_data/refcoco_testA.tsv --eval-no-repeat-ngram-size 3
#   vqa_gen:  EMA=1 evaluate.sh CKPT data/vqa_data/vqa_test.tsv --val-inference-type beamsearch
#               (the official fast setting; allcand, the default, is the slow exact one)
#   snli_ve:  evaluate.sh CKPT data/snli_ve_data/snli_ve_test.tsv
#   imagenet: evaluate.sh CKPT data/imagenet_1k_data/imagenet_1k_val.tsv
#
# Expected metrics: the header of each training script (official README numbers per size).
#
# CPU demo (what CI runs; about a minute): run_scripts/evaluate.sh --smoke   (or SMOKE=1)
#   trains the RefCOCO demo checkpoint if $SMOKE_DIR/refcoco/checkpoint_best.pt is missing
#   (run_scripts/refcoco/train_refcoco.sh --smoke: ofa_test arch, embedded benchmark, 2 CPU updates), then
#   scores it on the demo test split: $SMOKE_DIR/evaluate/test_metrics.json (SMOKE_DIR [<repo>/runs/smoke]).
set -euo pipefail
# shellcheck source=SCRIPTDIR/common.sh
source "$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)/common.sh"

SMOKE=${SMOKE:-0}
DRY_RUN=${DRY_RUN:-0}
args=()
for arg in "$@"; do
    case "$arg" in
        --smoke) SMOKE=1 ;;
        -h | --help) ofa_usage; exit 0 ;;
        *) args+=("$arg") ;;
    esac
done

if [[ "$SMOKE" == 1 ]]; then
    SMOKE_DIR=${SMOKE_DIR:-$OFA_REPO/runs/smoke}
    DEMO_DIR=${DEMO_DIR:-$SMOKE_DIR/demo_data}
    FORCE_CPU=1
    CHECKPOINT=$SMOKE_DIR/refcoco/checkpoint_best.pt
    DATA_FILE=$DEMO_DIR/refcoco_test.tsv
    GEN_SUBSET="test"
    RESULTS_DIR=$SMOKE_DIR/evaluate
    if [[ ! -f "$CHECKPOINT" ]]; then
        SMOKE_EVAL=0 SMOKE_DIR=$SMOKE_DIR DEMO_DIR=$DEMO_DIR DRY_RUN=$DRY_RUN GPUS_PER_NODE=${GPUS_PER_NODE:-1} \
            "$OFA_RUN_SCRIPTS/refcoco/train_refcoco.sh" --smoke
    fi
    BATCH_SIZE=${BATCH_SIZE:-8}
else
    usage="usage: $(basename "$0") CHECKPOINT [DATA_FILE] [ofa-evaluate options...]"
    if ((${#args[@]} == 0)) || [[ "${args[0]}" == -* ]]; then
        ofa_die "missing checkpoint: $usage"
    fi
    CHECKPOINT=${args[0]}
    args=("${args[@]:1}")
    if [[ ! -e "$CHECKPOINT" ]]; then
        for size in "${OFA_SIZES[@]}"; do
            if [[ "$CHECKPOINT" == "$size" ]]; then
                ofa_die "evaluate.sh takes no model size (the checkpoint carries its architecture): $usage"
            fi
        done
        if [[ "$CHECKPOINT" == */* || "$CHECKPOINT" == *.pt || "$CHECKPOINT" == *.pth ]]; then
            ofa_die "checkpoint not found: $CHECKPOINT"
        fi
        ofa_log "$CHECKPOINT is not a file: ofa-evaluate resolves it as a published checkpoint name"
    fi
    DATA_FILE=""
    if ((${#args[@]} > 0)) && [[ "${args[0]}" != -* ]]; then
        DATA_FILE=${args[0]}
        args=("${args[@]:1}")
        ofa_require_file "$DATA_FILE" "data file"
    fi
    if [[ -z "${GEN_SUBSET:-}" ]]; then
        GEN_SUBSET=valid
        if [[ -n "$DATA_FILE" ]]; then
            GEN_SUBSET=$(basename "$DATA_FILE")
            GEN_SUBSET=${GEN_SUBSET%.*}
        fi
    fi
    if [[ -z "${RESULTS_DIR:-}" ]]; then
        if [[ -f "$CHECKPOINT" ]]; then
            RESULTS_DIR=$(cd "$(dirname "$CHECKPOINT")" && pwd)/results
        else
            RESULTS_DIR=$OFA_REPO/runs/evaluate/$(basename "$CHECKPOINT")
        fi
    fi
    BATCH_SIZE=${BATCH_SIZE:-16}
fi
ofa_detect_devices

eval_args=(--path "$CHECKPOINT" --gen-subset "$GEN_SUBSET" --results-path "$RESULTS_DIR" --batch-size "$BATCH_SIZE")
if [[ -n "$DATA_FILE" ]]; then
    eval_args=("$DATA_FILE" "${eval_args[@]}")
fi
if [[ "$ON_GPU" == 1 ]]; then
    if [[ "${FP16:-1}" == 1 ]]; then
        eval_args+=(--fp16)
    fi
else
    eval_args+=(--cpu)
fi
if [[ "${EMA:-0}" == 1 ]]; then
    eval_args+=(--ema)
fi
if [[ "$SMOKE" != 1 && -n "${BPE_DIR:-}" ]]; then
    eval_args+=(--bpe-dir "$BPE_DIR")
fi
ofa_launch ofa-evaluate "${eval_args[@]}" "${args[@]}"
if [[ "$DRY_RUN" != 1 ]]; then
    ofa_log "results: $RESULTS_DIR/${GEN_SUBSET}_metrics.json, $RESULTS_DIR/${GEN_SUBSET}_predict.json"
fi
