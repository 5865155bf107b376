#!/usr/bin/env bash
# GPU check: everything mechgrok does on CUDA, in one script under 8 minutes on a
# machine with one CUDA GPU, set-up included. From the repository root:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: /tmp/mechgrok-gpu-check
#
# 1. set-up: reuse $MECHGROK_GPU_VENV (default .venv-gpu) or create it with the system's site
#    packages visible (an image's CUDA torch is reused as it is); install torch from PyPI only when
#    the venv's torch sees no GPU (PyPI's Linux x86-64 wheels are CUDA builds; the "+cpu" ones come
#    from PyTorch's own index), then the project. Only package registries are needed; on a machine
#    with none, point MECHGROK_WHEELS at a folder of wheels (pip --no-index --find-links).
# 2. the sweep engine's equivalence tests, the models' hook tests and the shortcut tests on CUDA
#    (MECHGROK_TEST_DEVICE=cuda: tests/conftest.py's fixtures train on it);
# 3. a 1,024-member parity sweep (32 weight decays x 32 learning rates) on CUDA;
# 4. the transformer's time to grok (modadd-transformer, seed 0) on CUDA: steps and seconds to
#    >= 99% test accuracy;
# 5. the LLC estimator's vectorised pass against a plain loop over checkpoints x chains on CUDA
#    (100 modadd-mlp24 checkpoints x 4 chains: the speed-up that stacking rows should give on a GPU);
# 6. the whole test suite with MECHGROK_TEST_DEVICE=cuda, in the time that is left.
# Each stage has a time limit inside an overall 470 s budget; the summary at the end prints every
# stage's status and seconds (also in OUT_DIR/gpu_check.log).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-/tmp/mechgrok-gpu-check}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 MECHGROK_TEST_DEVICE=cuda

START=$(date +%s)
BUDGET=${MECHGROK_GPU_BUDGET:-470}
SUMMARY=()
left() { echo $((START + BUDGET - $(date +%s))); }
# stage NAME LIMIT_S COMMAND...: run COMMAND under min(LIMIT_S, time left), record status and time
stage() {
    local name=$1 limit=$2
    shift 2
    local rest
    rest=$(left)
    ((limit > rest)) && limit=$rest
    if ((limit < 10)); then
        SUMMARY+=("$(printf '%-28s %-10s %6s s' "$name" "no time" "-")")
        echo "== $name: skipped, $rest s left of the $BUDGET s budget"
        return 0
    fi
    echo "== $name (limit ${limit} s)"
    local t0 t1 rc status
    t0=$(date +%s.%N)
    # functions run in a child bash (export -f below) so that timeout can stop them
    timeout --kill-after=10 "$limit" bash -c '"$@"' stage "$@"
    rc=$?
    t1=$(date +%s.%N)
    case $rc in
        0) status=ok ;;
        124 | 137) status="timed out" ;;
        *) status="failed($rc)" ;;
    esac
    SUMMARY+=("$(printf '%-28s %-10s %6.1f s' "$name" "$status" "$(awk "BEGIN { print $t1 - $t0 }")")")
    return 0
}

# -- 1. set-up ------------------------------------------------------------------------------------
setup() {
    local venv=${MECHGROK_GPU_VENV:-.venv-gpu} py base
    if [ ! -x "$venv/bin/python" ]; then
        for base in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
            if command -v "$base" >/dev/null && "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
                break
            fi
            base=""
        done
        [ -n "$base" ] || { echo "no Python >= 3.11 found (set PYTHON=...)"; return 1; }
        "$base" -m venv --system-site-packages "$venv" || return 1
        touch "$venv/.made-by-gpu-check"  # only such a venv gets its torch replaced
    fi
    py=$venv/bin/python
    local pip=("$py" -m pip install -q --disable-pip-version-check)
    if [ -n "${MECHGROK_WHEELS:-}" ]; then
        pip+=(--no-index --find-links "$MECHGROK_WHEELS")
    fi
    if ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
        if [ ! -e "$venv/.made-by-gpu-check" ]; then
            echo "torch in $venv sees no CUDA device; not touching a venv this script did not make (set MECHGROK_GPU_VENV)"
            return 1
        fi
        echo "torch in $venv sees no CUDA device: installing a CUDA build from PyPI"
        "$py" -m pip uninstall -q -y torch 2>/dev/null
        "${pip[@]}" "torch>=2.2" || return 1
    fi
    # the project and its test runner; an already satisfied requirement is not reinstalled
    "${pip[@]}" -e . pytest || return 1
    "$py" - <<'EOF' || return 1
import torch, mechgrok
from mechgrok.store import library_versions
assert torch.cuda.is_available(), "torch sees no CUDA device"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) on {torch.cuda.get_device_name(0)}; "
      f"mechgrok {mechgrok.__version__}; {library_versions()}")
EOF
}
ttg() {
    "$MECHGROK_GPU_VENV/bin/python" - <<'EOF'
import time, torch
from mechgrok import preset, train
cfg = preset("modadd-transformer").with_overrides({"train.device": "cuda"})
t = time.perf_counter()
res = train(cfg, progress=False)  # in memory: no run folder
torch.cuda.synchronize()
s = res.summary
print(f"modadd-transformer on {torch.cuda.get_device_name(0)}: {s['steps']:,} steps in {time.perf_counter() - t:.1f} s "
      f"({s['steps_per_second']:.0f} steps/s); 100% train accuracy at step {s['step_train_acc_100']}, "
      f">= 99% test accuracy at step {s['step_test_acc_99']}; final test acc {s['final_test_acc']}")
EOF
}

if ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
    echo "no CUDA GPU here (nvidia-smi -L lists none): nothing to check"
    exit 1
fi
export OUT_DIR MECHGROK_GPU_VENV=${MECHGROK_GPU_VENV:-.venv-gpu}
export -f setup ttg
stage "set-up" 300 setup
PY=${MECHGROK_GPU_VENV:-.venv-gpu}/bin/python
if ! "$PY" -c 'import sys, torch, mechgrok; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "set-up failed: no working CUDA torch + mechgrok in ${MECHGROK_GPU_VENV:-.venv-gpu}"
    printf '%s\n' "${SUMMARY[@]}"
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

# -- 2. equivalence tests on CUDA -----------------------------------------------------------------
stage "engine/model tests (cuda)" 120 "$PY" -m pytest -q -p no:cacheprovider --durations=5 \
    tests/test_sweep_engine.py tests/test_models.py tests/test_speedups.py

# -- 3. 1,024-member parity sweep -----------------------------------------------------------------
rm -rf "$OUT_DIR/sweep-parity"
stage "parity sweep 1024 (cuda)" 150 "$PY" -m mechgrok.cli sweep parity \
    --grid optim.weight_decay=log:0.01:3:32 --grid optim.lr=log:0.001:0.03:32 \
    --device cuda --max-batch 1024 --log-every 10 --out "$OUT_DIR/sweep-parity" --quiet

# -- 4. transformer time to grok ------------------------------------------------------------------
stage "transformer time to grok" 150 ttg

# -- 5. the LLC: vectorised chains against a loop over checkpoints x chains -----------------------
stage "llc vectorised vs loop (cuda)" 120 "$PY" benchmarks/bench_llc.py --device cuda --no-kernel-loop

# -- 6. the whole suite on CUDA -------------------------------------------------------------------
stage "test suite (cuda)" 600 "$PY" -m pytest -q -p no:cacheprovider --durations=10

echo
echo "== summary ($(($(date +%s) - START)) s in all; log: $LOG)"
printf '%s\n' "${SUMMARY[@]}"
