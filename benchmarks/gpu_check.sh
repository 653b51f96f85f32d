#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, builds actzip with its CUDA backend, runs
# the CUDA tests (pytest -m cuda, and ctest), then benchmarks/bench_gpu.py (codec speed and
# bound, CPU<->GPU cross-decoding, nvCOMP and CuPy on the same tensors, a training step of
# ResNet-50 and of a small transformer). Meant to finish in under 8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh [--out PATH] [--quick] [--no-build] [-- bench_gpu.py args...]
#
# --out      markdown report (default $OUT/gpu_check.md when $OUT is set, else
#            benchmarks/out/gpu_check.md); the build, pytest and ctest logs go next to it.
# --quick    bench_gpu.py --quick: tiny sizes, to try the script itself.
# --no-build reuse the build of a previous run (build/gpu-check).
# -- ARGS    passed to both bench_gpu.py runs (codec and peers, then training).
#
# Offline machines: wheels in .whl/ (nvCOMP: nvidia-nvcomp-cu13 and nvidia-libnvcomp-cu13)
# are installed into /tmp/site; .whl/test/ (pytest, hypothesis and their dependencies) only
# when pytest or hypothesis is missing. Without nvCOMP its rows say "not installed".
#
# Environment: PYTHON (default python3); GPU_CHECK_BUDGET_S (whole run, default 480);
# GPU_CHECK_TEST_TIMEOUT_S (pytest, default 180); GPU_CHECK_ALLOW_NO_CUDA_BACKEND=1 goes on
# (tests, benchmark) when actzip.backends() lacks "cuda", still exiting 1;
# GPU_CHECK_BUILD=cmake (default: one CMake build serves ctest and pytest, the module is
# placed in python/actzip as tools/dev_build.sh does) or pip (pip install . and a second
# CMake build for ctest); ACTZIP_CUDA_ARCH (default: the GPU's compute capability, e.g. 90).
#
# Exit status: 0 when everything passed; 1 when the build, a test or a benchmark check
# failed (every phase still runs once the build has succeeded); 2 without a usable GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
# The machine is offline: pip must not try to look for a newer pip; and it runs as root.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
BUILD_MODE=${GPU_CHECK_BUILD:-cmake}
BUILD_DIR=build/gpu-check
OUT_FILE=""
QUICK=()
DO_BUILD=1
BENCH_ARGS=()
COMMAND="bash benchmarks/gpu_check.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_FILE=$2; shift 2 ;;
    --quick) QUICK=(--quick); shift ;;
    --no-build) DO_BUILD=0; shift ;;
    --) shift; BENCH_ARGS=("$@"); break ;;
    *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [ -z "$OUT_FILE" ]; then
  if [ -n "${OUT:-}" ]; then OUT_FILE=$OUT/gpu_check.md; else OUT_FILE=benchmarks/out/gpu_check.md; fi
fi
LOG_DIR=$(dirname "$OUT_FILE")
mkdir -p "$LOG_DIR"

START_NS=$(date +%s%N)
PHASE_ROWS=()
FAILED=()

seconds_since() {  # seconds since the nanosecond time $1, one decimal
  local ms=$(( ($(date +%s%N) - $1) / 1000000 ))
  printf '%d.%d' $((ms / 1000)) $(((ms % 1000) / 100))
}

elapsed_s() { echo $(( ($(date +%s%N) - START_NS) / 1000000000 )); }

# run_phase NAME COMMAND...: runs one phase, prints and records its wall time and status.
# The command's failure is recorded, not fatal: the caller decides.
run_phase() {
  local name=$1; shift
  local start rc=0
  start=$(date +%s%N)
  echo
  echo "==> $name"
  "$@" || rc=$?
  local took; took=$(seconds_since "$start")
  local status=ok
  if [ "$rc" -ne 0 ]; then status="FAILED (exit $rc)"; FAILED+=("$name"); fi
  if [ -n "${PHASE_NOTE:-}" ]; then status="$status; $PHASE_NOTE"; fi
  echo "<== $name: $status, ${took} s"
  PHASE_ROWS+=("| $name | ${took} s | $status |")
  PHASE_NOTE=""
  return "$rc"
}

write_phases() {  # appends the phase table to the report
  {
    echo
    echo "## $1"
    echo
    echo "| phase | wall time | status |"
    echo "|---|---|---|"
    printf '%s\n' "${PHASE_ROWS[@]}"
    echo
  } >> "$OUT_FILE"
}

finish() {  # finish [STATUS]: the summary, then exit STATUS (default 1) if a phase failed
  local total; total=$(seconds_since "$START_NS")
  PHASE_ROWS+=("| total | ${total} s | $([ ${#FAILED[@]} -eq 0 ] && echo ok || echo "FAILED: ${FAILED[*]}") |")
  write_phases "Phases (whole run)"
  echo
  echo "phases:"
  printf '  %s\n' "${PHASE_ROWS[@]}"
  echo "report: $OUT_FILE; logs: $LOG_DIR/gpu_check_*.log"
  if [ ${#FAILED[@]} -ne 0 ]; then
    echo "GPU CHECK FAILED: ${FAILED[*]}"
    exit "${1:-1}"
  fi
  echo "GPU check passed in ${total} s"
}

# --- environment -------------------------------------------------------------------------
environment() {
  if ! command -v nvidia-smi >/dev/null; then echo "nvidia-smi not found: no NVIDIA driver here"; return 2; fi
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || return 2
  if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
  if command -v nvcc >/dev/null; then nvcc --version | tail -n 2 | head -n 1; else echo "nvcc not found"; fi
  cmake --version | head -n 1
  "$PY" - <<'EOF' || return 2
import platform, torch
print(f"python {platform.python_version()} ({__import__('sys').executable}), torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
if not torch.cuda.is_available():
    raise SystemExit("torch sees no CUDA device")
print("GPU:", torch.cuda.get_device_name(0))
EOF
}

{
  echo "# actzip GPU check"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- command: \`$COMMAND\`"
  if git rev-parse --short HEAD >/dev/null 2>&1; then
    echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- 2>/dev/null || echo ' (with uncommitted changes)')"
  fi
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>/dev/null | head -n 1 || echo none)"
  echo "- nvcc: $( (command -v nvcc >/dev/null && nvcc --version || /usr/local/cuda/bin/nvcc --version) 2>/dev/null | grep -o 'release [0-9.]*' || echo 'not found')"
  echo "- budget: ${BUDGET_S} s; build: $BUILD_MODE"
} > "$OUT_FILE"

if ! run_phase "environment" environment; then
  echo "no usable GPU: nothing to check"
  finish 2
fi
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi

# --- offline wheels ----------------------------------------------------------------------
SITE=/tmp/site
install_wheels() {
  local wheels=()
  if compgen -G ".whl/*.whl" >/dev/null; then
    wheels+=(.whl/*.whl)
  else
    PHASE_NOTE="no .whl/: nvCOMP rows will say not installed"
  fi
  if ! "$PY" -c 'import pytest, hypothesis' 2>/dev/null; then
    if compgen -G ".whl/test/*.whl" >/dev/null; then
      wheels+=(.whl/test/*.whl)
    else
      echo "pytest or hypothesis is missing and .whl/test/ has no wheels: the Python tests cannot run"
    fi
  fi
  if [ ${#wheels[@]} -eq 0 ]; then return 0; fi
  printf '  %s\n' "${wheels[@]}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
    || return 1
}
if run_phase "install wheels (.whl)" install_wheels; then :; fi
if [ -d "$SITE" ]; then export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}; fi
"$PY" -c 'from nvidia import nvcomp; print("nvCOMP", nvcomp.__version__, "CUDA", nvcomp.__cuda_version__)' 2>/dev/null \
  || echo "nvCOMP: not importable (its rows will say why)"

# --- build -------------------------------------------------------------------------------
CUDA_ARCH=${ACTZIP_CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')}
CMAKE_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DACTZIP_CUDA=ON)
if [ -n "$CUDA_ARCH" ]; then CMAKE_FLAGS+=(-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH"); fi
if command -v nvcc >/dev/null; then CMAKE_FLAGS+=(-DCMAKE_CUDA_COMPILER="$(command -v nvcc)"); fi
GENERATOR=()
if command -v ninja >/dev/null; then GENERATOR=(-G Ninja); fi
BUILD_LOG=$LOG_DIR/gpu_check_build.log

build_cmake() {
  local pybind11_dir
  pybind11_dir=$("$PY" -c 'import pybind11; print(pybind11.get_cmake_dir())') || return 1
  # Configured every time (cheap once cached), so that a failed configure is not kept.
  cmake -S . -B "$BUILD_DIR" "${GENERATOR[@]}" "${CMAKE_FLAGS[@]}" -DACTZIP_BUILD_TESTS=ON -DACTZIP_PYTHON=ON \
    -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$pybind11_dir" >>"$BUILD_LOG" 2>&1 || return 1
  cmake --build "$BUILD_DIR" -j "$(nproc)" >>"$BUILD_LOG" 2>&1 || return 1
  local so found=0
  for so in "$BUILD_DIR"/_core*.so; do
    [ -e "$so" ] || continue
    found=1
    cp "$so" "python/actzip/.$(basename "$so").tmp" && mv -f "python/actzip/.$(basename "$so").tmp" "python/actzip/$(basename "$so")" \
      || return 1
  done
  if [ "$found" -eq 0 ]; then echo "the build made no _core*.so in $BUILD_DIR"; return 1; fi
}

build_pip() {
  local defines=(-C cmake.define.ACTZIP_CUDA=ON)
  if [ -n "$CUDA_ARCH" ]; then defines+=(-C cmake.define.CMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH"); fi
  "$PY" -m pip install --no-build-isolation --no-deps -v . "${defines[@]}" >>"$BUILD_LOG" 2>&1 || return 1
}

build() {
  : > "$BUILD_LOG"
  echo "  mode $BUILD_MODE, CUDA architectures ${CUDA_ARCH:-CMake default}, log $BUILD_LOG"
  local rc=0
  case "$BUILD_MODE" in
    cmake) build_cmake || rc=$? ;;
    pip) build_pip || rc=$? ;;
    *) echo "GPU_CHECK_BUILD must be cmake or pip, not $BUILD_MODE"; return 2 ;;
  esac
  if [ "$rc" -ne 0 ]; then
    echo "--- last 60 lines of $BUILD_LOG ---"
    tail -n 60 "$BUILD_LOG"
  fi
  return "$rc"
}

if [ "$BUILD_MODE" = cmake ]; then export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}; fi
if [ "$DO_BUILD" -eq 1 ]; then
  if ! run_phase "build ($BUILD_MODE, ACTZIP_CUDA=ON)" build; then
    write_phases "Build failed"
    finish
  fi
fi

backends() {
  "$PY" - <<'EOF'
import actzip
backends = actzip.backends()
print(f"actzip {actzip.__version__} from {actzip.__file__}: backends {backends}")
if "cuda" not in backends:
    raise SystemExit("actzip.backends() has no 'cuda': this build has no CUDA backend (was it built with "
                     "ACTZIP_CUDA=ON and did CMake find nvcc?); the GPU numbers would measure the CPU")
EOF
}
if ! run_phase "actzip.backends() has cuda" backends; then
  if [ "${GPU_CHECK_ALLOW_NO_CUDA_BACKEND:-0}" != 1 ]; then
    write_phases "No CUDA backend"
    finish
  fi
  # Asked to go on (to try the script before the backend exists): the run still fails.
  BENCH_ARGS=(--allow-missing-cuda-backend "${BENCH_ARGS[@]}")
fi

# --- tests -------------------------------------------------------------------------------
TEST_TIMEOUT_S=${GPU_CHECK_TEST_TIMEOUT_S:-180}
pytest_cuda() {
  local log=$LOG_DIR/gpu_check_pytest.log rc=0
  timeout "$TEST_TIMEOUT_S" "$PY" -m pytest -c pyproject.toml --rootdir . tests/python -q -m cuda \
    -p no:cacheprovider >"$log" 2>&1 || rc=$?
  tail -n 25 "$log"
  # pytest's closing line ("N passed, M skipped in T s") goes into the phase table.
  PHASE_NOTE=$(grep -E '(passed|failed|skipped|error|deselected|no tests ran)' "$log" | tail -n 1 | tr -d '=|' | sed 's/^ *//; s/ *$//')
  case "$rc" in
    0) return 0 ;;
    5) PHASE_NOTE="no test carries the cuda marker"; return 0 ;;
    124) echo "pytest ran past ${TEST_TIMEOUT_S} s"; return 124 ;;
    *) return "$rc" ;;
  esac
}
ctest_cpp() {
  local log=$LOG_DIR/gpu_check_ctest.log dir=$BUILD_DIR
  if [ "$BUILD_MODE" = pip ]; then
    dir=build/gpu-check-ctest
    cmake -S . -B "$dir" "${GENERATOR[@]}" "${CMAKE_FLAGS[@]}" -DACTZIP_BUILD_TESTS=ON -DACTZIP_PYTHON=OFF \
      >"$log" 2>&1 || { tail -n 40 "$log"; return 1; }
    cmake --build "$dir" -j "$(nproc)" >>"$log" 2>&1 || { tail -n 40 "$log"; return 1; }
  fi
  if [ ! -f "$dir/CTestTestfile.cmake" ]; then PHASE_NOTE="no C++ tests in $dir"; return 0; fi
  ctest --test-dir "$dir" --output-on-failure --timeout 120 -j "$(nproc)" >>"$log" 2>&1 || { tail -n 60 "$log"; return 1; }
  tail -n 3 "$log"
}
run_phase "pytest -m cuda" pytest_cuda || true
run_phase "ctest (C++ tests)" ctest_cpp || true
write_phases "Build and tests"

# --- benchmark ---------------------------------------------------------------------------
# Two processes, so that a crash in one part (a peer library, say) does not lose the other.
# Each gets its share of what is left of the budget, less a margin for the summary.
bench() {  # bench PARTS SHARE_PERCENT
  local left=$(( BUDGET_S - $(elapsed_s) - 15 ))
  local budget=$(( left * $2 / 100 ))
  if [ "$budget" -lt 45 ]; then budget=45; fi
  echo "  parts $1, budget ${budget} s"
  timeout --kill-after=15 $((budget + 45)) "$PY" benchmarks/bench_gpu.py --device cuda --out "$OUT_FILE" --append \
    --parts "$1" --budget-s "$budget" "${QUICK[@]}" "${BENCH_ARGS[@]}"
}
run_phase "benchmark: codec, cross-decoding, peers" bench codec,peers 50 || true
run_phase "benchmark: training step" bench training 100 || true
finish
