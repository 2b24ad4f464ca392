// inverted_residual_eval, C++ CPU kernel: a whole MobileNet inverted-residual block in eval mode
// with every BatchNorm folded in (checks and geometry: csrc/inverted_residual.h).
//
// What is fused: y = project(act(dw(act(expand(x) + b_e)) + b_d)) + b_p [+ x]: the 1x1 expand GEMM
//   with its bias and activation, the k x k depthwise conv (stride, dilation, "same" zero padding)
//   with its bias and activation, the 1x1 project GEMM with its bias, and the residual add. The
//   expanded tensor (Chid channels, t times the input's) and the depthwise output never reach
//   memory: they live in per-thread buffers sized to stay in L2.
// Structure: tasks of one at::parallel_for are (image n, band of output rows [oh0, oh0 + bh)); the
//   band height is fixed by the shape alone (its buffers take ~kBandBytes). A task:
//     1. expand: the input rows the band reads (the valid rows of (bh - 1) * s + (k - 1) * d + 1, the
//        halo included) as a (pixels, Cin) matrix times W_e^T, one at::mm_out into E (pixels x Chid,
//        channels innermost, row stride Chp = Chid rounded up to 64 bytes), then + b_e and act in
//        place. The x matrix is a view of the input for float32/float64 (NCHW: a transposed view,
//        row stride H*W, which BLAS takes as it is); float16/bfloat16 are converted to float
//        first into a small staging buffer. Without an expand conv, E is the input rows copied
//        (transposed for NCHW, converted for half types).
//     2. depthwise over E into D (bh * OW pixels x Chp): per output pixel (two at a time where
//        neighbours share their valid taps, sharing the weight loads) and 64-byte block of
//        channels, register accumulators (a fixed-size array under `#pragma omp simd`) start at
//        b_d and add the valid taps in (row, column) order (the same order either way); act at
//        the store. The zero padding is
//        not materialised: rows and columns outside the image are left out of the tap range (so
//        padding acts as zeros of the expanded tensor, never act(b_e)).
//     3. project: one at::mm_out of D (bh * OW, Chid) with W_p^T into P (a float buffer: (pixels,
//        Cout) for channels_last, (Cout, pixels) for NCHW), then y = P + b_p [+ x], rounded once at
//        the store, in the output's layout.
//   Each task calls BLAS itself; inside the parallel region ATen's BLAS runs single-threaded, so
//   threads split the bands; a problem of a single band runs outside any parallel region.
//   Halo rows are expanded by both bands that read them: (bh - 1) * s + (k - 1) * d + 1 input rows
//   for bh * s new ones (e.g. 7/5 of the expand FLOPs for 5-row bands at k3 s1).
// Layouts: NCHW or channels_last input (other strides are made dense first); output dense in the
//   input's format (output_memory_format).
// Accumulation: float32 for float32/float16/bfloat16, float64 for float64. Half types: every
//   intermediate stays in float and the output is rounded once (the op-by-op path rounds the
//   expanded and depthwise tensors to the input dtype, so results differ slightly from it).
// Determinism: each output value is computed by exactly one task with a summation order fixed by
//   the shape (band heights do not depend on the thread count), so results are bitwise repeatable
//   given a deterministic single-threaded BLAS; no atomics, no races.
// Indexing: int64 throughout.
// ISA: the kernel is compiled for the baseline ISA and for AVX2+FMA (csrc/cpu/cpu_dispatch.h).
// Limits: inference only (no autograd formula); no squeeze-excite (such blocks run op by op); a
//   band always spans the whole image width, so very wide images with many hidden channels get
//   one-row bands whose buffers exceed L2 (still correct); NaN/Inf propagate as BLAS computes them.
//   Sigmoid/SiLU call ::exp per element.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu_dispatch.h"
#include "inverted_residual.h"

namespace mobilenet_kernels {
namespace {

using cpu::parallel_run;

constexpr int64_t kBandBytes = 512 * 1024;  // target size of a task's buffers (E, D, P, staging)

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
at::TensorOptions opts_of() {
  return at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
}

// A (rows, cols) view of raw memory with strides (rs, cs): no autograd metadata, so the BLAS calls
// made by worker threads go straight to the CPU kernel.
template <typename T>
at::Tensor view2d(const T* p, int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {rs, cs}, opts_of<T>());
}

template <typename scalar_t, Act A>
struct InvertedResidualKernel {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kDirect = std::is_same_v<scalar_t, acc_t>;  // BLAS reads the input in place
  static constexpr int64_t kCB = 64 / static_cast<int64_t>(sizeof(acc_t));  // channels per register block

  int64_t N = 0, Cin = 0, Chid = 0, Chp = 0, Cout = 0, H = 0, W = 0, OH = 0, OW = 0;
  int64_t k = 1, s = 1, d = 1, pad = 0;
  int64_t band = 1, bands = 1;  // output rows per band, bands per image
  int64_t max_in_rows = 1;      // input rows a band reads at most
  bool cl = false, has_expand = false, residual = false;
  const scalar_t* x = nullptr;
  scalar_t* y = nullptr;
  const acc_t* we = nullptr;  // (Chid, Cin)
  const acc_t* be = nullptr;  // (Chid,)
  const acc_t* wd = nullptr;  // (k * k, Chp): tap-major, zero beyond Chid
  const acc_t* bd = nullptr;  // (Chp,), zero beyond Chid
  const acc_t* wp = nullptr;  // (Cout, Chid)
  const acc_t* bp = nullptr;  // (Cout,)
  const int64_t* col_lo = nullptr;  // (OW,): valid column taps [col_lo, col_hi) of each output column
  const int64_t* col_hi = nullptr;

  // Staging of the input rows as float, only for half types with an expand conv.
  bool needs_staging() const { return has_expand && !kDirect; }

  // 1. E (rows * W, Chp) = act(x_rows . W_e^T + b_e), or the input rows themselves.
  C10_ALWAYS_INLINE void expand(int64_t n, int64_t r0, int64_t rows, acc_t* E, acc_t* xs) const {
    const int64_t HW = H * W, pix = rows * W;
    if (pix == 0) return;
    if (!has_expand) {
      if (cl) {
        const scalar_t* src = x + ((n * H + r0) * W) * Cin;
        for (int64_t p = 0; p < pix; ++p) {
          const scalar_t* __restrict__ sp = src + p * Cin;
          acc_t* __restrict__ e = E + p * Chp;
#pragma omp simd
          for (int64_t c = 0; c < Cin; ++c) e[c] = static_cast<acc_t>(sp[c]);
        }
      } else {
        const scalar_t* src = x + n * Cin * HW + r0 * W;
        constexpr int64_t kPB = 64;  // pixels per transpose block: the E lines it touches stay in L1
        for (int64_t p0 = 0; p0 < pix; p0 += kPB) {
          const int64_t p1 = std::min(pix, p0 + kPB);
          for (int64_t c = 0; c < Cin; ++c) {
            const scalar_t* __restrict__ sp = src + c * HW;
            for (int64_t p = p0; p < p1; ++p) E[p * Chp + c] = static_cast<acc_t>(sp[p]);
          }
        }
      }
      return;
    }
    at::Tensor xm;  // (pix, Cin)
    if (cl) {
      const scalar_t* src = x + ((n * H + r0) * W) * Cin;
      if constexpr (kDirect) {
        xm = view2d<acc_t>(src, pix, Cin, Cin, 1);
      } else {
        const int64_t total = pix * Cin;
#pragma omp simd
        for (int64_t i = 0; i < total; ++i) xs[i] = static_cast<acc_t>(src[i]);
        xm = view2d<acc_t>(xs, pix, Cin, Cin, 1);
      }
    } else {
      const scalar_t* src = x + n * Cin * HW + r0 * W;
      if constexpr (kDirect) {
        xm = view2d<acc_t>(src, pix, Cin, 1, HW);
      } else {
        for (int64_t c = 0; c < Cin; ++c) {
          const scalar_t* __restrict__ sp = src + c * HW;
          acc_t* __restrict__ dp = xs + c * pix;
#pragma omp simd
          for (int64_t p = 0; p < pix; ++p) dp[p] = static_cast<acc_t>(sp[p]);
        }
        xm = view2d<acc_t>(xs, pix, Cin, 1, pix);
      }
    }
    at::Tensor em = view2d<acc_t>(E, pix, Chid, Chp, 1);
    at::mm_out(em, xm, view2d<acc_t>(we, Cin, Chid, 1, Cin));
    const acc_t* __restrict__ b = be;
    for (int64_t p = 0; p < pix; ++p) {
      acc_t* __restrict__ e = E + p * Chp;
#pragma omp simd
      for (int64_t c = 0; c < Chid; ++c) e[c] = act_forward<A>(e[c] + b[c]);
    }
  }

  // 2. D (bh * OW, Chp) = act(dw(E) + b_d) for output rows [oh0, oh0 + bh); E holds input rows from r0.
  C10_ALWAYS_INLINE void depthwise(int64_t oh0, int64_t bh, int64_t r0, const acc_t* E, acc_t* D) const {
    for (int64_t r = 0; r < bh; ++r) {
      const int64_t ih_base = (oh0 + r) * s - pad;
      int64_t i_lo = 0, i_hi = k;  // valid kernel rows: 0 <= ih_base + i * d < H
      while (i_lo < k && ih_base + i_lo * d < 0) ++i_lo;
      while (i_hi > i_lo && ih_base + (i_hi - 1) * d >= H) --i_hi;
      for (int64_t ow = 0; ow < OW;) {
        if (ow + 1 < OW && col_lo[ow] == col_lo[ow + 1] && col_hi[ow] == col_hi[ow + 1]) {
          // A pair of output columns with the same valid taps: 4 accumulator chains, shared weight loads.
          const int64_t iw_base = ow * s - pad;
          const int64_t j_lo = col_lo[ow], j_hi = col_hi[ow];
          acc_t* out = D + (r * OW + ow) * Chp;
          for (int64_t c0 = 0; c0 < Chp; c0 += kCB) {
            acc_t acc0[kCB], acc1[kCB];
#pragma omp simd
            for (int64_t c = 0; c < kCB; ++c) acc0[c] = acc1[c] = bd[c0 + c];
            for (int64_t i = i_lo; i < i_hi; ++i) {
              const acc_t* erow = E + ((ih_base + i * d - r0) * W) * Chp + c0;
              const acc_t* wrow = wd + (i * k) * Chp + c0;
              for (int64_t j = j_lo; j < j_hi; ++j) {
                const acc_t* __restrict__ e0 = erow + (iw_base + j * d) * Chp;
                const acc_t* __restrict__ e1 = e0 + s * Chp;
                const acc_t* __restrict__ w = wrow + j * Chp;
#pragma omp simd
                for (int64_t c = 0; c < kCB; ++c) {
                  acc0[c] += w[c] * e0[c];
                  acc1[c] += w[c] * e1[c];
                }
              }
            }
            acc_t* __restrict__ o0 = out + c0;
            acc_t* __restrict__ o1 = out + Chp + c0;
#pragma omp simd
            for (int64_t c = 0; c < kCB; ++c) {
              o0[c] = act_forward<A>(acc0[c]);
              o1[c] = act_forward<A>(acc1[c]);
            }
          }
          ow += 2;
          continue;
        }
        const int64_t iw_base = ow * s - pad;
        const int64_t j_lo = col_lo[ow], j_hi = col_hi[ow];
        acc_t* out = D + (r * OW + ow) * Chp;
        for (int64_t c0 = 0; c0 < Chp; c0 += kCB) {
          acc_t acc[kCB];
#pragma omp simd
          for (int64_t c = 0; c < kCB; ++c) acc[c] = bd[c0 + c];
          for (int64_t i = i_lo; i < i_hi; ++i) {
            const acc_t* erow = E + ((ih_base + i * d - r0) * W) * Chp + c0;
            const acc_t* wrow = wd + (i * k) * Chp + c0;
            for (int64_t j = j_lo; j < j_hi; ++j) {
              const acc_t* __restrict__ e = erow + (iw_base + j * d) * Chp;
              const acc_t* __restrict__ w = wrow + j * Chp;
#pragma omp simd
              for (int64_t c = 0; c < kCB; ++c) acc[c] += w[c] * e[c];
            }
          }
          acc_t* __restrict__ o = out + c0;
#pragma omp simd
          for (int64_t c = 0; c < kCB; ++c) o[c] = act_forward<A>(acc[c]);
        }
        ++ow;
      }
    }
  }

  // 3. y[rows oh0..] = D . W_p^T + b_p [+ x], via P (float), one rounding at the store.
  C10_ALWAYS_INLINE void project(int64_t n, int64_t oh0, int64_t bh, const acc_t* D, acc_t* P) const {
    const int64_t pix = bh * OW, OHW = OH * OW, HW = H * W;
    const at::Tensor dm = view2d<acc_t>(D, pix, Chid, Chp, 1);
    if (cl) {
      at::Tensor pm = view2d<acc_t>(P, pix, Cout, Cout, 1);
      at::mm_out(pm, dm, view2d<acc_t>(wp, Chid, Cout, 1, Chid));
      scalar_t* yb = y + (n * OHW + oh0 * OW) * Cout;
      const scalar_t* xb = x + (n * HW + oh0 * W) * Cin;  // residual: s = 1, so OH = H, OW = W, Cin = Cout
      const acc_t* __restrict__ b = bp;
      for (int64_t p = 0; p < pix; ++p) {
        const acc_t* __restrict__ z = P + p * Cout;
        scalar_t* __restrict__ o = yb + p * Cout;
        if (residual) {
          const scalar_t* __restrict__ rr = xb + p * Cout;
#pragma omp simd
          for (int64_t c = 0; c < Cout; ++c) o[c] = static_cast<scalar_t>(z[c] + b[c] + static_cast<acc_t>(rr[c]));
        } else {
#pragma omp simd
          for (int64_t c = 0; c < Cout; ++c) o[c] = static_cast<scalar_t>(z[c] + b[c]);
        }
      }
    } else {
      at::Tensor pm = view2d<acc_t>(P, Cout, pix, pix, 1);
      at::mm_out(pm, view2d<acc_t>(wp, Cout, Chid, Chid, 1), dm.t());
      for (int64_t c = 0; c < Cout; ++c) {
        const acc_t* __restrict__ z = P + c * pix;
        scalar_t* __restrict__ o = y + (n * Cout + c) * OHW + oh0 * OW;
        const acc_t b = bp[c];
        if (residual) {
          const scalar_t* __restrict__ rr = x + (n * Cin + c) * HW + oh0 * W;
#pragma omp simd
          for (int64_t p = 0; p < pix; ++p) o[p] = static_cast<scalar_t>(z[p] + b + static_cast<acc_t>(rr[p]));
        } else {
#pragma omp simd
          for (int64_t p = 0; p < pix; ++p) o[p] = static_cast<scalar_t>(z[p] + b);
        }
      }
    }
  }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    at::AutoDispatchBelowADInplaceOrView guard;  // worker threads: plain tensors, straight to the kernel
    // E starts zeroed: its channels beyond Chid are never written and must read as zeros.
    const at::Tensor e_buf = at::zeros({std::max<int64_t>(1, max_in_rows * W * Chp)}, opts_of<acc_t>());
    const at::Tensor d_buf = at::empty({std::max<int64_t>(1, band * OW * Chp)}, opts_of<acc_t>());
    const at::Tensor p_buf = at::empty({std::max<int64_t>(1, band * OW * Cout)}, opts_of<acc_t>());
    at::Tensor x_buf;
    if (needs_staging()) x_buf = at::empty({std::max<int64_t>(1, max_in_rows * W * Cin)}, opts_of<acc_t>());
    acc_t* E = e_buf.data_ptr<acc_t>();
    acc_t* D = d_buf.data_ptr<acc_t>();
    acc_t* P = p_buf.data_ptr<acc_t>();
    acc_t* xs = x_buf.defined() ? x_buf.data_ptr<acc_t>() : nullptr;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / bands, oh0 = (t % bands) * band;
      const int64_t bh = std::min(band, OH - oh0);
      const int64_t first = oh0 * s - pad, last = (oh0 + bh - 1) * s - pad + (k - 1) * d;  // input rows read
      const int64_t r0 = std::max<int64_t>(0, first), r1 = std::min(H, last + 1);
      expand(n, r0, std::max<int64_t>(0, r1 - r0), E, xs);
      depthwise(oh0, bh, r0, E, D);
      project(n, oh0, bh, D, P);
    }
  }
};

template <typename scalar_t, Act A>
void run_inverted_residual(const InvertedResidualArgs& a, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Kernel = InvertedResidualKernel<scalar_t, A>;
  Kernel kr;
  kr.N = a.N;
  kr.Cin = a.Cin;
  kr.Chid = a.Chid;
  kr.Chp = ceil_div(a.Chid, Kernel::kCB) * Kernel::kCB;
  kr.Cout = a.Cout;
  kr.H = a.H;
  kr.W = a.W;
  kr.OH = a.OH;
  kr.OW = a.OW;
  kr.k = a.k;
  kr.s = a.stride;
  kr.d = a.dilation;
  kr.pad = a.pad;
  kr.cl = a.channels_last();
  kr.has_expand = a.has_expand();
  kr.residual = a.residual;

  // Band height from the shape alone: the buffers of a band of bh rows hold
  // E ((bh - 1) s + (k - 1) d + 1 rows of W x Chp), D and P (bh x OW x Chp, Cout) and the staging.
  const int64_t halo = (a.k - 1) * a.dilation + 1;
  const int64_t stage_c = kr.needs_staging() ? a.Cin : 0;
  const int64_t per_row = a.stride * a.W * (kr.Chp + stage_c) + a.OW * (kr.Chp + a.Cout);
  const int64_t fixed = (halo - a.stride) * a.W * (kr.Chp + stage_c);
  const int64_t budget = kBandBytes / static_cast<int64_t>(sizeof(acc_t));
  int64_t band = std::clamp<int64_t>((budget - fixed) / std::max<int64_t>(1, per_row), 1, a.OH);
  kr.bands = ceil_div(a.OH, band);
  kr.band = ceil_div(a.OH, kr.bands);  // balanced bands
  kr.max_in_rows = std::min(a.H, (kr.band - 1) * a.stride + halo);

  // Valid column taps of each output column: 0 <= ow * s - pad + j * d < W.
  std::vector<int64_t> col_lo(static_cast<size_t>(a.OW)), col_hi(static_cast<size_t>(a.OW));
  for (int64_t ow = 0; ow < a.OW; ++ow) {
    const int64_t base = ow * a.stride - a.pad;
    int64_t lo = 0, hi = a.k;
    while (lo < a.k && base + lo * a.dilation < 0) ++lo;
    while (hi > lo && base + (hi - 1) * a.dilation >= a.W) --hi;
    col_lo[ow] = lo;
    col_hi[ow] = hi;
  }
  kr.col_lo = col_lo.data();
  kr.col_hi = col_hi.data();

  // Depthwise weights tap-major (k * k, Chp) and bias (Chp,), zero beyond Chid.
  const auto acc_opts = opts_of<acc_t>();
  at::Tensor wd = at::zeros({a.k * a.k, kr.Chp}, acc_opts);
  at::Tensor bd = at::zeros({kr.Chp}, acc_opts);
  if (a.Chid > 0) {
    wd.narrow(1, 0, a.Chid).copy_(a.dw_weight.t());
    bd.narrow(0, 0, a.Chid).copy_(a.dw_bias);
  }
  kr.x = a.input.data_ptr<scalar_t>();
  kr.y = out.data_ptr<scalar_t>();
  if (kr.has_expand) {
    kr.we = a.expand_weight.data_ptr<acc_t>();
    kr.be = a.expand_bias.data_ptr<acc_t>();
  }
  kr.wd = wd.data_ptr<acc_t>();
  kr.bd = bd.data_ptr<acc_t>();
  kr.wp = a.project_weight.data_ptr<acc_t>();
  kr.bp = a.project_bias.data_ptr<acc_t>();
  parallel_run(kr, a.N * kr.bands);
}

at::Tensor inverted_residual_eval_cpu(const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
                                      const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                                      const at::Tensor& dw_bias, const at::Tensor& project_weight,
                                      const at::Tensor& project_bias, int64_t stride, int64_t dilation,
                                      c10::string_view activation, bool residual) {
  const auto a = prepare_inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                           project_bias, stride, dilation, std::string(activation), residual);
  at::Tensor out = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "inverted_residual_eval_cpu", [&] {
    MK_DISPATCH_ACTIVATION(a.act, [&] { run_inverted_residual<scalar_t, kAct>(a, out); });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CPU, m) { m.impl("inverted_residual_eval", &inverted_residual_eval_cpu); }

}  // namespace mobilenet_kernels
