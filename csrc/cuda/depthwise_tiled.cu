// depthwise_conv2d forward through the shared-memory tiled kernel (depthwise_tiled.cuh): the
// launcher depthwise_conv2d.cu calls for channels_last convs with 16-byte channel vectors, square
// K in {3, 5}, stride 1 or 2, dilation 1, when MK_DW_TILED=1. A file of its own so that its
// kernel instantiations (3 dtypes x 2 K x 2 strides x stats or not) compile in parallel with the
// others.
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
    if (!(c.K == 3 || c.K == 5) || !(c.S == 1 || c.S == 2)) return false;
    TiledPlan p{};
    if (!plan_tiled(c.N, c.C, c.H, c.W, c.OH, c.OW, c.K, c.S, c.pH, c.pW, kVec, kStats, p)) return false;
    p.g.xsN = c.x->stride(0);
    p.g.xsH = c.x->stride(2);
    p.g.xsW = c.x->stride(3);
    p.g.ysN = c.y->stride(0);
    p.g.ysH = c.y->stride(2);
    p.g.ysW = c.y->stride(3);
    if constexpr (kStats) {
      *c.part = at::empty({3, p.blocks_x, c.C}, c.x->options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    }
    if (c.K == 3) {
      c.S == 1 ? launch<scalar_t, kVec, 3, 1, kStats>(p, c) : launch<scalar_t, kVec, 3, 2, kStats>(p, c);
    } else {
      c.S == 1 ? launch<scalar_t, kVec, 5, 1, kStats>(p, c) : launch<scalar_t, kVec, 5, 2, kStats>(p, c);
    }
    return true;
  }
}

#define MK_INSTANTIATE(T)                              \
  template bool run_tiled_conv<T, false>(const TiledConv&); \
  template bool run_tiled_conv<T, true>(const TiledConv&);
MK_INSTANTIATE(float)
MK_INSTANTIATE(double)
MK_INSTANTIATE(at::Half)
MK_INSTANTIATE(at::BFloat16)
#undef MK_INSTANTIATE

}  // namespace cuda
}  // namespace mobilenet_kernels
