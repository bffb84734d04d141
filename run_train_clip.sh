#!/usr/bin/env bash
# run_train_clip.sh: train every image × text encoder combination (or every entry of a JSON
# config list) with train_clip.py, one job per GPU at a time, then rank the runs.
#
#   bash run_train_clip.sh                                  # the settings below
#   EPOCHS=5 GPUS="0 1" IMAGE_ENCODERS="resnet18 resnet50" bash run_train_clip.sh
#   bash run_train_clip.sh --dry-run                        # check and show the jobs, run nothing
#   bash run_train_clip.sh --help
#   bash run_train_clip.sh --status                         # where each job stands (from another terminal)
#   bash run_train_clip.sh --list-jobs | --count-jobs | --job-index I | --leaderboard   # on a cluster
#
# Each setting below may also be given in the environment (which wins); arrays as
# space-separated words. Every train_clip.py flag is a setting, named like it in capitals
# (WEIGHT_DECAY=0.05 gives --weight-decay 0.05). This file only holds the settings; the study
# runner (python -m study) does the work. Full documentation: docs/driver.md

if [ -z "${BASH_VERSION:-}" ]; then
    echo "error: run this script with bash: bash run_train_clip.sh" >&2
    exit 2
fi
if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 3))); then
    echo "error: bash 4.3 or newer is needed, this is $BASH_VERSION" >&2
    exit 2
fi

# The environment wins over the settings below: keep what it gives before they are assigned, and
# which variables exist already (the block's own are the new ones).
declare -A _environment=()
for _name in $(compgen -e); do
    _environment[$_name]=${!_name}
done
_variables_before=" $(compgen -v | tr '\n' ' ') "

# ======================================= settings =======================================
# Data directory (one sub-folder of images per class)
DATA_DIR="single_label_data"

# GPUs: one job runs on each listed GPU at a time (list a GPU twice to run two jobs on it)
GPUS=(0)
GPUS_PER_JOB=1                       # 2 or more: torchrun jobs on groups of GPUS, e.g. GPUS=(0 1 2 3) by 2
JOBS_PER_GPU=1                       # 2 or more: that many jobs at once on each GPU (small models and images)

# Training parameters
BATCH_SIZE=16
EPOCHS=200
LEARNING_RATE=1e-4

# Cross-validation
USE_CV=true
N_SPLITS=5
TEST_FRACTION=0                      # e.g. 0.2: held out before the folds, the same images for every job;
                                     # the leaderboard scores the study's winner on it (the number to publish)

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
WEIGHT_SMOOTH_FACTOR=1.0             # class weights ** this: 0 uniform, 1 the full method
IMG_SIZE=224
EXTRA_ARGS=()                        # more train_clip.py flags for every job, e.g. (--freeze-text)

# Rarely changed
LOG_DIR="logs/clip_training"
LEADERBOARD_METRIC="balanced_accuracy"   # accuracy, balanced_accuracy, macro_f1 or roc_auc
FORCE=false                          # true: rerun jobs that already finished (replaces their results)
DRY_RUN=false                        # true: check and print the jobs and their commands, run nothing
PYTHON=""                            # empty: .venv/bin/python next to this script, else python3
# ========================================================================================

_variables_after=$(compgen -v)
set -euo pipefail

die() {
    printf 'error: %s\n' "$*" >&2
    exit 2
}

# A setting the environment gave keeps the environment's value (the block above may have
# replaced it, or made an array of it, which would not reach the runner).
restore_environment() {
    local name declaration
    for name in "${!_environment[@]}"; do
        declaration="$(declare -p "$name" 2>/dev/null)" || declaration=""
        [[ "$name" =~ ^[A-Z][A-Z0-9_]*$ && ! "$declaration" =~ ^declare\ -[^\ ]*r ]] || continue
        if [[ "$declaration" =~ ^declare\ -[^\ ]*[aA] || "${!name-}" != "${_environment[$name]}" ]]; then
            unset -v "$name"
            export "$name=${_environment[$name]}"
        fi
    done
}

# The settings the block made, as words for the runner: NAME=VALUE, an array as NAME=() then
# NAME+=ITEM per item (so an item may hold spaces).
block_settings() {
    local name item
    for name in $_variables_after; do
        [[ "$name" =~ ^[A-Z][A-Z0-9_]*$ && "$_variables_before" != *" $name "* ]] || continue
        if [[ "$(declare -p "$name")" =~ ^declare\ -[^\ ]*a ]]; then
            local -n items="$name"
            _block_settings+=("$name=()")
            for item in ${items[@]+"${items[@]}"}; do
                _block_settings+=("$name+=$item")
            done
            unset -n items
        else
            _block_settings+=("$name=${!name}")
        fi
    done
}

choose_python() {
    local script_dir=$1
    if [[ -n "${PYTHON:-}" ]]; then
        command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON: no such program"
    elif [[ -x "$script_dir/.venv/bin/python" ]]; then
        PYTHON="$script_dir/.venv/bin/python"
    else
        PYTHON="python3"
        command -v "$PYTHON" >/dev/null || die "no Python found: create .venv (make venv) or set PYTHON=..."
    fi
}

_block_settings=()
block_settings
restore_environment
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
choose_python "$SCRIPT_DIR"
export PYTHONPATH="$SCRIPT_DIR${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m study "$@" -- "${_block_settings[@]}"
