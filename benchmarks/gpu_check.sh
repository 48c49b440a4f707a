#!/usr/bin/env bash
# The GPU check of issue #11 (part 4): one prepared script for a lent GPU machine, at most
# 8 minutes. It finds a Python with torch (and Ray, else unpacks the carried bundle), prints
# nvidia-smi and the versions, then runs the phases of benchmarks/gpu_check.py in order, each
# under `timeout` with its share of a total wall budget (default 450 s; a phase that finds too
# little time left is skipped with a note), and ends with the projection against Figure 1 in
# one hour (>= 333 trial-steps/s). Every row is one JSON line on stdout and in
# $OUT/gpu_check.jsonl (OUT set) or a temporary file (printed).
#
#   bash benchmarks/gpu_check.sh                          # on the GPU machine: every phase, cuda
#   bash benchmarks/gpu_check.sh --device cpu --quick     # every code path on a CPU machine
#   bash benchmarks/gpu_check.sh --phases env,packed --budget 120 --dataset synthetic
#   bash benchmarks/gpu_check.sh --prepare                # on a machine with PyPI: fill .whl/ (below)
#
# The GPU machine has python3 with CUDA torch but no Ray and no network, and takes at most
# 64 MiB of working tree (tracked files plus carried paths), so a .venv cannot travel.
# `--prepare` (run here first) fills the git-ignored .whl/ with what it lacks: Ray stripped of
# what a local run never loads (Java jars, RLlib, Serve, LLM, the dashboard's web client) as
# one tar.xz for the device's Python (GPU_PYTHON_VERSION, default 3.12), the wheels Ray
# imports that the machine lacks (jsonschema and its three dependencies), and MNIST gzipped
# (raymix reads .gz): about 41 MiB. Then, from the session: run(command="bash
# benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540). Environment: PYTHON (the
# interpreter), RAYMIX_DATA_DIR (else .whl/data, shared/data or ../shared/data), OUT.
set -u
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
T0=$SECONDS

DEVICE=auto QUICK="" BUDGET=450 PREPARE="" DATASET=auto PHASES="env,actors,one_trial,packed,n1000"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=--quick; shift ;;
        --budget) BUDGET=$2; shift 2 ;;
        --dataset) DATASET=$2; shift 2 ;;
        --phases) PHASES=$2; shift 2 ;;
        --prepare) PREPARE=1; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# ---------------------------------------------------------------- the interpreter
pick_python() {
    [ -n "${PYTHON:-}" ] && { echo "$PYTHON"; return; }
    local first="" c
    for c in "$REPO/.venv/bin/python" python3 python; do
        command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || continue
        "$c" -c "import torch" >/dev/null 2>&1 || continue
        [ -z "$first" ] && first=$c
        # a cuda run prefers the interpreter whose torch sees the GPU
        if [ "$DEVICE" = cpu ] || "$c" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
            echo "$c"; return
        fi
    done
    echo "${first:-python3}"
}
PY=$(pick_python)

# ---------------------------------------------------------------- --prepare: fill .whl/ for the GPU machine
if [ -n "$PREPARE" ]; then
    set -e
    PYV=${GPU_PYTHON_VERSION:-3.12}
    TAG=cp${PYV/./}
    RAYV=$("$PY" -c "import ray; print(ray.__version__)")
    DEPS=$("$PY" -c "import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in ('jsonschema', 'jsonschema-specifications', 'referencing', 'rpds-py')))")
    TMP=$(mktemp -d)
    echo "gpu_check.sh --prepare: ray==$RAYV $DEPS for CPython $PYV, into $REPO/.whl"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -d "$TMP" "ray==$RAYV" $DEPS
    # unzip keeping the executable bits of Ray's binaries (raylet, gcs_server)
    "$PY" - "$TMP"/ray-"$RAYV"-*.whl "$TMP/x" <<'EOF'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        path = z.extract(info, sys.argv[2])
        mode = info.external_attr >> 16
        if mode and not info.is_dir():
            os.chmod(path, mode & 0o777)
EOF
    rm -rf "$TMP/x/ray/jars" "$TMP/x/ray/rllib" "$TMP/x/ray/llm" "$TMP/x/ray/serve" "$TMP/x/ray/dashboard/client/build"
    rm -f "$TMP"/ray-*.whl
    mkdir -p .whl
    rm -rf .whl/ray-bundle-*.tar.xz .whl/data  # one bundle: two would not fit in the 64 MiB
    rm -f .whl/*.whl
    tar -C "$TMP/x" -cf - ray "ray-$RAYV.dist-info" | xz -T0 -6 > ".whl/ray-bundle-$TAG.tar.xz"
    mv "$TMP"/*.whl .whl/
    SRC=${RAYMIX_DATA_DIR:-$REPO/../shared/data}
    if [ -d "$SRC/MNIST/raw" ]; then
        mkdir -p .whl/data/MNIST/raw
        for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
            if [ -f "$SRC/MNIST/raw/$f" ]; then gzip -9c "$SRC/MNIST/raw/$f" > ".whl/data/MNIST/raw/$f.gz"
            else cp "$SRC/MNIST/raw/$f.gz" .whl/data/MNIST/raw/; fi
        done
    else
        echo "gpu_check.sh --prepare: no MNIST under $SRC: the GPU run will use synthetic data" >&2
    fi
    rm -rf "$TMP"
    TREE=$(git ls-files -z -co --exclude-standard | xargs -0 cat 2>/dev/null | wc -c)
    CARRY=$(du -sb .whl | cut -f1)
    ls -l .whl .whl/data/MNIST/raw 2>/dev/null
    echo "working tree $((TREE / 1048576)) MiB + .whl $((CARRY / 1048576)) MiB = $(((TREE + CARRY) / 1048576)) MiB (the device takes 64)"
    [ $((TREE + CARRY)) -lt $((64 * 1048576)) ] || { echo "gpu_check.sh --prepare: over 64 MiB" >&2; exit 1; }
    exit 0
fi

# ---------------------------------------------------------------- output
if [ -n "${OUT:-}" ]; then JSONL=$OUT/gpu_check.jsonl; else JSONL=$(mktemp -d)/gpu_check.jsonl; fi
mkdir -p "$(dirname "$JSONL")"
note() {
    local msg=${1//\\/\\\\}
    msg=${msg//\"/\\\"}
    msg=$(printf '%s' "$msg" | tr '\n\t' '  ')
    local line="{\"phase\": \"gpu_check.sh\", \"measure\": \"note\", \"note\": \"$msg\"}"
    echo "$line"
    echo "$line" >> "$JSONL"
}
note "rows also in $JSONL; python $PY; device $DEVICE; budget ${BUDGET} s${QUICK:+; quick}"

# ---------------------------------------------------------------- Ray: the interpreter's, else the carried bundle
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import ray" >/dev/null 2>&1; then
    TAG=$("$PY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
    BUNDLE=$REPO/.whl/ray-bundle-$TAG.tar.xz
    if [ -f "$BUNDLE" ]; then
        SITE=${RAYMIX_SITE:-/tmp/raymix-site}
        mkdir -p "$SITE"
        tar -xJf "$BUNDLE" -C "$SITE"
        if ls "$REPO"/.whl/*.whl >/dev/null 2>&1; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$REPO"/.whl/*.whl \
                >/dev/null 2>&1 || note "pip could not install the carried wheels into $SITE"
        fi
        export PYTHONPATH="$REPO:$SITE${PYTHONPATH#"$REPO"}"
        if "$PY" -c "import ray" >/dev/null 2>&1; then
            note "Ray from the carried bundle $(basename "$BUNDLE"), unpacked into $SITE in $((SECONDS - T0)) s"
        else
            note "Ray from $(basename "$BUNDLE") does not import: $("$PY" -c 'import ray' 2>&1 | tail -1)"
        fi
    else
        note "no Ray for $PY and no carried bundle .whl/ray-bundle-$TAG.tar.xz (bash benchmarks/gpu_check.sh --prepare, then carry .whl): the phases that need Ray fail"
    fi
fi

# ---------------------------------------------------------------- data
if [ -z "${RAYMIX_DATA_DIR:-}" ]; then
    for d in "$REPO/.whl/data" "$REPO/shared/data" "$REPO/../shared/data"; do
        if [ -d "$d/MNIST/raw" ]; then export RAYMIX_DATA_DIR=$d; break; fi
    done
fi

# ---------------------------------------------------------------- the machine
if command -v nvidia-smi >/dev/null 2>&1; then
    note "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,utilization.gpu --format=csv,noheader 2>&1 | head -4)"
else
    note "nvidia-smi: not found"
fi
note "cpus $(nproc), memory $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}'), RAYMIX_DATA_DIR ${RAYMIX_DATA_DIR:-unset}"

# ---------------------------------------------------------------- the phases, each its share of what is left
declare -A SHARE=([env]=5 [actors]=10 [one_trial]=17 [packed]=48 [n1000]=20)
# and at least this much while it is at most half of what is left (Ray and the actors' start-up)
declare -A FLOOR=([env]=20 [actors]=60 [one_trial]=60 [packed]=90 [n1000]=40)
IFS=, read -r -a LIST <<< "$PHASES"
RESERVE=10  # for the projection and the last lines
for i in "${!LIST[@]}"; do
    phase=${LIST[$i]}
    rest=0
    for p in "${LIST[@]:$i}"; do rest=$((rest + ${SHARE[$p]:-10})); done
    left=$((BUDGET - (SECONDS - T0) - RESERVE))
    b=$((left * ${SHARE[$phase]:-10} / rest))
    floor=$(( ${FLOOR[$phase]:-0} < left / 2 ? ${FLOOR[$phase]:-0} : left / 2 ))
    [ "$b" -ge "$floor" ] || b=$floor
    if [ "$b" -lt 10 ]; then
        note "phase $phase skipped: ${left} s of the budget left, its share ${b} s"
        continue
    fi
    t=$SECONDS
    timeout -k 5 $((b + 10)) "$PY" -u benchmarks/gpu_check.py "$phase" --device "$DEVICE" --dataset "$DATASET" $QUICK --budget "$b" --jsonl "$JSONL"
    rc=$?
    [ $rc -eq 0 ] || note "phase $phase exited with status $rc$([ $rc -eq 124 ] || [ $rc -eq 137 ] && echo ' (timed out)') after $((SECONDS - t)) s of its ${b} s"
done
MD="${OUT:-$(dirname "$JSONL")}/gpu_check.md"
"$PY" benchmarks/gpu_check.py projection --jsonl "$JSONL" --markdown "$MD" --figure "${MD%.md}.png"
note "the table and the figure for docs/measurements.md: $MD, ${MD%.md}.png"
note "gpu_check.sh: $((SECONDS - T0)) s in all (budget ${BUDGET} s)"
