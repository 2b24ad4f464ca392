#!/usr/bin/env bash
# The one prepared GPU run: build in place, self-check, GPU tests, benchmarks. Writes at most 8
# files to OUT. Meant for a lent H100/H200 with ~15 minutes of device time: stays under ~8 minutes.
#
#   MK_GIT_COMMIT=$(git rev-parse HEAD) bash benchmarks/gpu_suite.sh OUT
#   MK_SUITE_STEPS="build tests bench_depthwise" bash benchmarks/gpu_suite.sh OUT   # a subset
#
# A 15-minute lease, as two calls on one warm machine (it stays warm only 30 s after a call: send
# the second at once; its in-place build is kept, so it names no build step). Next (run 8 timed
# the two depthwise fusions together only: V2's training step 7 ms slower with them, V3-Large's
# 3.6 ms faster; peak memory and host times clean since (bench model, core.host_ms); untimed since
# run 7 besides: batch_norm_act's CUDA passes, the SE
# excite GEMMs, the cached eval folds, the tensor-core block kernel, the expand + depthwise op's
# C++ autograd and the Triton twins' (host time per step: bench_model's host_ms), ...):
#   1. timeout_s 580: MK_SUITE_STEPS="build tests bench_model_switches bench_pw_dw summary"
#      MK_TESTS_LIMIT=120 (bench_model_switches: which of the two fusions costs V2 its 7 ms, eager
#      and from a CUDA graph; bench_pw_dw: at which blocks. Build: 178 s in run 8, less since the
#      C++ CPU kernels are left out (MK_SKIP_CPU_KERNELS, below); the tests step runs the CUDA
#      kernels' cases, test_pointwise_depthwise's first, which run 8 did not reach; the Triton
#      ones are tests_triton's)
#   2. the rest of the lease (status' budget_left_s) less ~30 s: MK_SUITE_STEPS="profile_v2 bench_model"
#      (profile_v2: V2's kernels with and without the fusions, side by side; bench_model: V3-Large
#      and V2, every mode, ours[cuda] with recompute and CUDA graphs; the
#      Triton rows are bench_model_triton's), then bench_se, bench_bn_train, bench_block,
#      profile_model, bench_b1_pw, diag_dw, host_layers, profile_infer, large_tensors, sanitize and
#      hbm_bytes in later leases.
# Run 8 (an H200 at 580fb9b) took ~45 s to start, 178 s to build, 140 s for the tests (cut off:
# 915 passed, 0 failed) and more than 170 s for bench_model with the cuda and triton backends (killed
# in the Triton rows' compilation, no row written: results are now written after every row):
# benchmarks/results/gpu_tests_run8_h200.json. A model row at 40 ms of do_bench timed one step:
# model rows now time at least 10.
# Steps, in the order they run: build check tests tests_triton tests_optin sanitize large_tensors diag_dw ncu_dw bench_se bench_bn_eval
# bench_bn_train bench_depthwise bench_dw_bn bench_pw bench_pw_fused ncu_pw bench_pw_dw bench_block profile_model profile_v2 profile_infer host_layers hbm_bytes
# bench_model bench_model_triton bench_model_switches bench_b1_pw loss_curves diag summary. MK_LIMIT_<step>=SECONDS overrides a step's time limit.
# (default: all but the opt-in sanitize, large_tensors, bench_dw_bn, bench_pw, bench_pw_fused, ncu_pw, bench_block,
# profile_model, profile_infer, host_layers, hbm_bytes, bench_model, bench_model_triton, bench_model_switches, bench_pw_dw, profile_v2, bench_b1_pw and loss_curves: name them in MK_SUITE_STEPS; bench_model alone
# takes ~2.5 minutes).
# profile_model (90 s): where a V3-Large training step's time goes (batch 128, bf16 AMP,
# channels_last), torchvision eager against ours[cuda]: wall, host and GPU-kernel ms per step,
# launches, the GPU's idle share, ms per kernel category, the top kernels. diag_dw times
# the depthwise forward, weight gradient and backward per layer with the default kernels
# (MK_DW_TILED=0) and with the shared-memory tiled kernels (MK_DW_TILED=1, the default), against cuDNN, directly and through the functional API (OUT/diag_depthwise.json, with each row's
# largest differences from cuDNN); ncu_dw (2 x 50 s + 40 s) profiles one launch per layer of cuDNN's
# forward and of our default and tiled kernels with ncu when ncu is there, then the tiled forward's
# stall reasons (reports in suite.log).
# tests_optin (90 s) runs the depthwise and pointwise ops' CUDA tests again with the other kernels:
# MK_DW_TILED=0 (the default depthwise kernels, which the tiled ones replace where they apply) and
# MK_PW_FUSED=1 (the opt-in tensor-core pointwise GEMM with its epilogue, csrc/cuda/pointwise_gemm.cuh).
# One lease call is at most 10 minutes: name a subset of steps that fits (each step's limit is below).
# bench_pw (60 s): pointwise_conv2d over the 1x1 convs of V3-Large and V2 (expand/project, BN folded;
# bias + activation + residual in the GEMM's epilogue), batch 256 at 224², bf16 channels_last, forward
# and forward+backward, against eager and torch.compile default; bench_pw_fused (60 s) the same with
# MK_PW_FUSED=1 and no torch.compile rows (its JSON records the switch; compare the two files' "ours"
# rows); ncu_pw (90 s)
# profiles the first 16 launches of our pointwise GEMM over V2's 1x1 convs (report in suite.log).
# bench_block (90 s): inverted_residual_eval over the blocks of V3-Large (squeeze-excite ones
# included: two passes of the block kernel) and V2, batch 1 and 256, bf16 channels_last, forward
# under no_grad: each backend's whole-block kernel against the same backend op by op (cuda_ops,
# triton_ops: what the models run otherwise) and the eager op-by-op block; no torch.compile rows
# (each shape compiles for seconds, which the 90 s would spend on them; bench_model has the
# model-level compile rows). Its rows carry the block's bytes and the op-by-op bytes (MB, unfused_MB); when the
# limit cuts it off, the rows measured so far are kept.
# loss_curves: issue 7's bf16 training curves, ours against eager within the seeds' noise (below).
# bench_model: V3-Large and V2, training at batch 256 and inference at 1 and 256, 224², bf16 AMP,
# channels_last, torchvision eager against ours on the cuda and triton backends, with recompute, and
# each variant's step also replayed from a CUDA graph (--cuda-graph: the GPU's time without the
# host's launch work; no torch.compile: compiling whole models does not fit the lease; `bench model`
# does it by default).
# Files: suite.log, suite_<gpu>.json, one JSON per benchmark (at most 7) and diag_depthwise.json; the
# benchmarks' markdown tables go into one tables.tar: 8 files with the default steps, one more per
# opt-in benchmark (with the opt-in ones, run a subset to stay within 8).
# The tests step runs the CUDA-device cases only (MK_TEST_DEVICE=cuda; CI runs the CPU ones), with
# one line per test in suite.log so a run cut off by its limit still shows what failed.
# Result names carry the card (h100, h200) read off the device. A benchmark cut off by its time
# limit still writes the rows it measured (marked "interrupted"). Benchmarks use a shorter do_bench
# (MK_BENCH_WARMUP_MS/MK_BENCH_REP_MS) than the defaults, to fit the lease.
#
# Works on a CPU-only box too (the GPU cases skip), which is how it is checked before a GPU run.
set -uo pipefail
OUT=${1:?usage: gpu_suite.sh OUT}
# Triton launch tuning (mobilenet_kernels/triton/_tuning.py) compiles and times every candidate
# config at the first call per shape: seconds per shape, which the lease cannot spare across the
# tests' and benchmarks' many shapes. Off unless asked for (MK_TRITON_TUNE=1); the results record it.
export MK_TRITON_TUNE=${MK_TRITON_TUNE:-0}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
# The steps import the package from this checkout also where no step installs it (a warm machine's
# second call skips the build: its in-place build is still there).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MK_GIT_COMMIT=${MK_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
export MK_BENCH_WARMUP_MS=${MK_BENCH_WARMUP_MS:-10} MK_BENCH_REP_MS=${MK_BENCH_REP_MS:-40}
STEPS=" ${MK_SUITE_STEPS:-build check diag tests tests_triton tests_optin diag_dw ncu_dw bench_se bench_bn_eval bench_bn_train bench_depthwise summary} "
PY=${PYTHON:-$(command -v python3 || command -v python)}
JUNIT=$(mktemp -d)/pytest.xml  # summarised into suite_<gpu>.json; the failures' text is in suite.log
JUNIT_TRITON=${JUNIT%.xml}_triton.xml
status=0

want() { [[ "$STEPS" == *" $1 "* ]]; }

step() {  # step NAME TIMEOUT_S CMD...: run with a time limit, log to OUT/suite.log, remember failures
  local name=$1 limit=$2; shift 2
  want "$name" || return 0
  local override="MK_LIMIT_$name"; limit=${!override:-$limit}  # e.g. MK_LIMIT_bench_model=120
  echo "=== $name ($(date -u +%T))" | tee -a "$OUT/suite.log"
  # SIGINT first: pytest then still prints its failures and writes the junit file, a benchmark
  # keeps the rows it measured; a step that ignores it is killed 20 s later.
  timeout -s INT -k 20 "$limit" "$@" >>"$OUT/suite.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc ($(date -u +%T))" | tee -a "$OUT/suite.log"
  [ $rc -eq 0 ] || status=1
  return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv >>"$OUT/suite.log" 2>&1
# A build cut off wastes the lease: run 8's took 178 s (16 cores). On a GPU the C++ CPU kernels are left out (MK_SKIP_CPU_KERNELS=1): no
# step here runs them (the tests step runs the CUDA-device cases only), and they were ~60 % of the
# build's compile time on the CPU box (ninja's log of a two-arch build: csrc/cpu 1816 s of 3164).
# MK_SKIP_CPU_KERNELS=0 builds them, then without their AVX2 clones (MK_NO_AVX2_CLONES=1: a
# depthwise forward unit 27 % less compile time). On the CPU check they are built: its steps run them.
# MK_BUILD_LOG: ninja's log, whose slowest units (the build's critical path at 16 jobs: what to
# split next) go to suite.log.
NINJA_LOG=$(mktemp)
SKIP_CPU=${MK_SKIP_CPU_KERNELS:-$(nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)}
step build 330 env MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MK_NO_AVX2_CLONES=1 \
  MK_SKIP_CPU_KERNELS=$SKIP_CPU MK_BUILD_LOG="$NINJA_LOG" $PY -m pip install --no-build-isolation --no-deps -e . || { tail -40 "$OUT/suite.log"; exit 1; }
if want build && [ -s "$NINJA_LOG" ]; then
  echo "slowest build units (s, start s):" >>"$OUT/suite.log"
  awk '!/^#/ {n = split($4, p, "/"); printf "  %6.1f %6.1f %s/%s\n", ($2 - $1) / 1000, $1 / 1000, p[n - 1], p[n]}' "$NINJA_LOG" |
    sort -rn | head -12 >>"$OUT/suite.log"
fi
GPU_TAG=${MK_GPU_TAG:-$($PY -c "
import re, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'
m = re.search(r'([A-Z]\d{2,4})', name)
print(m.group(1).lower() if m else 'cpu')" 2>/dev/null || echo unknown)}
echo "gpu tag: $GPU_TAG" | tee -a "$OUT/suite.log"

step check 45 $PY -m mobilenet_kernels check
PYTEST_ARGS=(-v --tb=short -rfE -p no:cacheprovider)
$PY -c "import xdist" 2>/dev/null && PYTEST_ARGS+=(-n 12)
$PY -c "import pytest_timeout" 2>/dev/null && PYTEST_ARGS+=(--timeout=90)
# The tests in the order they matter, in case the limit cuts the step off (xdist hands them out
# in this order): the kernels' parity first, the bad-input cases (many and cheap) last.
FIRST="pointwise_depthwise depthwise_conv2d pointwise_conv2d inverted_residual_eval inverted_residual batch_norm_act squeeze_excite
  models convert properties determinism large_tensors memory checkpoints"
TEST_FILES=()
for t in $FIRST; do TEST_FILES+=("python_tests/test_$t.py"); done
for f in python_tests/test_*.py; do [[ " ${TEST_FILES[*]} " == *" $f "* ]] || TEST_FILES+=("$f"); done
# The CUDA kernels' cases first (what the models run on a GPU by default), the Triton ones in a
# step of their own: on a GPU each Triton case JIT-compiles its kernels (up to a minute a case:
# run 8's tests step, cut off at 140 s, reached 11 of test_pointwise_depthwise's 50 cases).
step tests ${MK_TESTS_LIMIT:-200} env MK_TEST_DEVICE=cuda $PY -m pytest "${TEST_FILES[@]}" "${PYTEST_ARGS[@]}" \
  -k "not triton" --durations=20 --junitxml="$JUNIT"
step tests_triton ${MK_TESTS_TRITON_LIMIT:-200} env MK_TEST_DEVICE=cuda $PY -m pytest "${TEST_FILES[@]}" \
  "${PYTEST_ARGS[@]}" -k triton --durations=20 --junitxml="$JUNIT_TRITON"
step tests_optin ${MK_TESTS_OPTIN_LIMIT:-90} env MK_TEST_DEVICE=cuda MK_DW_TILED=0 MK_PW_FUSED=1 $PY -m pytest \
  python_tests/test_depthwise_conv2d.py python_tests/test_pointwise_conv2d.py \
  python_tests/test_large_tensors.py::test_depthwise_conv2d \
  python_tests/test_large_tensors.py::test_depthwise_conv2d_bn_act_train "${PYTEST_ARGS[@]}" -k "cuda and not triton"
# sanitize (300 s): python_tests/gpu/sanitize.sh (compute-sanitizer memcheck, then racecheck, over
# a few CUDA-device tests per op; MK_SANITIZE_TOOLS / MK_SANITIZE_LIMIT per run), its summary in
# suite.log. large_tensors (200 s): the >2^31-element cases (-m large_tensors, one process).
step sanitize 300 env MK_SANITIZE_LIMIT=${MK_SANITIZE_LIMIT:-120} bash python_tests/gpu/sanitize.sh "$(mktemp -d)"
step large_tensors 200 env MK_TEST_DEVICE=cuda $PY -m pytest python_tests/test_large_tensors.py -m large_tensors \
  -v --tb=short -rfE -p no:cacheprovider
step diag_dw 60 env MK_DW_TILED=0 $PY benchmarks/diag_depthwise.py "$OUT"
step diag_dw 60 env MK_DW_TILED=1 $PY benchmarks/diag_depthwise.py "$OUT"
step diag_dw 60 env MK_DW_TILED=1 MK_DW_STAGES=1 $PY benchmarks/diag_depthwise.py "$OUT"  # one staging buffer
# ncu_dw: what limits each depthwise kernel (issue 4). Two profiles of one launch per layer: the
# forward by cuDNN and by our default kernels (MK_DW_TILED=0), then our forward and backward with
# the tiled kernels (the default); cuDNN's kernel names vary by version, hence the
# broad name filter. Reports in suite.log.
NCU_DW=(ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats
  --section MemoryWorkloadAnalysis -k "regex:conv|depthwise|tiled|xmma|cutlass|cudnn|nhwc" -c 24)
if command -v ncu >/dev/null; then
  step ncu_dw 50 env MK_DW_TILED=0 "${NCU_DW[@]}" $PY benchmarks/diag_depthwise.py "$OUT" --ncu \
    --variants cudnn cuda_op
  step ncu_dw 50 "${NCU_DW[@]}" $PY benchmarks/diag_depthwise.py "$OUT" --ncu --variants cuda_op cuda_bwd
  # the tiled forward's stall reasons (run 5 had WarpStateStats' summary only) and instruction count
  step ncu_dw 40 ncu --clock-control none -k regex:fwd_tiled -c 6 \
    --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__inst_executed.sum" \
    $PY benchmarks/diag_depthwise.py "$OUT" --ncu --variants cuda_op
fi
step bench_se 90 $PY benchmarks/bench_squeeze_excite.py --quiet --no-autotune --out "$OUT" --name "squeeze_excite_${GPU_TAG}"
BN=($PY benchmarks/bench_batch_norm_act.py --quiet --no-autotune --dtype bfloat16 --layout nhwc --out "$OUT")
step bench_bn_eval 80 "${BN[@]}" --name "batch_norm_act_eval_${GPU_TAG}"
step bench_bn_train 80 "${BN[@]}" --training --name "batch_norm_act_train_${GPU_TAG}"
if [ -f benchmarks/bench_depthwise.py ]; then
  step bench_depthwise 150 env MK_BENCH_GRAPH=1 $PY benchmarks/bench_depthwise.py --quiet --no-autotune --no-compile-conv --layout nhwc --out "$OUT" --name "depthwise_${GPU_TAG}"
fi
# bench_dw_bn (60 s, opt-in): the dw conv + BatchNorm + activation training op alone (forward +
# backward) over V3-Large's and V2's depthwise layers, batch 256 bf16 channels_last, no
# torch.compile rows: ours with the fused backward (BatchNorm's grad_input computed inside the
# conv's backward) against the unfused sequence in the same process (the <backend>_bn_unfused
# columns, MK_DW_BN_FUSED=0 around the call), and eager: decides MK_DW_BN_FUSED's default.
step bench_dw_bn 60 env MK_BENCH_GRAPH=1 $PY benchmarks/bench_depthwise.py --quiet --no-compile --op conv_bn_act_train \
  --layout nhwc --backends cuda --out "$OUT" --name "depthwise_bn_${GPU_TAG}"
step bench_pw 60 $PY benchmarks/bench_pointwise_conv2d.py --quiet --no-autotune --out "$OUT" \
  --name "pointwise_conv2d_${GPU_TAG}"
step bench_pw_fused 60 env MK_PW_FUSED=1 $PY benchmarks/bench_pointwise_conv2d.py --quiet --no-autotune --no-compile --out "$OUT" \
  --name "pointwise_conv2d_fused_${GPU_TAG}"
if command -v ncu >/dev/null && want ncu_pw; then
  timeout 90 env MK_PW_FUSED=1 ncu --clock-control none --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section MemoryWorkloadAnalysis -k regex:pointwise_gemm_kernel -c 16 $PY benchmarks/bench_pointwise_conv2d.py \
    --quiet --no-compile --mode forward --models mobilenet_v2 --out "$(mktemp -d)" >>"$OUT/suite.log" 2>&1
  echo "=== ncu_pw rc=$? (its report is in suite.log)" | tee -a "$OUT/suite.log"
fi
# bench_pw_dw (60 s, opt-in): pointwise_depthwise_bn_act_train (expand + depthwise layers in
# training) over V2's and V3-Large's blocks with an expand conv, batch 256 bf16 channels_last,
# forward and forward + backward, ours[cuda] in each setting of its fusion switches against eager
# (bench_pointwise_depthwise.py): which fusion gains or loses at which block.
step bench_pw_dw 60 $PY benchmarks/bench_pointwise_depthwise.py --quiet --no-compile --backends cuda \
  --models mobilenet_v2 mobilenet_v3_large --out "$OUT" --name "pointwise_depthwise_${GPU_TAG}"
step bench_block 90 $PY benchmarks/bench_inverted_residual.py --quiet --no-compile --out "$OUT" \
  --name "inverted_residual_${GPU_TAG}"
PROFILE_ARGS=()
[ "$GPU_TAG" = cpu ] && PROFILE_ARGS=(--device cpu --batch 2 --size 32 --dtype float32)  # the CPU check
step profile_model 90 $PY benchmarks/profile_model.py "$OUT" --name "profile_model_${GPU_TAG}" --backends cuda \
  "${PROFILE_ARGS[@]}"
# profile_v2 (2 x 60 s, opt-in): profile_model on V2's training step (GPU-bound in run 8),
# with the depthwise fusions (the default) and with both switched off: which kernels take the
# 7 ms that run 8 found the fusions cost V2 (their top kernels and categories side by side).
V2_ARGS=(--model mobilenet_v2)
[ "$GPU_TAG" = cpu ] && V2_ARGS+=(--device cpu --batch 2 --size 32 --dtype float32)  # the CPU check
step profile_v2 60 $PY benchmarks/profile_model.py "$OUT" --name "profile_v2_${GPU_TAG}" --backends cuda "${V2_ARGS[@]}"
step profile_v2 60 env MK_DW_INPUT_BN=0 MK_DW_BN_FUSED=0 $PY benchmarks/profile_model.py "$OUT" \
  --name "profile_v2_unfused_${GPU_TAG}" --backends cuda "${V2_ARGS[@]}"
# profile_infer (60 s): the same for a V3-Large inference at batch 256 (eval, no_grad): where the
# inference's GPU time goes, for issue 7's batch-256 target.
INFER_ARGS=(--batch 256)
[ "$GPU_TAG" = cpu ] && INFER_ARGS=(--device cpu --batch 1 --size 32 --dtype float32)  # the CPU check
step profile_infer 60 $PY benchmarks/profile_model.py "$OUT" --name "profile_infer_${GPU_TAG}" --backends cuda \
  --mode infer "${INFER_ARGS[@]}"
# host_layers (60 s): host and GPU time per call of each V3-Large layer (features[i], the head),
# torchvision against ours[cuda], a training and an inference call at batch 8, 64², bf16 AMP
# (benchmarks/bench_host.py): which layers of ours cost the host more. (ours[triton] would JIT-compile
# every layer's kernels first: tens of seconds the lease cannot spare.)
HOST_ARGS=(--backends cuda)
[ "$GPU_TAG" = cpu ] && HOST_ARGS=(--device cpu --size 32 --batch 2 --backends cuda)  # the CPU check
step host_layers 60 $PY benchmarks/bench_host.py "$OUT" --name "host_layers_${GPU_TAG}" --quiet "${HOST_ARGS[@]}"
# hbm_bytes (150 s): issue 7's HBM bytes per image of a bf16 inference at batch 32 (V2, V3-Large):
# the byte model (mobilenet_kernels/benchmarking/hbm.py) against ncu's DRAM bytes of one forward,
# for torchvision, ours op by op and ours with the CUDA and the Triton whole-block kernels (one ncu
# child per variant; without ncu, the model only).
step hbm_bytes 150 $PY benchmarks/hbm_bytes.py "$OUT" --name "hbm_bytes_${GPU_TAG}"
MODEL_BACKENDS=(cuda triton)
GRAPH_ARGS=(--cuda-graph)  # every step also replayed from a CUDA graph (graph_inference, graph_train_step)
[ "$GPU_TAG" = cpu ] && MODEL_BACKENDS=(cuda) && GRAPH_ARGS=()  # (the CPU check: Triton needs the interpreter there)
step bench_model 170 $PY -m mobilenet_kernels bench model --model mobilenet_v3_large mobilenet_v2 \
  --compile none --backend cuda --recompute "${GRAPH_ARGS[@]}" --quiet --out "$OUT" --name "models_${GPU_TAG}"
# bench_model_triton (150 s, opt-in): bench_model's rows for ours[triton] (each model's first step
# JIT-compiles every Triton kernel it runs: tens of seconds; run 8's bench_model spent its 170 s on
# the two backends and wrote nothing). On the CPU check, the cuda backend's rows again.
step bench_model_triton 150 $PY -m mobilenet_kernels bench model --model mobilenet_v3_large mobilenet_v2 \
  --compile none --backend "${MODEL_BACKENDS[@]: -1}" "${GRAPH_ARGS[@]}" --quiet --out "$OUT" \
  --name "models_triton_${GPU_TAG}"
# bench_model_switches (150 s, opt-in): V2's and V3-Large's training steps, ours[cuda] in each
# setting of the depthwise fusions' switches (both on, the default; MK_DW_INPUT_BN=0; MK_DW_BN_FUSED=0;
# both off), each also replayed from a CUDA graph (the GPU's time, whether or not the eager step is
# host-bound), in one process against one torchvision row (`bench model --switches`): run 8 found
# the two fusions together 7 ms slower on V2 and 3.6 ms faster on V3-Large; this says
# which fusion, and bench_pw_dw at which blocks. Decides both switches' defaults.
step bench_model_switches 150 $PY -m mobilenet_kernels bench model --model mobilenet_v2 mobilenet_v3_large \
  --mode train --compile none --backend cuda "${GRAPH_ARGS[@]}" --quiet --out "$OUT" --name "models_switches_${GPU_TAG}" \
  --switches MK_DW_INPUT_BN=0 MK_DW_BN_FUSED=0 MK_DW_INPUT_BN=0,MK_DW_BN_FUSED=0
# bench_b1_pw (2 x 60 s, opt-in): batch-1 inference of V3-Large and V2 on the cuda backend (eager
# and from a CUDA graph), once as shipped and once with MK_PW_FUSED=auto (our tensor-core GEMM for
# the small 1x1 convs: one kernel and no aten::mm call each), to decide auto's default.
step bench_b1_pw 60 $PY -m mobilenet_kernels bench model --model mobilenet_v3_large mobilenet_v2 --mode infer \
  --batch 1 --compile none --backend cuda "${GRAPH_ARGS[@]}" --quiet --out "$OUT" --name "models_b1_${GPU_TAG}"
step bench_b1_pw 60 env MK_PW_FUSED=auto $PY -m mobilenet_kernels bench model --model mobilenet_v3_large \
  mobilenet_v2 --mode infer --batch 1 --compile none --backend cuda "${GRAPH_ARGS[@]}" --quiet --out "$OUT" \
  --name "models_b1_pwauto_${GPU_TAG}"
# loss_curves (150 s, opt-in): V3-Large trained 200 steps (batch 64, 128², bf16, 3 seeds) by
# torchvision eager and by ours on each backend from the same weights and batches; JSON + table + plot.
step loss_curves 150 $PY benchmarks/loss_curves.py "$OUT" --name "loss_curves_${GPU_TAG}" \
  --backends "${MODEL_BACKENDS[@]}"
# Last of the steps: a crashing case's rerun under cuda-gdb can take most of its limit.
step diag 150 $PY benchmarks/check_cpp_exceptions.py
if want summary; then
  $PY benchmarks/suite_summary.py "$JUNIT" "$JUNIT_TRITON" "$OUT/suite_${GPU_TAG}.json" | tee -a "$OUT/suite.log"
fi
if ls "$OUT"/*.md >/dev/null 2>&1; then
  (cd "$OUT" && tar -cf tables.tar ./*.md && rm -f ./*.md)
fi
tail -30 "$OUT/suite.log"
exit $status
