// inverted_residual_eval, CUDA (sm_80+): a whole MobileNet inverted-residual block in eval mode with
// every BatchNorm folded in (checks and geometry: csrc/inverted_residual.h). The CUDA twin of the
// Triton kernel (mobilenet_kernels/triton/inverted_residual.py), the same algorithm (a tile of
// output pixels x all output channels, hidden channels in chunks); here the expanded tile lives in
// shared memory instead of a cached scratch, tiles shrink as the output channels grow (the
// register budget of the project accumulators), and the expanded tensor is rounded as stored.
//
// What is fused: y = project(act(dw(act(expand(x) + b_e)) + b_d)) + b_p [+ x]: the 1x1 expand GEMM
//   with its bias and activation, the k x k depthwise conv (stride, dilation, "same" zero padding)
//   with its bias and activation, the 1x1 project GEMM with its bias, and the residual add. The
//   expanded tensor (t times the input's channels) and the depthwise output never reach HBM: per
//   image, the input is read about once (plus the halo rows) and the output written once.
// Structure: one block of 256 threads per tile of TH x TW output pixels of one image and all the
//   output channels; it walks the hidden channels in chunks of kBH = 32:
//     1. expand: the tile's input halo, ((TH - 1) s + (k - 1) d + 1) rows by as many columns
//        (HN <= kMaxHalo pixels), times the chunk's rows of W_e, kBK input channels at a time
//        staged in shared memory (x halo and W_e^T slices); each thread holds up to 8 halo pixels
//        x 4 hidden channels in registers (only the rows the halo has are computed). Then + b_e,
//        act, rounded to the input dtype (as the op-by-op path stores the expanded tensor), into
//        the shared halo tile E. Halo pixels
//        outside the image are 0: the dw conv's zero padding (not act(b_e)). Without an expand
//        conv, E is the input's halo itself.
//     2. depthwise: a thread owns one hidden channel of up to 8 output pixels; the taps read E
//        (the halo makes every tap exist: no bounds checks) and the tap-major weights (a warp
//        reads 32 consecutive channels), + b_d, act, rounded to the input dtype (as stored op by
//        op), into the shared tile D (P x kBH).
//     3. project: acc[p][co] += D[p][h] W_p[co][h] over the chunk; a thread owns PI pixels x NCO
//        output channels (co = lane + 64 j: a warp reads 32 consecutive W_p^T entries), kept in
//        registers across all chunks.
//   Then + b_p (+ the input at the output pixel) and one store per output value.
// Tiles: the largest of 8x8, 4x8, 4x4, 2x4, 2x2, 1x2, 1x1 (clipped to the image) with at most
//   P = 4 PI pixels (PI = 16 up to 128 output channels, 32 / NCO beyond: at most 32 project
//   accumulators per thread), a halo of at most kMaxHalo pixels, and shared memory within the
//   device's per-block limit.
// Arithmetic: two kernels (inverted_residual_block.cuh; plan_block picks one).
//   - The tensor-core kernel (float16/bfloat16 on sm_80+, up to kTcMaxCout = 160 output channels):
//     64-pixel tiles, both 1x1 GEMMs as wmma 16x16x16 MMAs with fp32 accumulators on 16-bit copies
//     of the weights (exact: the op's weights arrive in the input dtype), B operands read from
//     global memory (L2); the depthwise step as below. Untimed: written after GPU run 4 showed the
//     CUDA-core GEMMs to be what made the kernel slow; bench_block times it.
//   - The CUDA-core kernel (every other case): FMAs in float (double for float64) on the weights in
//     the accumulation dtype (prepare_inverted_residual), as described above.
// Layouts: NCHW or channels_last (any other strides are made dense first), through (n, c, h, w)
//   strides; the halo loads map consecutive threads to consecutive channels (channels_last) or
//   consecutive pixels (NCHW), so both read whole lines; the output store is coalesced along the
//   channels, so NCHW stores are strided (32 B sectors per warp) — a known cost of that layout.
// Determinism: every output value is computed by one thread in an order fixed by the shape; no
//   atomics.
// Indexing: int64 element offsets; spatial sizes in int.
// Squeeze-excite (V3's blocks): its pooling needs the whole dw output before the first projection,
//   so the op runs the kernel twice (forward_steps, inverted_residual_block.cuh): pass 1 (kPool)
//   stops after step 2 and writes each tile's channel sums of D; a small kernel merges them per
//   image in tile order into the means; squeeze_excite's excite GEMMs (excite_gemm.cuh) make the
//   (N, Chid) scale; pass 2 multiplies D by it (rounded again, as the squeeze-excite op stores its
//   output) before step 3. Five launches; pass 1 recomputes the expand and dw convs (2x their
//   FLOPs, the input read twice) so that no hidden tensor reaches HBM.
// Limits: inference only (no autograd formula); output channels up to 512 (MobileNets have at
//   most 320); the halo rows are expanded once per tile (1.56x the expand FLOPs for 8x8 tiles at
//   k3 s1); W_p and W_e are re-read from L2 by every tile. The CUDA-core kernel passed the CUDA
//   tests of python_tests/test_inverted_residual_eval.py on an H200 (GPU run 3) and took 5-8x the
//   eager op-by-op block's time at batch 256 in GPU run 4 (its 1x1 GEMMs on CUDA cores;
//   benchmarks/results/inverted_residual_h200.json), about even at batch 1. The tensor-core
//   kernel and the squeeze-excite passes have run only under the host emulation
//   (python_tests/test_cuda_emulation.py), which checks every kernel on CPU boxes.
// The kernel and the plan of its launch live in inverted_residual_block.cuh (host-emulated by
// python_tests/cuda_emulation); this file holds the entry point, the dispatch and the launch.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "inverted_residual.h"
#include "inverted_residual_block.cuh"

namespace mobilenet_kernels {
namespace {

using namespace cuda;            // check_cuda, StreamLaunch (mk_cuda.cuh)
using namespace cuda::ir_block;  // the kernel and its plan (inverted_residual_block.cuh)

template <typename scalar_t>
void launch(const InvertedResidualArgs& a, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto* props = at::cuda::getCurrentDeviceProperties();
  const BlockKernels<scalar_t> ks =
      plan_block<scalar_t>(a, out, static_cast<int64_t>(props->sharedMemPerBlockOptin), props->major);
  const at::Tensor wp_t = a.project_weight.t().contiguous();  // (Chid, Cout): rows read along Cout
  const at::Tensor wd_t = a.dw_weight.t().contiguous();       // (k * k, Chid): taps read along Chid
  at::Tensor we16, wp16;
  if (ks.tensor_cores) std::tie(we16, wp16) = tensor_core_weights(a, ks.main.g);
  const BlockWeights<scalar_t> w = block_weights<scalar_t>(a, wd_t, wp_t, we16, wp16);
  C10_CUDA_CHECK(cudaFuncSetAttribute(ks.main.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(ks.main.smem_bytes)));
  at::Tensor scratch;
  se::ExciteParams<acc_t> excite{};
  if (a.has_se()) {
    excite = excite_params<acc_t>(a);
    C10_CUDA_CHECK(cudaFuncSetAttribute(ks.pool.kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(ks.pool.smem_bytes)));
    scratch = at::empty({se_scratch_elems(a, ks.pool)}, a.se_w1.options());
  }
  forward_steps<scalar_t>(a, ks, w, a.has_se() ? &excite : nullptr, a.input.data_ptr<scalar_t>(),
                          out.data_ptr<scalar_t>(), scratch.defined() ? scratch.data_ptr<acc_t>() : nullptr,
                          StreamLaunch{at::cuda::getCurrentCUDAStream()});
}

at::Tensor inverted_residual_eval_cuda(const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
                                       const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                                       const at::Tensor& dw_bias, const at::Tensor& project_weight,
                                       const at::Tensor& project_bias, int64_t stride, int64_t dilation,
                                       c10::string_view activation, bool residual,
                                       const c10::optional<at::Tensor>& se_fc1_weight,
                                       const c10::optional<at::Tensor>& se_fc1_bias,
                                       const c10::optional<at::Tensor>& se_fc2_weight,
                                       const c10::optional<at::Tensor>& se_fc2_bias, c10::string_view se_activation,
                                       c10::string_view se_scale_activation) {
  check_cuda(input);
  const c10::cuda::CUDAGuard guard(input.device());
  const InvertedResidualArgs a =
      prepare_inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                stride, dilation, std::string(activation), residual, se_fc1_weight, se_fc1_bias,
                                se_fc2_weight, se_fc2_bias, std::string(se_activation),
                                std::string(se_scale_activation));
  check_block_limits(a);
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "inverted_residual_eval_cuda",
                                  [&] { launch<scalar_t>(a, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CUDA, m) { m.impl("inverted_residual_eval", &inverted_residual_eval_cuda); }

}  // namespace mobilenet_kernels
