// depthwise_conv2d forward, stride-2 grad_input and weight-gradient stage 1 through the
// shared-memory tiled kernels (depthwise_tiled.cuh): the launcher depthwise_conv2d.cu calls them
// for channels_last convs with 16-byte channel vectors, square K in {3, 5}, stride 1 or 2,
// dilation 1, when MK_DW_TILED=1. A file of its own so that its kernel instantiations (3 dtypes x
// 2 K x (2 strides x (forward, statistics, weight gradient) + stride-2 grad_input)) compile in
// parallel with the others.
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include "depthwise_tiled.cuh"

namespace mobilenet_kernels {
namespace cuda {
namespace {

template <typename scalar_t, int VEC, int K, int S, bool kStats>
void launch(const TiledPlan& p, const TiledConv& c) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t* part = kStats ? c.part->data_ptr<acc_t>() : nullptr;
  const int64_t stride = kStats ? c.part->size(1) * c.part->size(2) : 0;  // (3, blocks_x, C)
  depthwise_conv2d_fwd_tiled_kernel<scalar_t, acc_t, VEC, K, S, kStats>
      <<<dim3(static_cast<unsigned>(p.blocks_x), static_cast<unsigned>(p.blocks_y)), dim3(p.tx, p.ty), p.smem,
         at::cuda::getCurrentCUDAStream()>>>(
          c.x->data_ptr<scalar_t>(), c.y->data_ptr<scalar_t>(), c.w_taps->data_ptr<acc_t>(),
          c.bias->defined() ? c.bias->data_ptr<acc_t>() : nullptr, p.g, c.act, part,
          kStats ? part + stride : nullptr, kStats ? part + 2 * stride : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int VEC, int K, int S>
void launch_wgrad(const TiledPlan& p, const TiledWgrad& c) {
  using acc_t = at::opmath_type<scalar_t>;
  depthwise_conv2d_bwd_weight_tiled_kernel<scalar_t, acc_t, VEC, K, S>
      <<<dim3(static_cast<unsigned>(p.blocks_x), static_cast<unsigned>(p.blocks_y)), dim3(p.tx, p.ty), p.smem,
         at::cuda::getCurrentCUDAStream()>>>(c.x->data_ptr<scalar_t>(), c.gy->data_ptr<scalar_t>(), p.g, c.bias,
                                             c.part->data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int VEC, int K>
void launch_dgrad_s2(const TiledPlan& p, const TiledConv& c) {
  using acc_t = at::opmath_type<scalar_t>;
  depthwise_conv2d_bwd_input_s2_tiled_kernel<scalar_t, acc_t, VEC, K>
      <<<dim3(static_cast<unsigned>(p.blocks_x), static_cast<unsigned>(p.blocks_y)), dim3(p.tx, p.ty), p.smem,
         at::cuda::getCurrentCUDAStream()>>>(c.x->data_ptr<scalar_t>(), c.y->data_ptr<scalar_t>(),
                                             c.w_taps->data_ptr<acc_t>(), p.g);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// plan_tiled for x -> y with the strides of the two tensors; false when it does not apply.
bool plan_for(const at::Tensor& x, const at::Tensor& y, int64_t N, int64_t C, int H, int W, int OH, int OW, int K,
              int S, int pH, int pW, int vec, TiledWork work, TiledPlan& p) {
  if (!(K == 3 || K == 5) || !(S == 1 || S == 2)) return false;
  if (!plan_tiled(N, C, H, W, OH, OW, K, S, pH, pW, vec, work, p)) return false;
  p.g.xsN = x.stride(0);
  p.g.xsH = x.stride(2);
  p.g.xsW = x.stride(3);
  p.g.ysN = y.stride(0);
  p.g.ysH = y.stride(2);
  p.g.ysW = y.stride(3);
  return true;
}

// f(integral_constant<K>, integral_constant<S>) for K in {3, 5}, S in {1, 2} (plan_for checked them).
template <typename F>
void dispatch_k_s(int K, int S, F&& f) {
  using I3 = std::integral_constant<int, 3>;
  using I5 = std::integral_constant<int, 5>;
  using I1 = std::integral_constant<int, 1>;
  using I2 = std::integral_constant<int, 2>;
  if (K == 3) {
    S == 1 ? f(I3{}, I1{}) : f(I3{}, I2{});
  } else {
    S == 1 ? f(I5{}, I1{}) : f(I5{}, I2{});
  }
}

}  // namespace

bool tiled_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("MK_DW_TILED");
    return v != nullptr && std::string(v) == "1";
  }();
  return enabled;
}

template <typename scalar_t, bool kStats>
bool run_tiled_conv(const TiledConv& c) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return false;
  } else {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    TiledPlan p{};
    if (!plan_for(*c.x, *c.y, c.N, c.C, c.H, c.W, c.OH, c.OW, c.K, c.S, c.pH, c.pW, kVec,
                  kStats ? kTiledStats : kTiledForward, p)) {
      return false;
    }
    if constexpr (kStats) {
      *c.part = at::empty({3, p.blocks_x, c.C}, c.x->options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    }
    dispatch_k_s(c.K, c.S, [&](auto k, auto s) { launch<scalar_t, kVec, decltype(k)::value, decltype(s)::value, kStats>(p, c); });
    return true;
  }
}

template <typename scalar_t>
bool run_tiled_bwd_weight(const TiledWgrad& c) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return false;
  } else {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    TiledPlan p{};
    if (!plan_for(*c.x, *c.gy, c.N, c.C, c.H, c.W, c.OH, c.OW, c.K, c.S, c.pH, c.pW, kVec, tiled_wgrad_work(c.K),
                  p)) {
      return false;
    }
    *c.part = at::empty({p.blocks_x, c.K * c.K + (c.bias ? 1 : 0), c.C},
                        c.x->options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    dispatch_k_s(c.K, c.S, [&](auto k, auto s) { launch_wgrad<scalar_t, kVec, decltype(k)::value, decltype(s)::value>(p, c); });
    return true;
  }
}

template <typename scalar_t>
bool run_tiled_bwd_input_s2(const TiledConv& c) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return false;
  } else {
    constexpr int kVec = 16 / sizeof(scalar_t);
    TiledPlan p{};
    if (c.S != 2 || !plan_for(*c.x, *c.y, c.N, c.C, c.H, c.W, c.OH, c.OW, c.K, c.S, c.pH, c.pW, kVec, kTiledDgradS2, p)) {
      return false;
    }
    c.K == 3 ? launch_dgrad_s2<scalar_t, kVec, 3>(p, c) : launch_dgrad_s2<scalar_t, kVec, 5>(p, c);
    return true;
  }
}

#define MK_INSTANTIATE(T)                                   \
  template bool run_tiled_conv<T, false>(const TiledConv&); \
  template bool run_tiled_conv<T, true>(const TiledConv&);  \
  template bool run_tiled_bwd_weight<T>(const TiledWgrad&); \
  template bool run_tiled_bwd_input_s2<T>(const TiledConv&);
MK_INSTANTIATE(float)
MK_INSTANTIATE(double)
MK_INSTANTIATE(at::Half)
MK_INSTANTIATE(at::BFloat16)
#undef MK_INSTANTIATE

}  // namespace cuda
}  // namespace mobilenet_kernels
