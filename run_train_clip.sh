#!/usr/bin/env bash
# run_train_clip.sh: train every image × text encoder combination (or every entry of a JSON
# config list) with train_clip.py, one job per GPU at a time, then rank the runs.
#
#   bash run_train_clip.sh                                  # the settings below
#   EPOCHS=5 GPUS="0 1" IMAGE_ENCODERS="resnet18 resnet50" bash run_train_clip.sh
#   bash run_train_clip.sh --dry-run                        # show the jobs, run nothing
#   bash run_train_clip.sh --help
#
# Each setting below may also be given in the environment (which wins); arrays as
# space-separated words. Full documentation: docs/driver.md

if [ -z "${BASH_VERSION:-}" ]; then
    echo "error: run this script with bash: bash run_train_clip.sh" >&2
    exit 2
fi

# Remember the settings given in the environment before the block below assigns them.
SETTING_NAMES=(DATA_DIR GPUS BATCH_SIZE EPOCHS LEARNING_RATE USE_CV N_SPLITS IMAGE_ENCODERS
               TEXT_ENCODERS USE_MULTI_CONFIG CONFIG_FILE NUM_WORKERS USE_AMP CLASS_TEXTS_FILE
               OUTPUT_ROOT USE_WEIGHTED_SAMPLING WEIGHT_METHOD IMG_SIZE EXTRA_ARGS
               LOG_DIR LEADERBOARD_METRIC FORCE DRY_RUN PYTHON)
ENV_GIVEN=()
for _name in "${SETTING_NAMES[@]}"; do
    if [[ -n "${!_name+set}" ]]; then
        ENV_GIVEN+=("$_name")
        printf -v "ENV_VALUE_$_name" '%s' "${!_name}"
    fi
done

# ======================================= settings =======================================
# Data directory (one sub-folder of images per class)
DATA_DIR="single_label_data"

# GPUs: one job runs on each listed GPU at a time (list a GPU twice to run two jobs on it)
GPUS=(0)

# Training parameters
BATCH_SIZE=16
EPOCHS=200
LEARNING_RATE=1e-4

# Cross-validation
USE_CV=true
N_SPLITS=5

# Image encoders
IMAGE_ENCODERS=(
    "resnet18"
    # "starnet_s1:pretrained"  # ImageNet-pretrained weights
)

# Text encoders
TEXT_ENCODERS=(
    "clip:ViT-B/32"
    # "bert-base-chinese"  # Chinese text encoder
)

# Run every entry of a JSON config list instead of the combinations above
USE_MULTI_CONFIG=false
CONFIG_FILE="train_clip_config.json"

NUM_WORKERS=4
USE_AMP=true
CLASS_TEXTS_FILE=""                  # e.g. "class_texts_hip_prosthesis.json"; empty: class names
OUTPUT_ROOT="checkpoints/clip_models"
USE_WEIGHTED_SAMPLING=false
WEIGHT_METHOD="inverse_freq"         # inverse_freq, inverse_sqrt or balanced
IMG_SIZE=224
EXTRA_ARGS=()                        # more train_clip.py flags for every job, e.g. (--freeze-text)

# Rarely changed
LOG_DIR="logs/clip_training"
LEADERBOARD_METRIC="balanced_accuracy"   # accuracy, balanced_accuracy, macro_f1 or roc_auc
FORCE=false                          # true: rerun jobs that already finished (replaces their results)
DRY_RUN=false                        # true: print the jobs and their commands, run nothing
PYTHON=""                            # empty: .venv/bin/python next to this script, else python3
# ========================================================================================

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POLL_SECONDS="${DRIVER_POLL_SECONDS:-1}"   # how often finished jobs are looked for
STOP_GRACE_SECONDS=10                      # after SIGTERM, before SIGKILL

die() {
    printf 'error: %s\n' "$*" >&2
    exit 2
}

note() {
    printf '%s\n' "$*"
}

event() {
    printf '[%(%Y-%m-%d %H:%M:%S)T] %s\n' -1 "$*"
}

usage() {
    cat <<'EOF'
Usage: bash run_train_clip.sh [--dry-run] [--help]

Trains every IMAGE_ENCODERS × TEXT_ENCODERS combination (or, with USE_MULTI_CONFIG=true, every
entry of CONFIG_FILE) with train_clip.py: one job per GPU in GPUS at a time, the rest queued; on a
machine without CUDA one job at a time on the CPU. Each job writes OUTPUT_ROOT/<image>_<text>/ and
logs to LOG_DIR/<image>_<text>_gpu<id>_<YYYYmmdd_HHMMSS>.log. Jobs whose folder already holds a
complete cv_summary.json are skipped; interrupted ones are resumed (or restarted). At the end a
leaderboard is printed and written to OUTPUT_ROOT/leaderboard.csv and leaderboard.md.

Settings are the variables at the top of this file; the environment overrides them, arrays as
space-separated words:
  EPOCHS=5 GPUS="0 1" IMAGE_ENCODERS="resnet18 resnet50" bash run_train_clip.sh
  USE_MULTI_CONFIG=true CONFIG_FILE=my_study.json bash run_train_clip.sh
  EXTRA_ARGS="--freeze-text --text-template 'an X-ray of {class_name}'" bash run_train_clip.sh

  DATA_DIR               folder with one sub-folder of images per class
  GPUS                   GPU indices; one job per entry at a time (repeat an index for two jobs)
  BATCH_SIZE EPOCHS LEARNING_RATE IMG_SIZE NUM_WORKERS
                         passed to train_clip.py as --batch-size, --epochs, ...
  USE_CV N_SPLITS        true: K-fold cross-validation with N_SPLITS folds
  IMAGE_ENCODERS         image encoder names, e.g. resnet18 resnet50:pretrained
  TEXT_ENCODERS          text encoder names, e.g. clip:ViT-B/32 bert-base-chinese
  USE_MULTI_CONFIG       true: one job per entry of CONFIG_FILE (a JSON list); the settings
                         above only fill in what an entry leaves out
  CONFIG_FILE            the JSON config list
  USE_AMP                false: --no-amp
  CLASS_TEXTS_FILE       JSON file of class descriptions (empty: the class names)
  USE_WEIGHTED_SAMPLING WEIGHT_METHOD
                         class-balanced sampling and its weights
  OUTPUT_ROOT            one folder per job is made here, plus the leaderboard
  EXTRA_ARGS             more train_clip.py flags for every job
  LOG_DIR                where the job logs go (default logs/clip_training)
  LEADERBOARD_METRIC     accuracy, balanced_accuracy (default), macro_f1 or roc_auc
  FORCE                  true: rerun finished jobs, replacing their results
  DRY_RUN                true (or --dry-run): print the jobs and commands, run nothing
  PYTHON                 the Python to run (default .venv/bin/python, else python3)

Exit status: 0 when every job finished or was skipped, 1 when a job failed, 2 for bad settings,
130/143 when interrupted (the running jobs are stopped).
EOF
}


# ----------------------------------------------------------------------------------------
# Settings: environment, command line, checks
# ----------------------------------------------------------------------------------------
is_true() {
    case "${1,,}" in
        true | 1 | yes | on) return 0 ;;
        *) return 1 ;;
    esac
}

is_array_setting() {
    case "$1" in
        GPUS | IMAGE_ENCODERS | TEXT_ENCODERS | EXTRA_ARGS) return 0 ;;
        *) return 1 ;;
    esac
}

# Environment values replace the settings above; EXTRA_ARGS waits for split_extra_args (it needs Python).
apply_environment() {
    local name source
    for name in ${ENV_GIVEN[@]+"${ENV_GIVEN[@]}"}; do
        source="ENV_VALUE_$name"
        if [[ "$name" == EXTRA_ARGS ]]; then
            continue
        elif is_array_setting "$name"; then
            read -r -a "${name?}" <<<"${!source}"
        else
            printf -v "$name" '%s' "${!source}"
        fi
    done
}

resolve_python() {
    if [[ -n "$PYTHON" ]]; then
        command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON: no such program"
    elif [[ -x "$SCRIPT_DIR/.venv/bin/python" ]]; then
        PYTHON="$SCRIPT_DIR/.venv/bin/python"
    else
        PYTHON="python3"
        command -v "$PYTHON" >/dev/null || die "no Python found: create .venv (make venv) or set PYTHON=..."
    fi
}

# EXTRA_ARGS from the environment is one string split like a shell would ("--a 'b c'" → --a, b c),
# by Python's shlex rather than eval, so nothing in it is executed.
split_extra_args() {
    [[ -n "${ENV_VALUE_EXTRA_ARGS+set}" ]] || return 0
    local split='import shlex, sys; sys.stdout.write("".join(w + "\0" for w in shlex.split(sys.argv[1])))'
    local words word
    words="$("$PYTHON" -c "$split" "$ENV_VALUE_EXTRA_ARGS" 2>/dev/null | tr '\0' '\1')" \
        || die "EXTRA_ARGS: cannot split '$ENV_VALUE_EXTRA_ARGS' into words (unbalanced quotes?)"
    EXTRA_ARGS=()
    while IFS= read -r -d $'\1' word; do
        EXTRA_ARGS+=("$word")
    done <<<"$words"
}

print_settings() {
    local name
    note "Settings now (this file, then the environment):"
    for name in "${SETTING_NAMES[@]}"; do
        if is_array_setting "$name"; then
            local -n array="$name"
            local words=""
            [[ ${#array[@]} -eq 0 ]] || printf -v words '%q ' "${array[@]}"
            printf '  %s=(%s)\n' "$name" "${words% }"
            unset -n array
        else
            printf '  %s=%q\n' "$name" "${!name}"
        fi
    done
}

parse_command_line() {
    local arg
    for arg in "$@"; do
        case "$arg" in
            -h | --help) WANT_HELP=true ;;
            --dry-run) DRY_RUN=true ;;
            *) die "unknown option '$arg'; settings are variables (EPOCHS=5 bash run_train_clip.sh), see --help" ;;
        esac
    done
}

check_bool() {
    local name value
    for name in "$@"; do
        value="${!name}"
        case "${value,,}" in
            true | 1 | yes | on | false | 0 | no | off) ;;
            *) die "$name must be true or false, got '$value'" ;;
        esac
    done
}

check_int() {
    local name=$1 minimum=$2 value="${!1}"
    if [[ ! "$value" =~ ^[0-9]+$ ]] || ((10#$value < minimum)); then
        die "$name must be a whole number of at least $minimum, got '$value'"
    fi
}

check_settings() {
    check_bool USE_CV USE_MULTI_CONFIG USE_AMP USE_WEIGHTED_SAMPLING FORCE DRY_RUN
    check_int BATCH_SIZE 1
    check_int EPOCHS 1
    check_int N_SPLITS 2
    check_int NUM_WORKERS 0
    check_int IMG_SIZE 16
    [[ "$LEARNING_RATE" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]] \
        || die "LEARNING_RATE must be a positive number such as 1e-4, got '$LEARNING_RATE'"
    [[ ${#GPUS[@]} -gt 0 ]] || die "GPUS is empty: list at least one GPU index, e.g. GPUS=(0)"
    local gpu
    for gpu in "${GPUS[@]}"; do
        [[ "$gpu" =~ ^[0-9]+$ ]] || die "GPUS: '$gpu' is not a GPU index (0, 1, ...)"
    done
    [[ -n "$OUTPUT_ROOT" ]] || die "OUTPUT_ROOT is empty"
    [[ -n "$LOG_DIR" ]] || die "LOG_DIR is empty"
    if is_true "$USE_MULTI_CONFIG"; then
        [[ -f "$CONFIG_FILE" ]] || die "CONFIG_FILE not found: $CONFIG_FILE (USE_MULTI_CONFIG=true)"
    else
        [[ ${#IMAGE_ENCODERS[@]} -gt 0 ]] || die "IMAGE_ENCODERS is empty: list at least one image encoder"
        [[ ${#TEXT_ENCODERS[@]} -gt 0 ]] || die "TEXT_ENCODERS is empty: list at least one text encoder"
    fi
    if [[ -n "$CLASS_TEXTS_FILE" && ! -f "$CLASS_TEXTS_FILE" ]]; then
        die "CLASS_TEXTS_FILE not found: $CLASS_TEXTS_FILE"
    fi
}

# ----------------------------------------------------------------------------------------
# Devices: one slot per entry of GPUS (or one CPU slot); a slot runs one job at a time
# ----------------------------------------------------------------------------------------
detect_slots() {
    if is_true "${DRIVER_FORCE_CPU:-false}"; then
        # Testing switch: the GPU schedule unchanged, but every job sees no CUDA device.
        DEVICE_MODE=forced-cpu
        SLOTS=("${GPUS[@]}")
        return
    fi
    local count gpu
    count="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')" \
        || die "$PYTHON cannot import torch: install the requirements (make venv) or set PYTHON=..."
    if [[ "$count" == 0 ]]; then
        DEVICE_MODE=cpu
        SLOTS=(cpu)
        return
    fi
    for gpu in "${GPUS[@]}"; do
        ((10#$gpu < count)) || die "GPUS: there is no GPU $gpu; this machine has $count CUDA device(s) (0..$((count - 1)))"
    done
    DEVICE_MODE=cuda
    SLOTS=("${GPUS[@]}")
}

slot_tag() {
    if [[ "$DEVICE_MODE" == cpu ]]; then
        printf 'cpu'
    else
        printf 'gpu%s' "$((10#${SLOTS[$1]}))"
    fi
}

describe_devices() {
    case "$DEVICE_MODE" in
        cuda) printf 'on GPUs %s, one job per GPU at a time' "${SLOTS[*]}" ;;
        cpu) printf 'on the CPU (CUDA is not available), one at a time' ;;
        forced-cpu) printf 'on the CPU (DRIVER_FORCE_CPU), one job per GPU slot at a time:%s' "$(printf ' gpu%s' "${SLOTS[@]}")" ;;
    esac
}

# ----------------------------------------------------------------------------------------
# Jobs
# ----------------------------------------------------------------------------------------
# Prints five NUL-terminated fields per job: config index (empty for a combination), image
# encoder, text encoder, run folder name, and the config keys the entry sets (comma-separated).
plan_jobs() {
    "$PYTHON" - "$@" <<'PY'
import json
import re
import sys
from collections import Counter

# Mirrors training.config.path_safe (importing it would load torch); tests check the two agree.
def path_safe(name):
    return re.sub(r"[^\w.\-]+", "_", name, flags=re.UNICODE).strip("_")

# Config keys that mean the same field (training.config KEY_ALIASES and NEGATED_KEYS).
ALIASES = {"image_encoder_name": "image_encoder", "text_encoder_name": "text_encoder",
           "use_amp": "amp", "no_amp": "amp"}

def fail(message):
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)

def config_jobs(path):
    try:
        with open(path, encoding="utf-8-sig") as handle:
            data = json.load(handle)
    except OSError as exc:
        fail(f"cannot read CONFIG_FILE {path}: {exc.strerror}")
    except UnicodeDecodeError:
        fail(f"CONFIG_FILE {path} is not UTF-8 text; save it as UTF-8")
    except json.JSONDecodeError as exc:
        fail(f"CONFIG_FILE {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    entries = [data] if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        fail(f"CONFIG_FILE {path} must hold an object or a non-empty list of objects")
    jobs = []
    for index, entry in enumerate(entries):
        names = []
        for kind in ("image", "text"):
            value = entry.get(f"{kind}_encoder", entry.get(f"{kind}_encoder_name"))
            if not isinstance(value, str) or not value.strip():
                fail(f"CONFIG_FILE {path}: entry {index} names no {kind} encoder "
                     f"(key '{kind}_encoder' or '{kind}_encoder_name')")
            names.append(value)
        for key in ("output_dir", "log_file"):
            if key in entry:
                sys.stderr.write(f"note: CONFIG_FILE entry {index} sets {key}; the driver chooses it\n")
        jobs.append((str(index), names[0], names[1], ",".join(sorted({ALIASES.get(k, k) for k in entry}))))
    return jobs

def grid_jobs(args):
    n_images = int(args[0])
    images, texts = args[1:1 + n_images], args[1 + n_images:]
    return [("", image, text, "") for image in images for text in texts]

mode, args = sys.argv[1], sys.argv[2:]
jobs = config_jobs(args[0]) if mode == "config" else grid_jobs(args)
names = [f"{path_safe(image)}_{path_safe(text)}" for _, image, text, _ in jobs]
counts = Counter(names)
if mode == "config":
    # Entries that differ only in hyper-parameters get one folder each.
    names = [f"{name}_cfg{job[0]}" if counts[name] > 1 else name for name, job in zip(names, jobs)]
else:
    for name in counts:
        if counts[name] > 1:
            pairs = [f"{image} × {text}" for (_, image, text, _), n in zip(jobs, names) if n == name]
            fail(f"IMAGE_ENCODERS × TEXT_ENCODERS: {' and '.join(pairs)} would share the run folder "
                 f"'{name}'; list each encoder once")
for job, name in zip(jobs, names):
    sys.stdout.write("".join(field + "\0" for field in (*job[:3], name, job[3])))
PY
}

read_plan() {
    local plan="$WORK_DIR/plan" index image text name keys
    if is_true "$USE_MULTI_CONFIG"; then
        plan_jobs config "$CONFIG_FILE" >"$plan" || exit 2
    else
        plan_jobs grid "${#IMAGE_ENCODERS[@]}" "${IMAGE_ENCODERS[@]}" "${TEXT_ENCODERS[@]}" >"$plan" || exit 2
    fi
    while IFS= read -r -d '' index && IFS= read -r -d '' image && IFS= read -r -d '' text \
        && IFS= read -r -d '' name && IFS= read -r -d '' keys; do
        JOB_INDEX+=("$index")
        JOB_IMAGE+=("$image")
        JOB_TEXT+=("$text")
        JOB_NAME+=("$name")
        JOB_KEYS+=(",$keys,")
        JOB_LOG+=("")
    done <"$plan"
}

leaderboard() {
    PYTHONPATH="$SCRIPT_DIR${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m reporting.leaderboard \
        --metric "$LEADERBOARD_METRIC" "$@" -- "$OUTPUT_ROOT" "${JOB_NAME[@]}"
}

trainer_supports_resume() {
    if [[ -z "${RESUME_SUPPORTED:-}" ]]; then
        local help_text
        help_text="$("$PYTHON" "$SCRIPT_DIR/train_clip.py" --help 2>/dev/null)" || true
        RESUME_SUPPORTED=false
        [[ "$help_text" != *--resume* ]] || RESUME_SUPPORTED=true
    fi
    [[ "$RESUME_SUPPORTED" == true ]]
}

# What each job does: skip (finished), new, resume (interrupted) or overwrite (FORCE, or an
# interrupted run that this train_clip.py cannot resume).
decide_actions() {
    local i=0 state name
    leaderboard --status >"$WORK_DIR/status" || exit 2
    while IFS=$'\t' read -r state name; do
        case "$state" in
            complete) if is_true "$FORCE"; then JOB_ACTION+=(overwrite); else JOB_ACTION+=(skip); fi ;;
            partial)
                if is_true "$FORCE" || ! trainer_supports_resume; then
                    JOB_ACTION+=(overwrite)
                else
                    JOB_ACTION+=(resume)
                fi
                ;;
            *) JOB_ACTION+=(new) ;;
        esac
        i=$((i + 1))
    done <"$WORK_DIR/status"
    ((i == ${#JOB_NAME[@]})) || die "internal: $i statuses for ${#JOB_NAME[@]} jobs"
}

describe_action() {
    local i=$1
    case "${JOB_ACTION[i]}" in
        skip) printf 'skip: finished (%s/cv_summary.json; FORCE=true reruns it)' "$OUTPUT_ROOT/${JOB_NAME[i]}" ;;
        new) printf 'run' ;;
        resume) printf 'resume the interrupted run' ;;
        overwrite)
            if is_true "$FORCE"; then
                printf 'rerun from scratch (FORCE), replacing %s' "$OUTPUT_ROOT/${JOB_NAME[i]}"
            else
                printf 'restart the interrupted run from scratch (train_clip.py has no --resume)'
            fi
            ;;
    esac
}

check_data_dir() {
    local i
    for i in "${!JOB_NAME[@]}"; do
        if [[ "${JOB_KEYS[i]}" != *,data_dir,* ]]; then
            [[ -d "$DATA_DIR" ]] || die "DATA_DIR not found: $DATA_DIR (a folder with one sub-folder of images per class)"
            return 0
        fi
    done
}

# train_clip.py flags for the settings a config entry leaves out (a combination sets none).
add_setting_flags() {
    local keys=$1
    [[ "$keys" == *,data_dir,* ]] || CMD+=(--data-dir "$DATA_DIR")
    [[ "$keys" == *,batch_size,* ]] || CMD+=(--batch-size "$BATCH_SIZE")
    [[ "$keys" == *,epochs,* ]] || CMD+=(--epochs "$EPOCHS")
    [[ "$keys" == *,learning_rate,* ]] || CMD+=(--learning-rate "$LEARNING_RATE")
    [[ "$keys" == *,img_size,* ]] || CMD+=(--img-size "$IMG_SIZE")
    [[ "$keys" == *,num_workers,* ]] || CMD+=(--num-workers "$NUM_WORKERS")
    if [[ "$keys" != *,use_cv,* ]] && is_true "$USE_CV"; then CMD+=(--use-cv); fi
    [[ "$keys" == *,n_splits,* ]] || CMD+=(--n-splits "$N_SPLITS")
    if [[ "$keys" != *,amp,* ]] && ! is_true "$USE_AMP"; then CMD+=(--no-amp); fi
    if [[ "$keys" != *,class_texts_file,* && -n "$CLASS_TEXTS_FILE" ]]; then
        CMD+=(--class-texts-file "$CLASS_TEXTS_FILE")
    fi
    if [[ "$keys" != *,use_weighted_sampling,* ]] && is_true "$USE_WEIGHTED_SAMPLING"; then
        CMD+=(--use-weighted-sampling)
    fi
    [[ "$keys" == *,weight_method,* ]] || CMD+=(--weight-method "$WEIGHT_METHOD")
}

# Sets CMD to the arguments of train_clip.py for job $1 on slot $2, logging to $3.
job_command() {
    local i=$1 slot=$2 log=$3
    CMD=("$SCRIPT_DIR/train_clip.py")
    if [[ -n "${JOB_INDEX[i]}" ]]; then
        CMD+=(--config "$CONFIG_FILE" --config-index "${JOB_INDEX[i]}")
    else
        CMD+=(--image-encoder "${JOB_IMAGE[i]}" --text-encoder "${JOB_TEXT[i]}")
    fi
    add_setting_flags "${JOB_KEYS[i]}"
    CMD+=(--output-dir "$OUTPUT_ROOT/${JOB_NAME[i]}" --log-file "$log")
    [[ "$DEVICE_MODE" != cuda ]] || CMD+=(--gpu-id "$((10#${SLOTS[slot]}))")
    case "${JOB_ACTION[i]}" in
        resume) CMD+=(--resume) ;;
        overwrite) CMD+=(--overwrite) ;;
    esac
    CMD+=(${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
}

new_log_path() {
    local stamp
    printf -v stamp '%(%Y%m%d_%H%M%S)T' -1
    printf '%s/%s_%s_%s.log' "$LOG_DIR" "${JOB_NAME[$1]}" "$(slot_tag "$2")" "$stamp"
}

format_duration() {
    local s=$1
    if ((s >= 3600)); then
        printf '%dh %02dm %02ds' $((s / 3600)) $((s % 3600 / 60)) $((s % 60))
    elif ((s >= 60)); then
        printf '%dm %02ds' $((s / 60)) $((s % 60))
    else
        printf '%ds' "$s"
    fi
}

# ----------------------------------------------------------------------------------------
# Scheduling: fill every free slot from the queue, look for finished jobs, repeat
# ----------------------------------------------------------------------------------------
start_job() {
    local i=$1 slot=$2 log console
    log="$(new_log_path "$i" "$slot")"
    console="${log%.log}.console"
    job_command "$i" "$slot" "$log"
    JOB_LOG[i]="$log"
    SLOT_JOB[slot]=$i
    rm -f "$WORK_DIR/status.$slot"
    # Job control on while forking: the job gets its own process group, so Ctrl-C reaches only
    # this script (which then stops the whole group, data-loader workers included).
    set -m
    (
        if [[ "$DEVICE_MODE" == forced-cpu ]]; then export CUDA_VISIBLE_DEVICES=""; fi
        # The console is a file: no progress bars (the trainer's own hide themselves already).
        export HF_HUB_DISABLE_PROGRESS_BARS=1
        status=0
        "$PYTHON" "${CMD[@]}" </dev/null >"$console" 2>&1 || status=$?
        printf '%s\n' "$status" >"$WORK_DIR/status.$slot"
    ) &
    SLOT_PID[slot]=$!
    set +m
    SLOT_STARTED[slot]=$SECONDS
    event "start  ${JOB_NAME[i]} on $(slot_tag "$slot") ($(describe_action "$i"))"
    note "       log: $log"
}

failure_reason() {
    local log=$1 console=$2 line=""
    if [[ -f "$log" ]]; then
        line="$(grep ' ERROR ' "$log" | tail -n 1)" || true
        line="${line#* ERROR }"
    fi
    if [[ -z "$line" && -f "$console" ]]; then
        line="$(grep -v '^[[:space:]]*$' "$console" | tail -n 1)" || true
    fi
    if [[ -z "$line" && -f "$log" ]]; then
        line="$(grep -v '^[[:space:]]*$' "$log" | tail -n 1)" || true
    fi
    printf '%s' "${line:-no error message}"
}

describe_status() {
    if (($1 > 128)); then
        printf 'killed by signal %d' $(($1 - 128))
    else
        printf 'exit %d' "$1"
    fi
}

# The console output of a job repeats its log; it is kept only when it holds more (a traceback,
# Python warnings). A job that ended before the trainer's logging began (a bad flag, a crash on
# import) has only its console output: that becomes the log, so the log named always exists.
tidy_console() {
    local log=$1 console="${1%.log}.console"
    [[ -f "$console" ]] || return 0
    if [[ ! -s "$log" ]]; then
        mv -- "$console" "$log"
    elif ! grep -qvxFf "$log" -- "$console"; then
        rm -f -- "$console"
    fi
}

finish_job() {
    local slot=$1 status=$2 i="${SLOT_JOB[$1]}" log console elapsed
    log="${JOB_LOG[i]}"
    console="${log%.log}.console"
    elapsed="$(format_duration $((SECONDS - SLOT_STARTED[slot])))"
    SLOT_JOB[slot]=-1
    tidy_console "$log"
    if ((status == 0)); then
        DONE+=("$i")
        event "done   ${JOB_NAME[i]} on $(slot_tag "$slot") after $elapsed"
        return 0
    fi
    FAILED+=("$i")
    JOB_STATUS[i]=$status
    event "FAILED ${JOB_NAME[i]} on $(slot_tag "$slot") after $elapsed ($(describe_status "$status")): $(failure_reason "$log" "$console")"
    note "       log: $log"
    [[ ! -f "$console" ]] || note "       console output: $console"
}

reap_finished() {
    local slot status
    for slot in "${!SLOTS[@]}"; do
        ((SLOT_JOB[slot] >= 0)) || continue
        if [[ ! -f "$WORK_DIR/status.$slot" ]] && kill -0 "${SLOT_PID[slot]}" 2>/dev/null; then
            continue
        fi
        status=0
        wait "${SLOT_PID[slot]}" 2>/dev/null || status=$?
        # The job's own exit status, unless the wrapper itself was killed before writing it.
        [[ ! -s "$WORK_DIR/status.$slot" ]] || status="$(<"$WORK_DIR/status.$slot")"
        finish_job "$slot" "$status"
    done
}

busy_slots() {
    local slot n=0
    for slot in "${!SLOTS[@]}"; do
        ((SLOT_JOB[slot] < 0)) || n=$((n + 1))
    done
    printf '%d' "$n"
}

run_queue() {
    local slot
    for slot in "${!SLOTS[@]}"; do
        SLOT_JOB[slot]=-1
    done
    NEXT=0
    while true; do
        for slot in "${!SLOTS[@]}"; do
            if ((SLOT_JOB[slot] < 0 && NEXT < ${#QUEUE[@]})); then
                NEXT=$((NEXT + 1))
                start_job "${QUEUE[NEXT - 1]}" "$slot"
            fi
        done
        (($(busy_slots) > 0)) || break
        sleep "$POLL_SECONDS"
        reap_finished
    done
}

# Ctrl-C, kill or a closed terminal: stop every running job (its whole process group) and say
# what was left unfinished; a rerun goes on from there.
# shellcheck disable=SC2317  # called by trap
on_signal() {
    local name=$1 code=$2 slot waited=0 i group groups alive
    trap '' INT TERM HUP
    printf '\n'
    event "Interrupted (SIG$name): stopping the running jobs"
    # Every job's process group, from bash's own job table: it also knows a job forked an
    # instant before the signal.
    mapfile -t groups < <(jobs -p)
    for group in ${groups[@]+"${groups[@]}"}; do
        kill -TERM -- "-$group" 2>/dev/null || true
    done
    while ((waited < STOP_GRACE_SECONDS * 5)); do
        alive=false
        for group in ${groups[@]+"${groups[@]}"}; do
            if kill -0 -- "-$group" 2>/dev/null; then alive=true; fi
        done
        [[ "$alive" == true ]] || break
        sleep 0.2
        waited=$((waited + 1))
    done
    for group in ${groups[@]+"${groups[@]}"}; do
        kill -KILL -- "-$group" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    for slot in "${!SLOTS[@]}"; do
        ((${SLOT_JOB[slot]:--1} < 0)) || tidy_console "${JOB_LOG[SLOT_JOB[slot]]}"
    done
    note "Left unfinished:"
    for slot in "${!SLOTS[@]}"; do
        i="${SLOT_JOB[slot]:--1}"
        ((i < 0)) || note "  ${JOB_NAME[i]}  (stopped on $(slot_tag "$slot"); log: ${JOB_LOG[i]})"
    done
    for ((i = ${NEXT:-0}; i < ${#QUEUE[@]}; i++)); do
        note "  ${JOB_NAME[QUEUE[i]]}  (not started)"
    done
    note "Run the same command again to go on: finished jobs are skipped, stopped ones resumed"
    note "(or restarted when train_clip.py cannot resume)."
    exit "$code"
}

# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------
print_plan() {
    local i to_run=0
    for i in "${!JOB_NAME[@]}"; do
        [[ "${JOB_ACTION[i]}" == skip ]] || to_run=$((to_run + 1))
    done
    note "train_clip driver: ${#JOB_NAME[@]} job(s), $to_run to run, $(describe_devices)"
    [[ ${#ENV_GIVEN[@]} -eq 0 ]] || note "Settings from the environment: ${ENV_GIVEN[*]}"
    for i in "${!JOB_NAME[@]}"; do
        note "  $((i + 1)). ${JOB_NAME[i]}: $(describe_action "$i")"
    done
}

print_dry_run() {
    local i n=0 slot log line
    note ""
    note "Commands (dry run; jobs take the next free slot, shown here for the first round):"
    for i in "${!JOB_NAME[@]}"; do
        [[ "${JOB_ACTION[i]}" != skip ]] || continue
        slot=$((n % ${#SLOTS[@]}))
        n=$((n + 1))
        log="$(new_log_path "$i" "$slot")"
        job_command "$i" "$slot" "$log"
        [[ "$DEVICE_MODE" != forced-cpu ]] || printf 'CUDA_VISIBLE_DEVICES= '
        printf -v line '%q ' "$PYTHON" "${CMD[@]}"
        printf '%s\n' "${line% }"
    done
}

print_summary() {
    local i skipped=0
    for i in "${!JOB_NAME[@]}"; do
        [[ "${JOB_ACTION[i]}" != skip ]] || skipped=$((skipped + 1))
    done
    note ""
    note "${#JOB_NAME[@]} job(s): ${#DONE[@]} finished, $skipped skipped (already finished), ${#FAILED[@]} failed"
    if [[ ${#FAILED[@]} -gt 0 ]]; then
        note "Failed jobs:"
        for i in "${FAILED[@]}"; do
            note "  ${JOB_NAME[i]}  ($(describe_status "${JOB_STATUS[i]}"))  log: ${JOB_LOG[i]}"
        done
    fi
}

main() {
    WANT_HELP=false
    apply_environment
    parse_command_line "$@"
    if is_true "$WANT_HELP"; then
        usage
        printf '\n'
        print_settings
        exit 0
    fi
    ((BASH_VERSINFO[0] > 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] >= 3))) \
        || die "bash 4.3 or newer is needed, this is $BASH_VERSION"
    resolve_python
    split_extra_args
    check_settings

    WORK_DIR="$(mktemp -d)"
    trap 'rm -rf "$WORK_DIR"' EXIT
    JOB_INDEX=() JOB_IMAGE=() JOB_TEXT=() JOB_NAME=() JOB_KEYS=() JOB_LOG=() JOB_ACTION=()
    JOB_STATUS=() DONE=() FAILED=() QUEUE=() SLOTS=() SLOT_JOB=() SLOT_PID=() SLOT_STARTED=()
    read_plan
    check_data_dir
    decide_actions
    detect_slots
    print_plan
    if is_true "$DRY_RUN"; then
        print_dry_run
        exit 0
    fi

    local i
    for i in "${!JOB_NAME[@]}"; do
        [[ "${JOB_ACTION[i]}" == skip ]] || QUEUE+=("$i")
    done
    mkdir -p -- "$OUTPUT_ROOT" "$LOG_DIR"
    trap 'on_signal INT 130' INT
    trap 'on_signal TERM 143' TERM
    trap 'on_signal HUP 129' HUP
    run_queue
    trap - INT TERM HUP

    local status=0
    note ""
    leaderboard || status=1
    print_summary
    [[ ${#FAILED[@]} -eq 0 ]] || status=1
    exit "$status"
}

main "$@"
