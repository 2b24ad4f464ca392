// pointwise_conv2d, C++ CPU kernels.
//
// Forward: act(conv2d(x, w, b)) + residual for a 1x1 conv. Backward: grad_input, grad_weight,
// grad_bias of the identity-activation conv (autograd applies act' first). Stats: the bias-free conv
// plus the per-channel batch mean and biased variance of the output as stored (after rounding).
// Structure: the GEMM is ATen's BLAS (at::mm_out on views of the tensors, MKL or OpenBLAS under
//   it), cut into blocks of pixels fixed by the shape, and each block's epilogue runs right after
//   its GEMM, while the block is still in L2:
//     channels_last: x is a row-major (P = N*H*W, Cin) matrix; block = rows [p0, p0 + m):
//                    out[p0:p0+m] (m, Cout) = x[p0:p0+m] (m, Cin) . W^T.
//     NCHW:          block = (image n, pixels [p0, p0 + m)): out[n][:, p0:p0+m] (Cout, m) =
//                    W (Cout, Cin) . x[n][:, p0:p0+m] (Cin, m); both are strided views (row stride
//                    H*W, unit column stride), which BLAS takes as they are: no copy.
//   A block holds ~128K accumulation values of input plus output (32..4096 pixels), ~512 KB of
//   float: the output block is re-read by the epilogue from L2 or the near L3.
//   Blocks are the tasks of one at::parallel_for, and each task calls at::mm_out itself: inside a
//   parallel region ATen's BLAS runs single-threaded (MKL and OpenBLAS do not nest OpenMP), so
//   the threads split the blocks, not each GEMM. A problem of a single block runs outside any
//   parallel region, where the BLAS call may use every thread.
// dtypes: float32 / float64: the GEMM writes the output in place (its accumulation dtype), and the
//   epilogue act(z + bias) + residual rewrites it, one rounding. float16 / bfloat16: the task
//   converts its input block to float (a per-task buffer), the GEMM writes a float block buffer,
//   and the epilogue adds bias, applies act, adds the residual in float and rounds once at the store.
// Epilogue: `#pragma omp simd` loops over act_forward (mk_common.h), compiled twice, for the
//   baseline ISA and AVX2+FMA (csrc/cpu/cpu_dispatch.h), as in batch_norm_act.cpp.
// Reductions, all in an order fixed by the shape: bitwise repeatable at a given thread count, not
//   across thread counts, since MKL's GEMM gives other bits inside a parallel region of 2 threads
//   than at 1 thread (measured 2026-11-28: at::mm_out on the same operands; torch.mm likewise):
//   stats: each block's stored outputs (still in cache) give per-channel centred (mean, M2) about
//          the block's first value (0 if that is not finite, so an Inf passes through as torch's
//          +-Inf mean / NaN variance); the blocks' partials are merged in block order in double
//          by Chan's formula (csrc/cpu/chan_stats.h, shared with depthwise_conv2d_kernels.h).
//   grad_weight = sum over pixels g^T x: the blocks are split into at most 64 groups (fewer when
//          Cout*Cin is large: <= 4M partial values); a group accumulates its blocks' GEMMs
//          in block order into its own (Cout, Cin) partial (beta = 1), and the partials are summed
//          in group order in double. grad_bias: per-block sums (float), summed in block order in
//          double. grad_input is the forward GEMM with W in place of W^T and no epilogue.
// Limits: NaN/Inf in an operand propagate as BLAS computes them (0 * Inf = NaN, as in F.conv2d's
//   im2col/GEMM path). Sigmoid/SiLU call ::exp per element (not vectorized), as batch_norm_act does.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <tuple>
#include <type_traits>
#include <vector>

#include "chan_stats.h"
#include "cpu_dispatch.h"
#include "pointwise_conv2d.h"

namespace mobilenet_kernels {
namespace {

using cpu::parallel_run;  // csrc/cpu/cpu_dispatch.h: baseline and AVX2 clones of each kernel

constexpr int64_t kBlockElements = 131072;  // accumulation values of a block's input + output (512 KB of float)
constexpr int64_t kMinBlockPixels = 32;
constexpr int64_t kMaxBlockPixels = 4096;
constexpr int64_t kMaxGroups = 64;                  // grad_weight partials: at most this many ...
constexpr int64_t kPartialElements = int64_t(1) << 22;  // ... and at most this many values in all

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The pixel blocks of one pass over the N*H*W pixels; depends on the shape only.
struct Blocks {
  bool cl = false;
  int64_t HW = 0, P = 0;
  int64_t len = 0;        // pixels per block; the last block of a run (an image, or all pixels) may be shorter
  int64_t per_image = 0;  // NCHW: blocks per image
  int64_t count = 0;
  // Block b: channels_last: rows [p0, p0 + m) of the (P, C) matrices (n = 0); NCHW: image n,
  // pixels [p0, p0 + m) of it.
  void get(int64_t b, int64_t& n, int64_t& p0, int64_t& m) const {
    const int64_t span = cl ? P : HW;
    n = cl ? 0 : b / per_image;
    p0 = (cl ? b : b % per_image) * len;
    m = std::min(len, span - p0);
  }
};

Blocks make_blocks(const PointwiseArgs& a) {
  Blocks B;
  B.cl = a.channels_last();
  B.HW = a.HW();
  B.P = a.pixels();
  const int64_t per_pixel = std::max<int64_t>(1, a.Cin + a.Cout);
  const int64_t target = std::clamp<int64_t>(kBlockElements / per_pixel, kMinBlockPixels, kMaxBlockPixels);
  const int64_t span = B.cl ? B.P : B.HW;
  if (span == 0 || B.P == 0) return B;
  const int64_t nb = ceil_div(span, target);
  B.len = ceil_div(span, nb);  // balanced blocks
  B.per_image = nb;
  B.count = B.cl ? nb : a.N * nb;
  return B;
}

// A (rows, cols) matrix view of raw memory with row stride ld: no autograd metadata, so the BLAS
// calls made by worker threads go straight to the CPU kernel.
template <typename T>
at::Tensor matrix(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// dst (rows, cols), contiguous, in the accumulation dtype = src (rows, cols), row stride ld.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void upcast(const scalar_t* src, int64_t rows, int64_t cols, int64_t ld, acc_t* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* __restrict__ s = src + r * ld;
    acc_t* __restrict__ d = dst + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) d[c] = static_cast<acc_t>(s[c]);
  }
}

// Scratch of one task: (len, K) input and (len, C) output blocks in float, for float16/bfloat16.
// at::empty gives 64-byte aligned memory, so BLAS sees the same alignment on every run.
template <typename acc_t>
struct Scratch {
  at::Tensor x, y;
  acc_t* xp = nullptr;
  acc_t* yp = nullptr;
  Scratch(int64_t x_elems, int64_t y_elems) {
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
    x = at::empty({std::max<int64_t>(1, x_elems)}, opts);
    y = at::empty({std::max<int64_t>(1, y_elems)}, opts);
    xp = x.data_ptr<acc_t>();
    yp = y.data_ptr<acc_t>();
  }
};

// ----------------------------------------------------------------------------- forward (and grad_input)

// y = act(x . Wcl + bias) + res over the pixels, in channels_last terms: x (P, K), Wcl (K, C),
// y and res (P, C); NCHW: per image y[n] (C, HW) = Wcl^T . x[n] (K, HW). The forward has K = Cin,
// C = Cout, Wcl = W^T; grad_input has x = grad_output, K = Cout, C = Cin, Wcl = W, and no epilogue.
// kStats: also the block's centred partials of the stored y.
template <typename scalar_t, Act A, bool kStats>
struct ForwardKernel {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kDirect = std::is_same_v<scalar_t, acc_t>;  // the GEMM writes y itself

  Blocks B;
  int64_t K = 0, C = 0;
  const scalar_t* x = nullptr;
  scalar_t* y = nullptr;
  const acc_t* w = nullptr;  // Wcl (K, C): element (k, c) at k * ws_k + c * ws_c
  int64_t ws_k = 0, ws_c = 0;
  const acc_t* bias = nullptr;    // (C,), zeros when the op has none
  const scalar_t* res = nullptr;  // like y, or null
  bool epilogue = true;           // false: y is the GEMM's result as it is (float32/float64 only)
  double* part_mean = nullptr;    // (B.count, C), kStats
  double* part_m2 = nullptr;

  at::Tensor w_cl() const {  // (K, C)
    return at::from_blob(const_cast<acc_t*>(w), {K, C}, {ws_k, ws_c},
                         at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  }

  // The block's GEMM result z (acc_t): channels_last z[r * ldz + c], NCHW z[c * ldz + r].
  C10_ALWAYS_INLINE const acc_t* gemm(const at::Tensor& wcl, const at::Tensor& wt, int64_t n, int64_t p0, int64_t m,
                                      Scratch<acc_t>* s, int64_t& ldz) const {
    const int64_t HW = B.HW;
    if (B.cl) {
      acc_t* z = kDirect ? reinterpret_cast<acc_t*>(y + p0 * C) : s->yp;
      ldz = C;
      if (K == 0) {
        std::fill(z, z + m * C, acc_t(0));
        return z;
      }
      at::Tensor zm = matrix<acc_t>(z, m, C, C);
      if constexpr (kDirect) {
        at::mm_out(zm, matrix<acc_t>(reinterpret_cast<const acc_t*>(x + p0 * K), m, K, K), wcl);
      } else {
        upcast(x + p0 * K, m, K, K, s->xp);
        at::mm_out(zm, matrix<acc_t>(s->xp, m, K, K), wcl);
      }
      return z;
    }
    acc_t* z = kDirect ? reinterpret_cast<acc_t*>(y + n * C * HW + p0) : s->yp;
    ldz = kDirect ? HW : m;
    if (K == 0) {
      for (int64_t c = 0; c < C; ++c) std::fill(z + c * ldz, z + c * ldz + m, acc_t(0));
      return z;
    }
    at::Tensor zm = matrix<acc_t>(z, C, m, ldz);
    if constexpr (kDirect) {
      at::mm_out(zm, wt, matrix<acc_t>(reinterpret_cast<const acc_t*>(x + n * K * HW + p0), K, m, HW));
    } else {
      upcast(x + n * K * HW + p0, K, m, HW, s->xp);
      at::mm_out(zm, wt, matrix<acc_t>(s->xp, K, m, m));
    }
    return z;
  }

  // out = act(z + bias) + res for m values of one channel (NCHW) or m channels of one pixel
  // (channels_last, bv = bias row); z may alias out (float32/float64: in place, same index).
  C10_ALWAYS_INLINE static void store(const acc_t* z, const acc_t* bv, acc_t b0, const scalar_t* rr, scalar_t* o,
                                      int64_t m) {
    if (bv != nullptr) {
      if (rr != nullptr) {
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) {
          o[i] = static_cast<scalar_t>(act_forward<A>(z[i] + bv[i]) + static_cast<acc_t>(rr[i]));
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) o[i] = static_cast<scalar_t>(act_forward<A>(z[i] + bv[i]));
      }
    } else {
      if (rr != nullptr) {
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) {
          o[i] = static_cast<scalar_t>(act_forward<A>(z[i] + b0) + static_cast<acc_t>(rr[i]));
        }
      } else {
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) o[i] = static_cast<scalar_t>(act_forward<A>(z[i] + b0));
      }
    }
  }

  C10_ALWAYS_INLINE void run_epilogue(const acc_t* z, int64_t ldz, int64_t n, int64_t p0, int64_t m) const {
    if (B.cl) {
      for (int64_t r = 0; r < m; ++r) {
        const int64_t off = (p0 + r) * C;
        store(z + r * ldz, bias, acc_t(0), res ? res + off : nullptr, y + off, C);
      }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = (n * C + c) * B.HW + p0;
        store(z + c * ldz, nullptr, bias[c], res ? res + off : nullptr, y + off, m);
      }
    }
  }

  // Centred (mean, M2) per channel of the block's stored values into part_*[b * C + c]
  // (csrc/cpu/chan_stats.h).
  C10_ALWAYS_INLINE void run_stats(int64_t b, int64_t n, int64_t p0, int64_t m, acc_t* tmp) const {
    double* pmean = part_mean + b * C;
    double* pm2 = part_m2 + b * C;
    if (B.cl) {
      cpu::channel_stats(y + p0 * C, m, C, C, tmp, pmean, pm2);
    } else {
      for (int64_t c = 0; c < C; ++c) cpu::plane_stats(y + (n * C + c) * B.HW + p0, m, pmean[c], pm2[c]);
    }
  }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    at::AutoDispatchBelowADInplaceOrView guard;  // worker threads: plain tensors, straight to the kernel
    const at::Tensor wcl = w_cl();
    const at::Tensor wt = wcl.t();
    std::unique_ptr<Scratch<acc_t>> s;
    if constexpr (!kDirect) s = std::make_unique<Scratch<acc_t>>(B.len * K, B.len * C);
    std::vector<acc_t> tmp(kStats && B.cl ? static_cast<size_t>(3 * C) : 0);  // channel_stats' scratch
    for (int64_t b = begin; b < end; ++b) {
      int64_t n, p0, m, ldz;
      B.get(b, n, p0, m);
      const acc_t* z = gemm(wcl, wt, n, p0, m, s.get(), ldz);
      if (!kDirect || epilogue) run_epilogue(z, ldz, n, p0, m);
      if constexpr (kStats) run_stats(b, n, p0, m, tmp.data());
    }
  }
};

template <typename scalar_t, Act A, bool kStats>
void run_forward(const PointwiseArgs& a, const at::Tensor& x, int64_t K, int64_t C, const at::Tensor& w_kc,
                 at::Tensor& out, at::Tensor* mean, at::Tensor* var) {
  using acc_t = at::opmath_type<scalar_t>;
  ForwardKernel<scalar_t, A, kStats> k;
  k.B = make_blocks(a);
  if (k.B.count == 0) return;
  k.K = K;
  k.C = C;
  k.x = x.data_ptr<scalar_t>();
  k.y = out.data_ptr<scalar_t>();
  k.w = w_kc.data_ptr<acc_t>();
  k.ws_k = w_kc.stride(0);
  k.ws_c = w_kc.stride(1);
  std::vector<acc_t> bias(static_cast<size_t>(C), acc_t(0));
  if (a.bias.defined() && C > 0) std::copy_n(a.bias.data_ptr<acc_t>(), C, bias.begin());
  k.bias = bias.data();
  k.res = a.residual.defined() ? a.residual.data_ptr<scalar_t>() : nullptr;
  k.epilogue = A != Act::kIdentity || a.bias.defined() || a.residual.defined();
  std::vector<double> pmean, pm2;
  if constexpr (kStats) {
    pmean.assign(static_cast<size_t>(k.B.count * C), 0.0);
    pm2.assign(static_cast<size_t>(k.B.count * C), 0.0);
    k.part_mean = pmean.data();
    k.part_m2 = pm2.data();
  }
  parallel_run(k, k.B.count);
  if constexpr (kStats) {
    const Blocks& B = k.B;
    const auto block_pixels = [&](int64_t b) {
      int64_t img, p0, m;
      B.get(b, img, p0, m);
      return m;
    };
    cpu::finish_stats<acc_t>(pmean.data(), pm2.data(), B.count, C, block_pixels, *mean, *var);
  }
}

// ----------------------------------------------------------------------------- grad_weight, grad_bias

// Task = a group of consecutive blocks: gw_part[g] (Cout, Cin) = sum over its blocks, in order,
// of g_blk^T x_blk (BLAS with beta = 1 after the first block); gb_part[g] (Cout,) = sum over its
// blocks, in order, of the block's per-channel sums of g (float within a block, double across).
template <typename scalar_t>
struct WeightGradKernel {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kDirect = std::is_same_v<scalar_t, acc_t>;

  Blocks B;
  int64_t Cin = 0, Cout = 0, per_group = 1;
  const scalar_t* x = nullptr;  // input
  const scalar_t* g = nullptr;  // grad_output
  acc_t* gw_part = nullptr;     // (groups, Cout, Cin) or null
  double* gb_part = nullptr;    // (groups, Cout) or null

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    at::AutoDispatchBelowADInplaceOrView guard;
    const int64_t HW = B.HW;
    std::unique_ptr<Scratch<acc_t>> s;
    if constexpr (!kDirect) s = std::make_unique<Scratch<acc_t>>(B.len * Cin, B.len * Cout);
    std::vector<acc_t> lane(static_cast<size_t>(Cout));
    for (int64_t grp = begin; grp < end; ++grp) {
      const int64_t b0 = grp * per_group, b1 = std::min(B.count, b0 + per_group);
      at::Tensor gw;
      if (gw_part != nullptr) gw = matrix<acc_t>(gw_part + grp * Cout * Cin, Cout, Cin, Cin);
      double* gb = gb_part != nullptr ? gb_part + grp * Cout : nullptr;
      for (int64_t b = b0; b < b1; ++b) {
        int64_t n, p0, m;
        B.get(b, n, p0, m);
        // gv: grad_output block, xv: input block, as acc_t matrices; channels_last (m, C) with row
        // stride C, NCHW (C, m) with row stride HW (direct) or m (converted).
        const acc_t *gv, *xv;
        int64_t ldg, ldx;
        if (B.cl) {
          ldg = Cout;
          ldx = Cin;
          if constexpr (kDirect) {
            gv = g + p0 * Cout;
            xv = x + p0 * Cin;
          } else {
            upcast(g + p0 * Cout, m, Cout, Cout, s->yp);
            if (gw_part != nullptr) upcast(x + p0 * Cin, m, Cin, Cin, s->xp);
            gv = s->yp;
            xv = s->xp;
          }
        } else {
          if constexpr (kDirect) {
            gv = g + n * Cout * HW + p0;
            xv = x + n * Cin * HW + p0;
            ldg = ldx = HW;
          } else {
            upcast(g + n * Cout * HW + p0, Cout, m, HW, s->yp);
            if (gw_part != nullptr) upcast(x + n * Cin * HW + p0, Cin, m, HW, s->xp);
            gv = s->yp;
            xv = s->xp;
            ldg = ldx = m;
          }
        }
        if (gw_part != nullptr && Cin > 0) {
          at::Tensor lhs, rhs;  // (Cout, m) and (m, Cin)
          if (B.cl) {
            lhs = matrix<acc_t>(gv, m, Cout, ldg).t();
            rhs = matrix<acc_t>(xv, m, Cin, ldx);
          } else {
            lhs = matrix<acc_t>(gv, Cout, m, ldg);
            rhs = matrix<acc_t>(xv, Cin, m, ldx).t();
          }
          if (b == b0) {
            at::mm_out(gw, lhs, rhs);
          } else {
            gw.addmm_(lhs, rhs);
          }
        }
        if (gb != nullptr) {
          acc_t* __restrict__ l = lane.data();
          if (B.cl) {
            std::fill(lane.begin(), lane.end(), acc_t(0));
            for (int64_t r = 0; r < m; ++r) {
              const acc_t* __restrict__ gr = gv + r * ldg;
#pragma omp simd
              for (int64_t c = 0; c < Cout; ++c) l[c] += gr[c];
            }
          } else {
            for (int64_t c = 0; c < Cout; ++c) {
              const acc_t* __restrict__ gc = gv + c * ldg;
              acc_t t = 0;
#pragma omp simd reduction(+ : t)
              for (int64_t i = 0; i < m; ++i) t += gc[i];
              l[c] = t;
            }
          }
          for (int64_t c = 0; c < Cout; ++c) gb[c] += static_cast<double>(l[c]);
        }
      }
    }
  }
};

template <typename scalar_t>
void grad_weight_and_bias(const PointwiseArgs& a, const at::Tensor& go, bool want_w, bool want_b, at::Tensor& gw,
                          at::Tensor& gb) {
  using acc_t = at::opmath_type<scalar_t>;
  WeightGradKernel<scalar_t> k;
  k.B = make_blocks(a);
  if (k.B.count == 0 || a.Cout == 0) return;
  k.Cin = a.Cin;
  k.Cout = a.Cout;
  k.x = a.input.data_ptr<scalar_t>();
  k.g = go.data_ptr<scalar_t>();
  const int64_t wsize = a.Cout * a.Cin;
  int64_t groups = std::min(k.B.count, kMaxGroups);
  if (want_w && wsize > 0) groups = std::min(groups, std::max<int64_t>(1, kPartialElements / wsize));
  k.per_group = ceil_div(k.B.count, groups);
  groups = ceil_div(k.B.count, k.per_group);
  std::vector<acc_t> wpart;
  std::vector<double> bpart;
  if (want_w) {
    wpart.assign(static_cast<size_t>(groups * wsize), acc_t(0));
    k.gw_part = wpart.data();
  }
  if (want_b) {
    bpart.assign(static_cast<size_t>(groups * a.Cout), 0.0);
    k.gb_part = bpart.data();
  }
  parallel_run(k, groups);
  if (want_w && wsize > 0) {
    acc_t* out = gw.data_ptr<acc_t>();
    at::parallel_for(0, wsize, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        double total = 0;
        for (int64_t grp = 0; grp < groups; ++grp) total += static_cast<double>(wpart[grp * wsize + i]);
        out[i] = static_cast<acc_t>(total);
      }
    });
  }
  if (want_b) {
    acc_t* out = gb.data_ptr<acc_t>();
    for (int64_t c = 0; c < a.Cout; ++c) {
      double total = 0;
      for (int64_t grp = 0; grp < groups; ++grp) total += bpart[grp * a.Cout + c];
      out[c] = static_cast<acc_t>(total);
    }
  }
}

// ----------------------------------------------------------------------------- ops

at::Tensor pointwise_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                                c10::string_view activation) {
  const auto a = prepare_pointwise(input, weight, bias, residual, std::string(activation));
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pointwise_conv2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor w = a.weight.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();  // (Cout, Cin)
    MK_DISPATCH_ACTIVATION(a.act, [&] {
      run_forward<scalar_t, kAct, false>(a, a.input, a.Cin, a.Cout, w.t(), out, nullptr, nullptr);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pointwise_conv2d_backward_cpu(const at::Tensor& grad_output,
                                                                             const at::Tensor& input,
                                                                             const at::Tensor& weight,
                                                                             std::array<bool, 3> output_mask) {
  const auto a = prepare_pointwise(input, weight, c10::nullopt, c10::nullopt);
  const at::Tensor go = prepare_pointwise_grad_output(grad_output, a, input);
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  at::Tensor grad_in = at::empty({0}, input.options());
  at::Tensor grad_w = at::empty({0}, input.options());
  at::Tensor grad_b = at::empty({0}, input.options());
  if (output_mask[0]) grad_in = at::empty(input.sizes(), input.options().memory_format(a.format));
  at::Tensor gw_acc = output_mask[1] ? at::zeros({a.Cout, a.Cin}, acc_opts) : at::Tensor();
  at::Tensor gb_acc = output_mask[2] ? at::zeros({a.Cout}, acc_opts) : at::Tensor();
  if (a.pixels() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pointwise_conv2d_backward_cpu",
                                    [&] {
                                      using acc_t = at::opmath_type<scalar_t>;
                                      if (output_mask[0] && grad_in.numel() > 0) {
                                        // grad_input (P, Cin) = grad_output (P, Cout) . W (Cout, Cin)
                                        const at::Tensor w =
                                            a.weight.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
                                        run_forward<scalar_t, Act::kIdentity, false>(a, go, a.Cout, a.Cin, w,
                                                                                     grad_in, nullptr, nullptr);
                                      }
                                      if (output_mask[1] || output_mask[2]) {
                                        grad_weight_and_bias<scalar_t>(a, go, output_mask[1], output_mask[2],
                                                                       gw_acc, gb_acc);
                                      }
                                    });
  }
  if (output_mask[1]) grad_w = gw_acc.to(weight.scalar_type()).view({a.Cout, a.Cin, 1, 1});
  if (output_mask[2]) grad_b = gb_acc.to(input.scalar_type());
  return {grad_in, grad_w, grad_b};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pointwise_conv2d_stats_cpu(const at::Tensor& input,
                                                                          const at::Tensor& weight) {
  const auto a = prepare_pointwise(input, weight, c10::nullopt, c10::nullopt);
  check_pointwise_stats_count(a);
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  at::Tensor mean = at::zeros({a.Cout}, acc_opts);
  at::Tensor var = at::zeros({a.Cout}, acc_opts);
  if (out.numel() == 0) return {out, mean, var};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pointwise_conv2d_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor w = a.weight.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    run_forward<scalar_t, Act::kIdentity, true>(a, a.input, a.Cin, a.Cout, w.t(), out, &mean, &var);
  });
  return {out, mean, var};
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CPU, m) {
  m.impl("pointwise_conv2d", &pointwise_conv2d_cpu);
  m.impl("pointwise_conv2d_backward", &pointwise_conv2d_backward_cpu);
  m.impl("pointwise_conv2d_stats", &pointwise_conv2d_stats_cpu);
}

}  // namespace mobilenet_kernels
