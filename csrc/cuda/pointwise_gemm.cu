// pointwise_conv2d (and its statistics variant) through the tensor-core GEMM with the epilogue in
// it (pointwise_gemm.cuh), when MK_PW_FUSED=1 (or =auto, for the small convs only): the launcher
// pointwise_conv2d.cu tries it first and falls back to cuBLAS + epilogue when it does not apply. A
// file of its own so that its kernel instantiations (2 dtypes x 3 tile widths x (forward,
// statistics)) compile in parallel with the others.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <array>
#include <mutex>
#include <optional>

#include "pointwise_gemm.cuh"

namespace mobilenet_kernels {
namespace cuda {
namespace {

using namespace pw_gemm;

// The kernel's static shared memory (block_merge_write's buffers) is below this; the device must
// grant the plan's dynamic bytes on top of it.
constexpr int64_t kStaticSmemBound = 20 * 1024;

// MK_PW_FUSED=auto: the kernel takes the convs of at most this many output elements (every 1x1
// conv of a batch-1 V3-Large or V2 inference at 224²: up to 112² x 64), cuBLAS the larger ones.
// Such small GEMMs are bound by the host (an aten::mm call took ~51 us of host time on GPU run 7's
// H200 machine) and by launch latency (cuBLAS + the epilogue pass: two kernels), not by the GPU's
// arithmetic. Untimed: the next GPU run's batch-1 rows with and without it decide the default.
constexpr int64_t kAutoMaxOutputs = int64_t(1) << 20;

// Whether MK_PW_FUSED (read once per process) lets the kernel take a conv with `outputs` elements:
// "1" all, "auto" the small ones, anything else none.
bool fused_allowed(int64_t outputs) {
  enum class Fused { kNone, kSmall, kAll };
  static const Fused mode = env_is("MK_PW_FUSED", "1")      ? Fused::kAll
                            : env_is("MK_PW_FUSED", "auto") ? Fused::kSmall
                                                            : Fused::kNone;
  return mode == Fused::kAll || (mode == Fused::kSmall && outputs <= kAutoMaxOutputs);
}

// The plan for the prepared conv `a` writing `out`, or none when the kernel is not to take it:
// MK_PW_FUSED not allowing it, the conv not eligible, or a device before sm_80 or without the
// shared memory.
std::optional<GemmPlan> fused_plan(const PointwiseArgs& a, const at::Tensor& out) {
  if (!fused_allowed(out.numel()) || !pointwise_gemm_eligible(a, out)) return std::nullopt;
  const GemmPlan p = plan_gemm(gemm_shape(a), a.input.element_size());
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  if (prop->major < 8 || p.smem_bytes + kStaticSmemBound > static_cast<int64_t>(prop->sharedMemPerBlockOptin)) {
    return std::nullopt;
  }
  return p;
}

// Launches the kernel for the prepared, eligible conv; kStats: part (3, tiles_m, Cout) float.
template <typename scalar_t, bool kStats>
void launch(const PointwiseArgs& a, const GemmPlan& p, at::Tensor& out, float* part) {
  const GemmShape s = gemm_shape(a);
  const int64_t part_stride = p.tiles_m * a.Cout;
  const float* bias = a.bias.defined() ? a.bias.data_ptr<float>() : nullptr;
  const scalar_t* res = a.residual.defined() ? a.residual.data_ptr<scalar_t>() : nullptr;
  dispatch_bn(p.bn, [&](auto bn) {
    constexpr int BN = decltype(bn)::value;
    const auto kernel = pointwise_gemm_kernel<scalar_t, BN, kStats>;
    // The dynamic shared memory of an instantiation is fixed (BN and the dtype): grant it once per
    // device, not per launch (batch-1 inference launches many small convs).
    static std::array<std::once_flag, 64> granted;
    const int dev = at::cuda::current_device();
    TORCH_CHECK(dev >= 0 && dev < static_cast<int>(granted.size()), "pointwise_conv2d (CUDA): device index ", dev);
    std::call_once(granted[dev], [&] {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem_bytes_for<BN>(sizeof(scalar_t)))));
    });
    kernel<<<gemm_grid(p), gemm_block(p), p.smem_bytes, at::cuda::getCurrentCUDAStream()>>>(
        a.input.data_ptr<scalar_t>(), a.weight.data_ptr<scalar_t>(), bias, res, out.data_ptr<scalar_t>(), s, a.act,
        part, kStats ? part + part_stride : nullptr, kStats ? part + 2 * part_stride : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

bool try_pointwise_gemm(const PointwiseArgs& a, at::Tensor& out) {
  const std::optional<GemmPlan> plan = fused_plan(a, out);
  if (!plan) return false;
  dispatch_16bit(a.input.scalar_type(), [&](auto t) { launch<decltype(t), false>(a, *plan, out, nullptr); });
  return true;
}

bool try_pointwise_gemm_stats(const PointwiseArgs& a, at::Tensor& out, at::Tensor& mean, at::Tensor& var) {
  const std::optional<GemmPlan> plan = fused_plan(a, out);
  if (!plan) return false;
  const GemmPlan& p = *plan;
  at::Tensor part = at::empty({3, p.tiles_m, a.Cout}, a.input.options().dtype(at::kFloat));
  float* pp = part.data_ptr<float>();
  dispatch_16bit(a.input.scalar_type(), [&](auto t) { launch<decltype(t), true>(a, p, out, pp); });
  launch_stats_finish<float>(pp, pp + p.tiles_m * a.Cout, pp + 2 * p.tiles_m * a.Cout, p.tiles_m, a.Cout,
                             mean.data_ptr<float>(), var.data_ptr<float>(), at::cuda::getCurrentCUDAStream(),
                             "pointwise_conv2d_stats");
  return true;
}

}  // namespace cuda
}  // namespace mobilenet_kernels
