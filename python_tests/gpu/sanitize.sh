#!/usr/bin/env bash
# compute-sanitizer over a few CUDA-device tests per op: memcheck (out-of-bounds and misaligned
# accesses, in the C++/CUDA and the Triton kernels) and racecheck (shared-memory hazards).
#
#   bash python_tests/gpu/sanitize.sh [LOG_DIR]
#
# Runs pytest with MK_TEST_DEVICE=cuda (the CUDA-device cases only) on a -k selection per op:
# forward, backward, training and empty-batch cases of batch_norm_act, depthwise_conv2d (alone,
# its statistics, fused with BN + act) and squeeze_excite on the "cuda" and "triton" backends, the
# whole-block kernels (bf16: the tensor-core kernel; squeeze-excite blocks: both passes), plus
# the direct kernel-op bad-argument cases (the checks must reject them before any launch). Each run
# is `compute-sanitizer --tool TOOL --error-exitcode 1 --report-api-errors no python -m pytest ...`
# (API errors are off: PyTorch probes the driver with calls that are meant to fail) with
# PYTORCH_NO_CUDA_MEMORY_CACHING=1, so that every tensor is its own allocation and an access past
# its end is not hidden inside a cached block. One log per run goes to LOG_DIR (default: a new
# temporary directory); a summary table is printed at the end.
#
# Exit status: 0 when every run is clean (no sanitizer error, every selected test passed), 1 when
# any run reported an error, failed a test or hit its time limit, 2 when there is a GPU but no
# compute-sanitizer. On a machine without a GPU it only says so and exits 0 (nothing is run).
#
# Knobs: PYTHON (interpreter), COMPUTE_SANITIZER (path to the binary), MK_SANITIZE_LIMIT (seconds
# per run, default 600), MK_SANITIZE_TOOLS (default "memcheck racecheck").
set -uo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-$(command -v python3 || command -v python)}
LIMIT=${MK_SANITIZE_LIMIT:-600}
TOOLS=${MK_SANITIZE_TOOLS:-memcheck racecheck}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "sanitize.sh: no CUDA GPU visible on this machine: nothing to sanitize, exiting 0"
  exit 0
fi

find_sanitizer() {
  if [ -n "${COMPUTE_SANITIZER:-}" ] && [ -x "$COMPUTE_SANITIZER" ]; then
    echo "$COMPUTE_SANITIZER"
    return 0
  fi
  if command -v compute-sanitizer >/dev/null 2>&1; then
    command -v compute-sanitizer
    return 0
  fi
  local dir
  for dir in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-* /opt/cuda; do
    [ -n "$dir" ] || continue
    for candidate in "$dir/bin/compute-sanitizer" "$dir/compute-sanitizer/compute-sanitizer"; do
      if [ -x "$candidate" ]; then
        echo "$candidate"
        return 0
      fi
    done
  done
  # the nvidia-cuda-sanitizer-api pip wheels ship the binary inside site-packages/nvidia
  "$PY" - <<'EOF' 2>/dev/null
import os, site, sys
roots = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(os.path.join(p, "nvidia"))]
for root in roots:
    for dirpath, _, files in os.walk(os.path.join(root, "nvidia")):
        if "compute-sanitizer" in files:
            path = os.path.join(dirpath, "compute-sanitizer")
            if os.access(path, os.X_OK):
                print(path)
                sys.exit(0)
sys.exit(1)
EOF
}

SANITIZER=$(find_sanitizer) || SANITIZER=""
if [ -z "$SANITIZER" ]; then
  echo "sanitize.sh: a GPU is visible but compute-sanitizer was not found (looked at \$COMPUTE_SANITIZER, PATH," \
       "\$CUDA_HOME, /usr/local/cuda*, and the nvidia pip wheels): install the CUDA toolkit's compute-sanitizer" >&2
  exit 2
fi

LOG_DIR=${1:-$(mktemp -d -t mk_sanitize.XXXXXX)}
mkdir -p "$LOG_DIR"
echo "sanitize.sh: $("$SANITIZER" --version 2>/dev/null | tail -1)"
echo "sanitize.sh: GPU $("$PY" -c 'import torch; print(torch.cuda.get_device_name())' 2>/dev/null); logs in $LOG_DIR"

export MK_TEST_DEVICE=cuda PYTORCH_NO_CUDA_MEMORY_CACHING=1

# label|test file|-k expression. Kernel backends only ("not torch]": the reference backend runs
# PyTorch's own kernels); a few activations and layouts per op, to keep the sanitized runs short.
MEMCHECK_RUNS=(
  "bn-eval|python_tests/test_batch_norm_act.py|(test_forward_fp32_matches_reference or test_backward_fp32_matches_reference) and hardswish and not torch]"
  "bn-train|python_tests/test_batch_norm_act.py|(test_training_fp32_matches_reference and hardswish or test_empty_batch or test_training_empty_batch) and not torch]"
  "dw|python_tests/test_depthwise_conv2d.py|(test_forward_fp32_matches_reference or test_backward_fp32_matches_reference) and relu6 and not torch]"
  "dw-stats-fused|python_tests/test_depthwise_conv2d.py|(test_stats_are_those_of_the_stored_output or test_fused_training_matches_unfused and hardswish or test_fused_eval_matches_unfused and relu6 or test_empty_batch) and not torch]"
  "dw-bn-backward|python_tests/test_depthwise_conv2d.py|test_fused_training_backward_is_the_unfused_sequence and relu6 and not triton"
  "pw-dw-train|python_tests/test_pointwise_depthwise.py|test_is_the_per_layer_ops_bit_for_bit and not triton"
  "se|python_tests/test_squeeze_excite.py|((test_forward_fp32_matches_torchvision or test_backward_fp32_matches_reference) and acts0 or test_empty_batch) and not torch]"
  "ir-block|python_tests/test_inverted_residual_eval.py|(test_low_precision_error_within_2x_torch and dtype1 and channels_last or test_se_blocks_low_precision_error_within_2x_torch and dtype1 or test_se_blocks_match_op_by_op_reference and dtype1 and channels_last) and not torch]"
  "bad-inputs|python_tests/test_bad_inputs.py|test_kernel_op_called_directly_rejects_bad_argument or test_empty_batch_forward_and_backward and not torch]"
)
# racecheck is 10-100x slower than memcheck: channels_last only, fewer cases.
RACECHECK_RUNS=(
  "bn|python_tests/test_batch_norm_act.py|(test_backward_fp32_matches_reference or test_training_fp32_matches_reference) and hardswish and channels_last and not torch]"
  "dw|python_tests/test_depthwise_conv2d.py|(test_backward_fp32_matches_reference and relu6 or test_fused_training_matches_unfused and hardswish) and channels_last and not torch]"
  "dw-bn-backward|python_tests/test_depthwise_conv2d.py|test_fused_training_backward_is_the_unfused_sequence and hardswish and dtype1 and channels_last and not triton"
  "pw-dw-train|python_tests/test_pointwise_depthwise.py|test_is_the_per_layer_ops_bit_for_bit and dtype1 and channels_last and not triton"
  "se|python_tests/test_squeeze_excite.py|test_backward_fp32_matches_reference and acts0 and channels_last and not torch]"
  "ir-block|python_tests/test_inverted_residual_eval.py|test_se_blocks_low_precision_error_within_2x_torch and dtype1 and cuda]"
)

SUMMARY=()
status=0

run() {  # run TOOL LABEL FILE EXPR
  local tool=$1 label=$2 file=$3 expr=$4
  local log="$LOG_DIR/${tool}_${label}.log"
  local extra=()
  [ "$tool" = racecheck ] && extra=(--racecheck-report analysis)
  echo "=== $tool $label: $file -k '$expr'"
  timeout "$LIMIT" "$SANITIZER" --tool "$tool" --error-exitcode 1 --report-api-errors no ${extra[@]+"${extra[@]}"} \
    "$PY" -m pytest "$file" -q -p no:cacheprovider -k "$expr" >"$log" 2>&1
  local rc=$?
  local sanitizer_line pytest_line
  sanitizer_line=$(grep -E "(ERROR|RACECHECK) SUMMARY" "$log" | tail -1)
  # pytest's own summary ("3 passed, 9 deselected in 4.2s"), not the sanitizer's "========= ERROR
  # SUMMARY: 0 errors", which also names a count of errors and comes after it
  pytest_line=$(grep -vE "^=========( |$)" "$log" | grep -E "[0-9]+ (passed|failed|errors?|skipped|deselected).* in [0-9.]+s" | tail -1)
  local verdict=ok
  if [ $rc -eq 124 ]; then
    verdict="TIMEOUT (${LIMIT}s)"
  elif [ $rc -ne 0 ]; then
    verdict="FAIL (rc=$rc)"
  elif ! echo "$pytest_line" | grep -qE "[0-9]+ passed"; then
    verdict="FAIL (no test ran)"  # a -k selection that matches nothing checks nothing
    rc=1
  fi
  [ $rc -eq 0 ] || status=1
  SUMMARY+=("$(printf '%-10s %-15s %-18s %-45s %s' "$tool" "$label" "$verdict" "${sanitizer_line:-no sanitizer summary}" "${pytest_line:-no pytest summary}")")
  if [ "$verdict" != ok ]; then
    grep -E "^=+ (Invalid|Race|Error|.*hazard)|^=+ +at |Error:|FAILED" "$log" | head -20
  fi
}

for tool in $TOOLS; do
  case $tool in
    memcheck) runs=("${MEMCHECK_RUNS[@]}") ;;
    racecheck) runs=("${RACECHECK_RUNS[@]}") ;;
    *) echo "sanitize.sh: unknown tool '$tool' in MK_SANITIZE_TOOLS" >&2; exit 2 ;;
  esac
  for spec in "${runs[@]}"; do
    IFS='|' read -r label file expr <<<"$spec"
    run "$tool" "$label" "$file" "$expr"
  done
done

echo
echo "=== compute-sanitizer summary (logs: $LOG_DIR)"
printf '%-10s %-15s %-18s %-45s %s\n' tool run verdict sanitizer pytest
for line in ${SUMMARY[@]+"${SUMMARY[@]}"}; do
  echo "$line"
done
if [ $status -eq 0 ]; then
  echo "sanitize.sh: clean"
else
  echo "sanitize.sh: errors found (see the logs above)" >&2
fi
exit $status
