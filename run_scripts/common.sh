# shellcheck shell=bash
#
# run_scripts/common.sh: the shared defaults of every launch script in run_scripts/. It is sourced
# (`source run_scripts/common.sh`), never run. A task script does:
#
#     source "<this folder>/common.sh"
#     ofa_init JOB "$@"          # size (first argument), --smoke, pass-through overrides, devices
#     <its recipe: LR, BATCH_SIZE, EFFECTIVE_BATCH, MAX_EPOCH or MAX_UPDATE, DATA, TASK_ARGS=(...)>
#     ofa_train "${TASK_ARGS[@]}"
#     ofa_smoke_evaluate TEST_FILE   # smoke mode only: score the demo checkpoint once
#
# What lives here and nowhere else:
#   - paths: DATA_DIR, BPE_DIR, CKPT_DIR, RESTORE_FILE, SAVE_DIR (defaults below);
#   - the launcher: one process runs `ofa-train ...` directly; several run
#     `torchrun --nnodes=$NNODES --nproc_per_node=$GPUS_PER_NODE --node_rank=$NODE_RANK
#      --master_addr=$MASTER_ADDR --master_port=$MASTER_PORT $(which ofa-train) ...`;
#   - CPU detection (no visible GPU, FORCE_CPU=1 or --smoke -> --cpu, no --fp16);
#   - `--arch ofa_<size>` and the released architecture: the NormFormer flags --add-type-embedding
#     --scale-attn --scale-fc --scale-heads --disable-entangle always passed, the layout switches the official
#     scripts pass (pre-LN, embedding LayerNorms, shared embeddings) on by the plugin's defaults (see below);
#   - the optimisation/runtime flags every official fine-tuning script passes: adam betas (0.9,0.999),
#     eps 1e-8, weight decay 0.01, clip-norm 1.0, polynomial_decay, --fixed-validation-seed 7,
#     --find-unused-parameters, --required-batch-size-multiple 1, --fp16 --fp16-scale-window 512 (GPU only),
#     --num-workers, and --reset-optimizer --reset-dataloader --reset-meters with --restore-file;
#   - the warm-up: the official fork's `--warmup-ratio` does not exist in fairseq-fixed, so for epoch-based
#     recipes the scripts compute the schedule as the fork's train.py does:
#         updates/epoch = ceil(ceil(ceil(rows / world) / batch) / update_freq)
#         --total-num-update = epochs * updates/epoch,  --warmup-updates = int(total * ratio)
#     with `rows` counted in the first training file (or TRAIN_ROWS=N to skip the count);
#   - --update-freq: by default chosen so that world * batch * update_freq reaches the official effective
#     batch of the recipe whatever the number of GPUs (UPDATE_FREQ=N or --update-freq N to fix it).
#
# Environment (all optional; [default]):
#   DATA_DIR        official dataset folders (caption_data/, refcoco_data/, ...)  [<repo>/data]
#   DATA            the whole comma list "train[,train2,...],valid"; replaces the DATA_DIR default
#   BPE_DIR         GPT-2 BPE folder (dict.txt, encoder.json, vocab.bpe) or an `ofa-tokenizer train` folder
#                   [<repo>/data/ofa_bpe]
#   CKPT_DIR        pretrained checkpoints ofa_<size>.pt      [<repo>/data/checkpoints]
#                   (`ofa-checkpoints download ofa_base --cache-dir data/checkpoints`)
#   RESTORE_FILE    checkpoint to fine-tune from; "none" trains from scratch  [$CKPT_DIR/ofa_<size>.pt]
#   SAVE_DIR        checkpoints and train.log                 [<repo>/runs/<job>/<size>]
#   RESUME          auto: continue from $SAVE_DIR/checkpoint_last.pt when it exists (no --reset-*);
#                   0: always start again from RESTORE_FILE   [auto]
#   GPUS_PER_NODE   processes per node [number of visible GPUs; 1 on CPU]   NNODES [1]   NODE_RANK [0]
#   MASTER_ADDR     rank-0 node address (required when NNODES > 1) [127.0.0.1]   MASTER_PORT [29500]
#   FORCE_CPU=1     ignore GPUs;  FP16=0: no --fp16 on GPU;  NUM_WORKERS: loader workers [4 on GPU, 0 on CPU]
#   BATCH_SIZE, UPDATE_FREQ, MAX_EPOCH, MAX_UPDATE, WARMUP_UPDATES, TRAIN_ROWS: schedule inputs (also read
#                   from --batch-size / --update-freq / --max-epoch / --max-update given as overrides)
#   SMOKE=1         same as --smoke: CPU demo on the embedded benchmark (ofa_test arch, 64 px, 2 updates,
#                   then one evaluation); SMOKE_DIR [<repo>/runs/smoke], DEMO_DIR [$SMOKE_DIR/demo_data].
#                   Smoke mode ignores DATA_DIR, DATA, BPE_DIR, RESTORE_FILE and SAVE_DIR.
#   DRY_RUN=1       print the commands, run nothing
#   OFA_BIN_DIR     folder holding ofa-train / ofa-evaluate / torchrun  [PATH, else <repo>/.venv/bin]

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "run_scripts/common.sh is sourced by the launch scripts; run one of them instead" >&2
    exit 2
fi

if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
    echo "error: the run scripts need bash >= 4.4 (this is $BASH_VERSION)" >&2
    exit 2
fi

OFA_RUN_SCRIPTS="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
OFA_REPO="$(cd "$OFA_RUN_SCRIPTS/.." && pwd)"
OFA_SIZES=(tiny medium base large huge)

# The released checkpoints' layout (docs/tasks.md section 5): the official scripts pass all twelve switches;
# without them the network differs and the official weights do not fit (OFA issue #146).
# All twelve are passed, exactly as the official scripts write them (the ofa_* architectures turn the seven
# layout switches on by themselves too; passing them is harmless and keeps commands portable).
OFA_LAYOUT_FLAGS=(
    --encoder-normalize-before --decoder-normalize-before
    --share-decoder-input-output-embed --share-all-embeddings
    --layernorm-embedding --patch-layernorm-embedding --code-layernorm-embedding
)
OFA_MODEL_FLAGS=(--add-type-embedding --scale-attn --scale-fc --scale-heads --disable-entangle "${OFA_LAYOUT_FLAGS[@]}")
OFA_OPTIM_FLAGS=(
    --optimizer adam --adam-betas "(0.9,0.999)" --adam-eps 1e-08 --weight-decay 0.01 --clip-norm 1.0
    --lr-scheduler polynomial_decay
)

ofa_die() {
    echo "error: $*" >&2
    exit 2
}

ofa_log() {
    echo "[run_scripts] $*" >&2
}

# Print the comment block that opens the calling script (its documentation).
ofa_usage() {
    awk 'NR == 1 && /^#!/ { next } /^# shellcheck / { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

ofa_is_uint() {
    [[ "$1" =~ ^[0-9]+$ ]]
}

# ofa_init JOB ARGS...: parse "SIZE [--smoke] [ofa-train overrides...]" and set up paths and devices.
# Sets OFA_JOB, OFA_SIZE, OFA_ARCH, OFA_OVERRIDES (array), SMOKE, DRY_RUN, SAVE_DIR, BPE_DIR, ...
ofa_init() {
    OFA_JOB=$1
    shift
    SMOKE=${SMOKE:-0}
    DRY_RUN=${DRY_RUN:-0}
    local rest=() arg
    for arg in "$@"; do
        case "$arg" in
            --smoke) SMOKE=1 ;;
            -h | --help) ofa_usage; exit 0 ;;
            *) rest+=("$arg") ;;
        esac
    done
    if ((${#rest[@]} > 0)) && [[ "${rest[0]}" != -* ]]; then
        OFA_SIZE=${rest[0]}
        rest=("${rest[@]:1}")
    elif [[ "$SMOKE" == 1 ]]; then
        OFA_SIZE=tiny  # the smoke model is ofa_test whatever the size; the size picks the recipe
    else
        ofa_die "missing model size: usage: $(basename "$0") {tiny|medium|base|large|huge} [--smoke] [ofa-train options...]"
    fi
    ofa_check_size "$OFA_SIZE"
    OFA_OVERRIDES=("${rest[@]}")
    OFA_ARCH="ofa_$OFA_SIZE"

    if [[ "$SMOKE" == 1 ]]; then
        SMOKE_DIR=${SMOKE_DIR:-$OFA_REPO/runs/smoke}
        DEMO_DIR=${DEMO_DIR:-$SMOKE_DIR/demo_data}
        SAVE_DIR=$SMOKE_DIR/$OFA_JOB
        BPE_DIR=$DEMO_DIR/tok
        OFA_ARCH=ofa_test
        FORCE_CPU=1
        GPUS_PER_NODE=${GPUS_PER_NODE:-1}
    else
        DATA_DIR=${DATA_DIR:-$OFA_REPO/data}
        CKPT_DIR=${CKPT_DIR:-$OFA_REPO/data/checkpoints}
        SAVE_DIR=${SAVE_DIR:-$OFA_REPO/runs/$OFA_JOB/$OFA_SIZE}
        BPE_DIR=${BPE_DIR:-$OFA_REPO/data/ofa_bpe}
    fi
    ofa_detect_devices
}

ofa_check_size() {
    local s
    for s in "${OFA_SIZES[@]}"; do
        [[ "$1" == "$s" ]] && return 0
    done
    ofa_die "unknown model size '$1': choose one of ${OFA_SIZES[*]} (usage: $(basename "$0") SIZE [--smoke] [ofa-train options...])"
}

# Number of visible GPUs (nvidia-smi, limited by CUDA_VISIBLE_DEVICES); 0 under FORCE_CPU=1.
ofa_count_gpus() {
    local n=0 visible
    if [[ "${FORCE_CPU:-0}" != 1 ]] && command -v nvidia-smi > /dev/null 2>&1; then
        n=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
        if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
            visible=${CUDA_VISIBLE_DEVICES//[[:space:]]/}
            if [[ -z "$visible" || "$visible" == -1 ]]; then
                n=0
            else
                local ids
                IFS=, read -ra ids <<< "$visible"
                ((${#ids[@]} < n)) && n=${#ids[@]}
            fi
        fi
    fi
    echo "$n"
}

ofa_detect_devices() {
    local gpus
    gpus=$(ofa_count_gpus)
    if ((gpus > 0)); then
        ON_GPU=1
        GPUS_PER_NODE=${GPUS_PER_NODE:-$gpus}
        NUM_WORKERS=${NUM_WORKERS:-4}
    else
        ON_GPU=0
        GPUS_PER_NODE=${GPUS_PER_NODE:-1}  # CPU processes (gloo) when > 1
        NUM_WORKERS=${NUM_WORKERS:-0}
        [[ "$SMOKE" == 1 ]] || ofa_log "no GPU visible: running on the CPU (--cpu, no --fp16)"
    fi
    NNODES=${NNODES:-1}
    NODE_RANK=${NODE_RANK:-0}
    MASTER_PORT=${MASTER_PORT:-29500}
    local v
    for v in GPUS_PER_NODE NNODES NODE_RANK MASTER_PORT NUM_WORKERS; do
        ofa_is_uint "${!v}" || ofa_die "$v must be a non-negative integer, got '${!v}'"
    done
    ((GPUS_PER_NODE >= 1 && NNODES >= 1)) || ofa_die "GPUS_PER_NODE and NNODES must be at least 1"
    if ((NNODES > 1)) && [[ -z "${MASTER_ADDR:-}" ]]; then
        ofa_die "NNODES=$NNODES needs MASTER_ADDR (the address of the node with NODE_RANK=0)"
    fi
    MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
    WORLD_SIZE_TOTAL=$((NNODES * GPUS_PER_NODE))
}

# ofa_bin NAME: the path of an executable (OFA_BIN_DIR, then PATH, then the repository's .venv).
ofa_bin() {
    local p
    if [[ -n "${OFA_BIN_DIR:-}" && -x "$OFA_BIN_DIR/$1" ]]; then
        echo "$OFA_BIN_DIR/$1"
    elif p=$(command -v "$1" 2> /dev/null); then
        echo "$p"
    elif [[ -x "$OFA_REPO/.venv/bin/$1" ]]; then
        echo "$OFA_REPO/.venv/bin/$1"
    elif [[ "$DRY_RUN" == 1 ]]; then
        echo "$1"
    else
        ofa_die "$1 not found: run scripts/setup.sh, activate the environment, or set OFA_BIN_DIR"
    fi
}

# ofa_run CMD...: print the command, then run it unless DRY_RUN=1.
ofa_run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    [[ "$DRY_RUN" == 1 ]] && return 0
    "$@"
}

# ofa_launch CLI ARGS...: one process, or torchrun over NNODES x GPUS_PER_NODE processes.
ofa_launch() {
    local cli
    cli=$(ofa_bin "$1")
    shift
    if ((WORLD_SIZE_TOTAL > 1)); then
        ofa_run "$(ofa_bin torchrun)" --nnodes="$NNODES" --nproc_per_node="$GPUS_PER_NODE" \
            --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" "$cli" "$@"
    else
        ofa_run "$cli" "$@"
    fi
}

# ofa_override_value OPTION: the last value given to OPTION among the pass-through overrides, or "".
ofa_override_value() {
    local i v=""
    for ((i = 0; i < ${#OFA_OVERRIDES[@]}; i++)); do
        case "${OFA_OVERRIDES[i]}" in
            "$1") v=${OFA_OVERRIDES[i + 1]:-} ;;
            "$1"=*) v=${OFA_OVERRIDES[i]#*=} ;;
        esac
    done
    printf '%s' "$v"
}

# Rows of a TSV (non-empty lines; a last line without a newline counts).
ofa_count_rows() {
    LC_ALL=C grep -c . "$1" || true
}

# Generate the embedded benchmark and its tokenizer once (smoke mode).
ofa_demo_data() {
    if [[ ! -f "$DEMO_DIR/manifest.json" || ! -f "$DEMO_DIR/text_corpus.txt" ]]; then
        ofa_run "$(ofa_bin ofa-synth)" generate "$DEMO_DIR" --num-images 24 --image-size 64 --seed 0 --quiet
    fi
    if [[ ! -f "$DEMO_DIR/tok/dict.txt" ]]; then
        ofa_run "$(ofa_bin ofa-tokenizer)" train --corpus "$DEMO_DIR/text_corpus.txt" --out "$DEMO_DIR/tok" \
            --vocab-size 400
    fi
}

# ofa_require_file PATH WHAT: fail early with a readable message (warn only under DRY_RUN=1).
ofa_require_file() {
    [[ -e "$1" ]] && return 0
    [[ "$DRY_RUN" == 1 ]] && { ofa_log "warning: $2 not found: $1"; return 0; }
    ofa_die "$2 not found: $1 (the header of $(basename "$0") lists the expected files and variables)"
}

# ofa_train TASK_ARGS...: run ofa-train on $DATA with the task arguments, the shared flags, the schedule
# and the user's overrides (last, so they win). Reads the recipe variables the script set:
#   LR, END_LR, BATCH_SIZE, EFFECTIVE_BATCH, MAX_EPOCH + WARMUP_RATIO, or MAX_UPDATE + WARMUP_UPDATES,
#   PATCH_IMAGE_SIZE, BEST_METRIC, VALIDATE_EVERY (updates; 0 = once per epoch), FREEZE_EMBEDDINGS (0/1),
#   KEEP_EPOCHS (keep the last N epoch checkpoints; unset: --no-epoch-checkpoints),
#   FP16_FLAG (--fp16 or --memory-efficient-fp16), PRETRAINED (1: restore RESTORE_FILE, or DEFAULT_RESTORE,
#   or $CKPT_DIR/ofa_<size>.pt), SMOKE_RESTORE (smoke mode: restore this file when it exists).
ofa_train() {
    local task_args=("$@")
    local batch update_freq schedule=() restore=() device=() runtime=() smoke=() v

    # schedule inputs: overrides > environment > recipe
    v=$(ofa_override_value --batch-size)
    batch=${v:-$BATCH_SIZE}
    v=$(ofa_override_value --max-epoch)
    [[ -n "$v" ]] && MAX_EPOCH=$v && MAX_UPDATE=""
    v=$(ofa_override_value --max-update)
    [[ -n "$v" ]] && MAX_UPDATE=$v && MAX_EPOCH=""
    v=$(ofa_override_value --update-freq)
    update_freq=${v:-${UPDATE_FREQ:-}}
    if [[ -z "$update_freq" ]]; then  # keep the official effective batch on this many processes
        update_freq=$(((EFFECTIVE_BATCH + WORLD_SIZE_TOTAL * batch - 1) / (WORLD_SIZE_TOTAL * batch)))
        ((update_freq >= 1)) || update_freq=1
    fi
    for v in batch update_freq; do
        if ! ofa_is_uint "${!v}" || ((${!v} < 1)); then
            ofa_die "$v must be a positive integer, got '${!v}'"
        fi
    done

    if [[ "$SMOKE" == 1 ]]; then
        ofa_demo_data
        batch=4
        update_freq=1
        PATCH_IMAGE_SIZE=64
        schedule=(--max-update 2 --total-num-update 2 --warmup-updates 1)
        smoke=(--validate-interval-updates 2 --batch-size-valid 8 --no-epoch-checkpoints --seed 1)
        # a fresh demo run each time (fairseq would otherwise resume from the previous checkpoint_last.pt)
        [[ "$DRY_RUN" == 1 ]] || rm -f "$SAVE_DIR"/checkpoint*.pt
        if [[ "${PRETRAINED:-1}" == 1 && -n "${SMOKE_RESTORE:-}" && -f "${SMOKE_RESTORE:-}" ]]; then
            restore=(--restore-file "$SMOKE_RESTORE" --reset-optimizer --reset-dataloader --reset-meters)
        fi
    else
        local files first_train rows total per_epoch warmup
        IFS=, read -ra files <<< "$DATA"
        first_train=${files[0]}
        for v in "${files[@]}"; do
            ofa_require_file "$v" "data file"
        done
        ofa_require_file "$BPE_DIR" "tokenizer folder (BPE_DIR)"
        if [[ -n "${MAX_UPDATE:-}" ]]; then
            total=$MAX_UPDATE
            warmup=${WARMUP_UPDATES:-0}
            schedule=(--max-update "$total")
        else
            rows=${TRAIN_ROWS:-}
            if [[ -z "$rows" ]]; then
                if [[ -f "$first_train" ]]; then
                    ofa_log "counting the rows of $first_train for the schedule (TRAIN_ROWS=N skips this)"
                    rows=$(ofa_count_rows "$first_train")
                else
                    rows=0
                fi
            fi
            ofa_is_uint "$rows" || ofa_die "TRAIN_ROWS must be a non-negative integer, got '$rows'"
            per_epoch=$(((((rows + WORLD_SIZE_TOTAL - 1) / WORLD_SIZE_TOTAL + batch - 1) / batch + update_freq - 1) / update_freq))
            total=$((MAX_EPOCH * per_epoch))
            ((total >= 1)) || total=1
            warmup=${WARMUP_UPDATES:-$(awk -v t="$total" -v r="$WARMUP_RATIO" 'BEGIN { printf "%d", t * r }')}
            schedule=(--max-epoch "$MAX_EPOCH")
        fi
        schedule+=(--total-num-update "$total" --warmup-updates "$warmup")
        ofa_log "schedule: ${MAX_EPOCH:+$MAX_EPOCH epochs, }$total updates, $warmup warm-up," \
            "batch $WORLD_SIZE_TOTAL x $batch x $update_freq = $((WORLD_SIZE_TOTAL * batch * update_freq))" \
            "(official $EFFECTIVE_BATCH)"

        if [[ "${RESUME:-auto}" != 0 && -f "$SAVE_DIR/checkpoint_last.pt" ]]; then
            ofa_log "resuming from $SAVE_DIR/checkpoint_last.pt (RESUME=0 starts again from RESTORE_FILE)"
        elif [[ "${PRETRAINED:-1}" == 1 ]]; then
            local restore_file=${RESTORE_FILE:-${DEFAULT_RESTORE:-$CKPT_DIR/ofa_$OFA_SIZE.pt}}
            if [[ "$restore_file" != none ]]; then
                ofa_require_file "$restore_file" "the checkpoint to fine-tune from (RESTORE_FILE; 'none' trains from scratch)"
                restore=(--restore-file "$restore_file" --reset-optimizer --reset-dataloader --reset-meters)
            fi
        fi
    fi

    if [[ "$ON_GPU" == 1 ]]; then
        [[ "${FP16:-1}" == 1 ]] && device=("${FP16_FLAG:---fp16}" --fp16-scale-window 512)
    else
        device=(--cpu)
    fi
    runtime=(--fixed-validation-seed 7 --find-unused-parameters --num-workers "$NUM_WORKERS" --required-batch-size-multiple 1
        --log-format simple --log-interval 10 --save-dir "$SAVE_DIR" --keep-interval-updates 1
        --best-checkpoint-metric "$BEST_METRIC" --maximize-best-checkpoint-metric)
    if [[ "${VALIDATE_EVERY:-0}" != 0 && "$SMOKE" != 1 ]]; then
        runtime+=(--validate-interval-updates "$VALIDATE_EVERY" --save-interval-updates "$VALIDATE_EVERY")
    fi
    if [[ -n "${KEEP_EPOCHS:-}" && "$SMOKE" != 1 ]]; then
        runtime+=(--keep-last-epochs "$KEEP_EPOCHS")
    elif [[ "$SMOKE" != 1 ]]; then
        runtime+=(--no-epoch-checkpoints)
    fi
    [[ "${FREEZE_EMBEDDINGS:-0}" == 1 ]] && runtime+=(--freeze-encoder-embedding --freeze-decoder-embedding)
    [[ "$DRY_RUN" == 1 ]] || mkdir -p "$SAVE_DIR"

    ofa_launch ofa-train "$DATA" "${task_args[@]}" --bpe-dir "$BPE_DIR" --patch-image-size "$PATCH_IMAGE_SIZE" \
        --arch "$OFA_ARCH" "${OFA_MODEL_FLAGS[@]}" \
        "${OFA_OPTIM_FLAGS[@]}" --lr "$LR" --end-learning-rate "${END_LR:-0}" "${schedule[@]}" \
        --batch-size "$batch" --update-freq "$update_freq" \
        "${device[@]}" "${runtime[@]}" "${smoke[@]}" "${restore[@]}" \
        --log-file "$SAVE_DIR/train.log" "${OFA_OVERRIDES[@]}"
}

# ofa_smoke_evaluate TEST_FILE: after a smoke run, evaluate its best checkpoint on the demo test split
# (writes $SAVE_DIR/results/test_metrics.json and test_predict.json). SMOKE_EVAL=0 skips it.
ofa_smoke_evaluate() {
    [[ "$SMOKE" == 1 && "${SMOKE_EVAL:-1}" == 1 ]] || return 0
    ofa_launch ofa-evaluate "$1" --path "$SAVE_DIR/checkpoint_best.pt" --results-path "$SAVE_DIR/results" \
        --gen-subset test --batch-size 8 --cpu
    [[ "$DRY_RUN" == 1 ]] || ofa_log "smoke run done: $SAVE_DIR/checkpoint_best.pt, $SAVE_DIR/results/test_metrics.json"
}
