// depthwise_conv2d forward, stride-2 grad_input and weight-gradient stage 1 through the
// shared-memory tiled kernels (depthwise_tiled.cuh): the launcher depthwise_conv2d.cu calls them
// for channels_last convs with 16-byte channel vectors, square K in {3, 5}, stride 1 or 2,
// dilation 1 (none with MK_DW_TILED=0; see tiled_max_stride). A file of its own so that
// its kernel instantiations (3 dtypes x 2 K x (2 strides x (forward, statistics, weight gradient)
// + stride-2 grad_input)) compile in parallel with the others.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAFunctions.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "depthwise_tiled.cuh"

namespace mobilenet_kernels {
namespace cuda {
namespace {

// The kernels with static shared memory besides their two staged buffers (up to 2 * kTiledSmemBytes
// of dynamic shared memory): the statistics (block_merge_write's 9 KB) and the weight-gradient
// and fused backward kernels (TapSums::write's tree, 2-4 KB), more than the 48 KB a kernel gets
// without opting in. Once per kernel and device (a function attribute is per device) for devices
// 0-63, at every launch beyond. A template on the kernel itself, not on its type: kernels of one
// signature (other K or S) have the same function-pointer type but each its own attribute.
template <auto kKernel>
void allow_double_buffers() {
  static std::atomic<uint64_t> done{0};
  const int device = c10::cuda::current_device();
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (bit == 0 || (done.load() & bit) == 0) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 2 * kTiledSmemBytes));
    done.fetch_or(bit);
  }
}

// A kernel's TiledBnDx: off when z is null.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
TiledBnDx<scalar_t, acc_t> bn_dx(const at::Tensor* z, const at::Tensor* table, Act act) {
  if (z == nullptr) return {nullptr, nullptr, act};
  return {z->data_ptr<scalar_t>(), table->data_ptr<acc_t>(), act};
}

// A kernel's TiledInputBn: off when b is null.
template <typename acc_t>
TiledInputBn<acc_t> input_bn(const InputBn* b) {
  if (b == nullptr) return {nullptr, nullptr, nullptr, nullptr, acc_t(0), Act::kIdentity};
  const auto ptr = [](const at::Tensor* t) { return t != nullptr ? t->data_ptr<acc_t>() : nullptr; };
  return {ptr(b->mean), ptr(b->var), ptr(b->weight), ptr(b->bias), static_cast<acc_t>(b->eps), b->act};
}

template <typename scalar_t, int VEC, int K, int S, bool kStats>
void launch(const TiledPlan& p, const TiledConv& c) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t* part = kStats ? c.part->data_ptr<acc_t>() : nullptr;
  const int64_t stride = kStats ? c.part->size(1) * c.part->size(2) : 0;  // (3, blocks_x, C)
  constexpr auto kernel = depthwise_conv2d_fwd_tiled_kernel<scalar_t, acc_t, VEC, K, S, kStats>;
  if constexpr (kStats) allow_double_buffers<kernel>();
  kernel<<<tiled_grid(p), tiled_block(p), p.smem, at::cuda::getCurrentCUDAStream()>>>(
          c.x->data_ptr<scalar_t>(), c.y->data_ptr<scalar_t>(), c.w_taps->data_ptr<acc_t>(),
          c.bias->defined() ? c.bias->data_ptr<acc_t>() : nullptr, p.g, c.act, part,
          kStats ? part + stride : nullptr, kStats ? part + 2 * stride : nullptr, input_bn<acc_t>(c.xbn));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int VEC, int K, int S>
void launch_wgrad(const TiledPlan& p, const TiledWgrad& c) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr auto kernel = depthwise_conv2d_bwd_weight_tiled_kernel<scalar_t, acc_t, VEC, K, S>;
  allow_double_buffers<kernel>();
  kernel<<<tiled_grid(p), tiled_block(p), p.smem, at::cuda::getCurrentCUDAStream()>>>(
          c.x->data_ptr<scalar_t>(), c.gy->data_ptr<scalar_t>(), p.g, c.bias, c.part->data_ptr<acc_t>(),
          bn_dx<scalar_t>(c.z, c.bn_table, c.act), input_bn<acc_t>(c.xbn));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int VEC, int K>
void launch_dgrad_s2(const TiledPlan& p, const TiledConv& c) {
  using acc_t = at::opmath_type<scalar_t>;
  depthwise_conv2d_bwd_input_s2_tiled_kernel<scalar_t, acc_t, VEC, K>
      <<<tiled_grid(p), tiled_block(p), p.smem, at::cuda::getCurrentCUDAStream()>>>(
          c.x->data_ptr<scalar_t>(), c.y->data_ptr<scalar_t>(), c.w_taps->data_ptr<acc_t>(), p.g,
          bn_dx<scalar_t>(c.z, c.bn_table, c.bn_act));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int VEC, int K>
void launch_bwd_fused(const TiledPlan& p, const TiledBwd& c) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr auto kernel = depthwise_conv2d_bwd_fused_s1_tiled_kernel<scalar_t, acc_t, VEC, K>;
  allow_double_buffers<kernel>();
  kernel<<<tiled_grid(p), tiled_block(p), p.smem, at::cuda::getCurrentCUDAStream()>>>(
          c.x->data_ptr<scalar_t>(), c.gy->data_ptr<scalar_t>(), c.gx->data_ptr<scalar_t>(),
          c.w_taps->data_ptr<acc_t>(), p.g, c.bias, c.part->data_ptr<acc_t>(), bn_dx<scalar_t>(c.z, c.bn_table, c.act),
          input_bn<acc_t>(c.xbn));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// plan_tiled_for, for the instantiated K (3, 5) and S (1, 2) only; false when it does not apply.
bool plan_for(const at::Tensor& x, const at::Tensor& y, const TiledShape& s, int vec, TiledWork work, TiledPlan& p) {
  return (s.K == 3 || s.K == 5) && (s.S == 1 || s.S == 2) && plan_tiled_for(x, y, s, vec, work, p);
}

// false for float64 (no tiled kernels); else plans `work` (with tiled_stages() buffers) for x -> y
// into p and returns whether it applies. Nothing launched.
template <typename scalar_t>
bool plan_only(const at::Tensor& x, const at::Tensor& y, const TiledShape& s, TiledWork work, TiledPlan& p) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return false;
  } else {
    work.stages = tiled_stages();
    return plan_for(x, y, s, 16 / sizeof(scalar_t), work, p);
  }
}

// plan_only, then, when it applies, launch(plan), and returns true. `launch` is a generic lambda:
// not instantiated for float64.
template <typename scalar_t, typename F>
bool plan_and_launch(const at::Tensor& x, const at::Tensor& y, const TiledShape& s, TiledWork work, F&& launch) {
  TiledPlan p{};
  if (!plan_only<scalar_t>(x, y, s, work, p)) return false;
  if constexpr (!std::is_same_v<scalar_t, double>) launch(p);
  return true;
}

// f(integral_constant<K>) for K in {3, 5}; dispatch_k_s also passes integral_constant<S> for S in
// {1, 2} (plan_for checked both).
template <typename F>
void dispatch_k(int K, F&& f) {
  K == 3 ? f(std::integral_constant<int, 3>{}) : f(std::integral_constant<int, 5>{});
}

template <typename F>
void dispatch_k_s(int K, int S, F&& f) {
  using I1 = std::integral_constant<int, 1>;
  using I2 = std::integral_constant<int, 2>;
  dispatch_k(K, [&](auto k) { S == 1 ? f(k, I1{}) : f(k, I2{}); });
}

// The (blocks, K * K + bias, C) weight-gradient partials of a plan, in the accumulation dtype.
template <typename acc_t>
at::Tensor wgrad_partials(const TiledPlan& p, const TiledShape& s, bool bias, const at::Tensor& like) {
  return at::empty({p.blocks_x, s.K * s.K + (bias ? 1 : 0), s.C},
                   like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

}  // namespace

int tiled_stages() {
  static const int stages = env_is("MK_DW_STAGES", "1") ? 1 : 2;
  return stages;
}

int tiled_max_stride() {
  static const int stride = env_is("MK_DW_TILED", "0") ? 0 : 2;
  return stride;
}

template <typename scalar_t, bool kStats>
bool run_tiled_conv(const TiledConv& c) {
  using acc_t = at::opmath_type<scalar_t>;
  return plan_and_launch<scalar_t>(*c.x, *c.y, c.shape, kStats ? kTiledStats : kTiledForward, [&](const auto& p) {
    constexpr int kVec = 16 / sizeof(scalar_t);
    if constexpr (kStats) {
      *c.part = at::empty({3, p.blocks_x, c.shape.C}, c.x->options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    }
    dispatch_k_s(c.shape.K, c.shape.S,
                 [&](auto k, auto s) { launch<scalar_t, kVec, decltype(k)::value, decltype(s)::value, kStats>(p, c); });
  });
}

// The backward kernels: plan_* says whether one applies (nothing launched), run_* plans and launches.
template <typename scalar_t>
bool plan_tiled_bwd_weight(const TiledWgrad& c, TiledPlan& p) {
  if (c.z != nullptr && c.z->strides() != c.gy->strides()) return false;
  return plan_only<scalar_t>(*c.x, *c.gy, c.shape, tiled_wgrad_work(c.shape.K), p);
}

template <typename scalar_t>
bool run_tiled_bwd_weight(const TiledWgrad& c) {
  TiledPlan p{};
  if (!plan_tiled_bwd_weight<scalar_t>(c, p)) return false;
  if constexpr (!std::is_same_v<scalar_t, double>) {
    constexpr int kVec = 16 / sizeof(scalar_t);
    *c.part = wgrad_partials<at::opmath_type<scalar_t>>(p, c.shape, c.bias, *c.x);
    dispatch_k_s(c.shape.K, c.shape.S,
                 [&](auto k, auto st) { launch_wgrad<scalar_t, kVec, decltype(k)::value, decltype(st)::value>(p, c); });
  }
  return true;
}

template <typename scalar_t>
bool plan_tiled_bwd_input_s2(const TiledConv& c, TiledPlan& p) {
  if (c.shape.S != 2 || (c.z != nullptr && c.z->strides() != c.x->strides())) return false;
  // With BatchNorm's z, its footprint is staged beside grad_output's.
  return plan_only<scalar_t>(*c.x, *c.y, c.shape, c.z != nullptr ? kTiledDgradS2Bn : kTiledDgradS2, p);
}

template <typename scalar_t>
bool run_tiled_bwd_input_s2(const TiledConv& c) {
  TiledPlan p{};
  if (!plan_tiled_bwd_input_s2<scalar_t>(c, p)) return false;
  if constexpr (!std::is_same_v<scalar_t, double>) {
    constexpr int kVec = 16 / sizeof(scalar_t);
    dispatch_k(c.shape.K, [&](auto k) { launch_dgrad_s2<scalar_t, kVec, decltype(k)::value>(p, c); });
  }
  return true;
}

template <typename scalar_t>
bool plan_tiled_bwd_fused_s1(const TiledBwd& c, TiledPlan& p) {
  const TiledShape& s = c.shape;
  const int P = (s.K - 1) / 2;
  if (s.S != 1 || s.K % 2 == 0 || s.pH != P || s.pW != P || s.OH != s.H || s.OW != s.W ||
      c.gy->strides() != c.x->strides() || (c.z != nullptr && c.z->strides() != c.x->strides())) {
    return false;
  }
  // x -> gx: the input's and grad_input's strides (grad_output and z are staged with the input's).
  return plan_only<scalar_t>(*c.x, *c.gx, s, c.z != nullptr ? kTiledBwdFusedBn : kTiledBwdFused, p);
}

template <typename scalar_t>
bool run_tiled_bwd_fused_s1(const TiledBwd& c) {
  TiledPlan p{};
  if (!plan_tiled_bwd_fused_s1<scalar_t>(c, p)) return false;
  if constexpr (!std::is_same_v<scalar_t, double>) {
    constexpr int kVec = 16 / sizeof(scalar_t);
    *c.part = wgrad_partials<at::opmath_type<scalar_t>>(p, c.shape, c.bias, *c.x);
    dispatch_k(c.shape.K, [&](auto k) { launch_bwd_fused<scalar_t, kVec, decltype(k)::value>(p, c); });
  }
  return true;
}

#define MK_INSTANTIATE(T)                                                  \
  template bool run_tiled_conv<T, false>(const TiledConv&);                \
  template bool run_tiled_conv<T, true>(const TiledConv&);                 \
  template bool run_tiled_bwd_weight<T>(const TiledWgrad&);                \
  template bool plan_tiled_bwd_weight<T>(const TiledWgrad&, TiledPlan&);   \
  template bool run_tiled_bwd_input_s2<T>(const TiledConv&);               \
  template bool plan_tiled_bwd_input_s2<T>(const TiledConv&, TiledPlan&);  \
  template bool run_tiled_bwd_fused_s1<T>(const TiledBwd&);                \
  template bool plan_tiled_bwd_fused_s1<T>(const TiledBwd&, TiledPlan&);
MK_INSTANTIATE(float)
MK_INSTANTIATE(double)
MK_INSTANTIATE(at::Half)
MK_INSTANTIATE(at::BFloat16)
#undef MK_INSTANTIATE

}  // namespace cuda
}  // namespace mobilenet_kernels
