#!/usr/bin/env bash
# The one prepared GPU run: build in place, self-check, GPU tests, benchmarks. Writes at most 8
# files to OUT. Meant for a lent H100 with ~15 minutes of device time: stays under ~8 minutes.
#
#   MK_GIT_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_suite.sh OUT
#
# Works on a CPU-only box too (the GPU cases skip), which is how it is checked before a GPU run.
set -uo pipefail
OUT=${1:?usage: gpu_suite.sh OUT}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export MK_GIT_COMMIT=${MK_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
GPU_TAG=${MK_GPU_TAG:-h100}
status=0

step() {  # step NAME TIMEOUT_S CMD...: run with a time limit, log to OUT/suite.log, remember failures
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%T))" | tee -a "$OUT/suite.log"
  timeout "$limit" "$@" >>"$OUT/suite.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc" | tee -a "$OUT/suite.log"
  [ $rc -eq 0 ] || status=1
  return $rc
}

step build 240 env MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
  pip install --no-build-isolation --no-deps -e . || { tail -40 "$OUT/suite.log"; exit 1; }
step check 60 python -m mobilenet_kernels check
cp "$OUT/suite.log" "$OUT/check.txt"
step tests 200 python -m pytest python_tests -q -p no:cacheprovider --junitxml="$OUT/pytest.xml"
step bench_batch_norm_act_eval 120 python benchmarks/bench_batch_norm_act.py --quiet --no-autotune \
  --out "$OUT" --name "batch_norm_act_eval_${GPU_TAG}"
step bench_batch_norm_act_train 120 python benchmarks/bench_batch_norm_act.py --training --quiet --no-autotune \
  --out "$OUT" --name "batch_norm_act_train_${GPU_TAG}"
python benchmarks/suite_summary.py "$OUT/pytest.xml" "$OUT/foundation_${GPU_TAG}.json" | tee -a "$OUT/suite.log"
tail -25 "$OUT/suite.log"
exit $status
