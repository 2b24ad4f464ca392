// inverted_residual_eval, C++ CPU kernel (included by the inverted_residual*.cpp units): a whole
// MobileNet inverted-residual block in eval mode with every BatchNorm folded in (checks and
// geometry: csrc/inverted_residual.h).
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
//     2. depthwise over E into D (bh * OW pixels x Chp), read in place by the depthwise op's
//        channels_last direct rows (csrc/cpu/depthwise_direct.h: register blocks of pixels x
//        vectors of channels, or sliding blocks for k 3/5/7 at dilation 1 and stride <= 2); each
//        pixel's taps are summed in (row, column) order, then + b_d, act at the store. The zero
//        padding is not materialised: rows and columns outside the image are left out of each
//        pixel's tap list (so padding acts as zeros of the expanded tensor, never act(b_e)).
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
// ISA: the kernel is compiled for the baseline ISA and for AVX2+FMA (csrc/cpu/cpu_dispatch.h); its
//   depthwise stage out of line, once per (accumulation dtype, activation, ISA) (DepthwiseStage).
// Build: one unit per activation (inverted_residual_<act>.cpp, each an explicit specialization of
//   cpu::inverted_residual_forward<A> at every dtype), compiled side by side; the op and its
//   registration are in inverted_residual.cpp.
// Squeeze-excite (V3's blocks): its pooling needs the whole depthwise output before the first
//   projection, so the tasks run twice: pass 1 runs steps 1 and 2 into a block-wide D store (N,
//   OH * OW, Chp) and writes each task's channel sums of D (in pixel order), merged over the bands
//   in order into the means; the squeeze-excite op's excite step (cpu::squeeze_excite_scale) makes
//   the (N, Chid) scale; pass 2 reads its band's D back, multiplies it by the scale and runs step
//   3. Unlike the GPU kernels' pass 2 it does not recompute steps 1 and 2: on a CPU the expand
//   GEMM costs more than D's round trip (a recomputing version measured 0.68-0.83x the op-by-op
//   block, this one 1.07-1.16x: benchmarks/results/inverted_residual_cpu*.json). The expanded
//   tensor still never reaches memory; D is written and read once (op by op: written twice, read
//   three times).
// Limits: inference only (no autograd formula); a band always spans the whole image width, so very
//   wide images with many hidden channels get one-row bands whose buffers exceed L2 (still
//   correct); NaN/Inf propagate as BLAS computes them. Sigmoid/SiLU call ::exp per element. The D
//   store of a squeeze-excite block holds the whole depthwise output (as op by op).
#pragma once

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
#include "depthwise_direct.h"
#include "inverted_residual.h"

namespace mobilenet_kernels {
namespace {

using cpu::parallel_run;

constexpr int64_t kBandBytes = 512 * 1024;  // target size of a task's buffers (E, D, P, staging)

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

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

// 2. The depthwise stage: D (bh * OW, Chp) = act(dw(E) + b_d) for output rows [oh0, oh0 + bh), E
// holding the input rows from r0 (pixel stride Chp, row stride W * Chp). The depthwise op's
// channels_last direct rows (csrc/cpu/depthwise_direct.h) read E in place; the padding is left out
// of each pixel's tap list. E and D hold Chp channels per pixel, all computed as whole vectors (those
// beyond Chid are zeros, as are their weights and bias).
template <typename T>
struct DepthwiseStage {
  cpu::DirectRowGeom g;
  int64_t H = 0, k = 1, s = 1, d = 1, pad = 0;
  const T* wd = nullptr;  // (k * k, Chp): tap-major, zero beyond Chid
  const T* bd = nullptr;  // (Chp,), zero beyond Chid

  // offs: 4 * k * k tap offsets (scratch).
  template <Act A>
  C10_ALWAYS_INLINE void rows(int64_t oh0, int64_t bh, int64_t r0, const T* E, T* D, int64_t* offs) const {
    const int64_t row_out = g.OW * g.px;
    for (int64_t r = 0; r < bh; ++r) {
      const cpu::TapRange kh = cpu::valid_taps(oh0 + r, s, pad, d, k, H);
      // E at (the row of the first valid kernel row, column 0); a row without one reads nothing
      const T* erow = E + std::max<int64_t>(0, (oh0 + r) * s - pad + kh.lo * d - r0) * g.row;
      cpu::direct_row<A, T>(g, kh, erow, wd, bd, D + r * row_out, g.px, offs, cpu::RowPrefetch());
    }
  }
};

// The stage compiled out of line once per (accumulation dtype, activation, ISA), not inlined into
// the kernel of each input dtype: float16/bfloat16/float32 share the float code.
template <Act A, typename T>
__attribute__((noinline)) void depthwise_rows_baseline(const DepthwiseStage<T>& st, int64_t oh0, int64_t bh,
                                                       int64_t r0, const T* E, T* D, int64_t* offs) {
  st.template rows<A>(oh0, bh, r0, E, D, offs);
}
#ifdef MK_AVX2_CLONES
template <Act A, typename T>
__attribute__((noinline, target("avx2,fma"))) void depthwise_rows_avx2(const DepthwiseStage<T>& st, int64_t oh0,
                                                                       int64_t bh, int64_t r0, const T* E, T* D,
                                                                       int64_t* offs) {
  st.template rows<A>(oh0, bh, r0, E, D, offs);
}
#endif
template <Act A, typename T>
C10_ALWAYS_INLINE void depthwise_rows_isa(const DepthwiseStage<T>& st, int64_t oh0, int64_t bh, int64_t r0,
                                          const T* E, T* D, int64_t* offs) {
#ifdef MK_AVX2_CLONES
  if (cpu::use_avx2()) return depthwise_rows_avx2<A, T>(st, oh0, bh, r0, E, D, offs);
#endif
  depthwise_rows_baseline<A, T>(st, oh0, bh, r0, E, D, offs);
}

template <typename scalar_t, Act A>
struct InvertedResidualKernel {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr bool kDirect = std::is_same_v<scalar_t, acc_t>;  // BLAS reads the input in place
  static constexpr int64_t kCB = 64 / static_cast<int64_t>(sizeof(acc_t));  // channels per 64 bytes (Chp)

  int64_t N = 0, Cin = 0, Chid = 0, Chp = 0, Cout = 0, H = 0, W = 0, OH = 0, OW = 0;
  int64_t k = 1, s = 1, d = 1, pad = 0;
  int64_t band = 1, bands = 1;  // output rows per band, bands per image
  int64_t max_in_rows = 1;      // input rows a band reads at most
  bool cl = false, has_expand = false, residual = false;
  const scalar_t* x = nullptr;
  scalar_t* y = nullptr;
  const acc_t* we = nullptr;  // (Chid, Cin)
  const acc_t* be = nullptr;  // (Chid,)
  const acc_t* wp = nullptr;  // (Cout, Chid)
  const acc_t* bp = nullptr;  // (Cout,)
  DepthwiseStage<acc_t> dw;
  // Squeeze-excite blocks run two passes over the tasks: pass 1 (sums set) computes D into the
  // block-wide dstore and writes each task's channel sums of it to sums[task] (Chid each); pass 2
  // (scale set) reads its D back from dstore, scales it by scale[n] (Chid each) and projects.
  acc_t* sums = nullptr;          // (N * bands, Chid); pass 1 only
  const acc_t* scale = nullptr;   // (N, Chid) or null
  acc_t* dstore = nullptr;        // (N, OH * OW, Chp): D of every band; squeeze-excite only

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

  // 2. D (bh * OW, Chp) = act(dw(E) + b_d) for output rows [oh0, oh0 + bh) (DepthwiseStage).
  C10_ALWAYS_INLINE void depthwise(int64_t oh0, int64_t bh, int64_t r0, const acc_t* E, acc_t* D,
                                   int64_t* offs) const {
    depthwise_rows_isa<A, acc_t>(dw, oh0, bh, r0, E, D, offs);
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

  // Squeeze-excite, pass 1: out[c] = sum over the pix pixels of D[p, c], in pixel order.
  C10_ALWAYS_INLINE void column_sums(const acc_t* D, int64_t pix, acc_t* out) const {
    std::fill(out, out + Chid, acc_t(0));
    for (int64_t p = 0; p < pix; ++p) {
      const acc_t* __restrict__ dp = D + p * Chp;
      acc_t* __restrict__ o = out;
#pragma omp simd
      for (int64_t c = 0; c < Chid; ++c) o[c] += dp[c];
    }
  }

  // Squeeze-excite, pass 2: D[p, c] *= sc[c] over the pix pixels (in float: no rounding, as every
  // intermediate here).
  C10_ALWAYS_INLINE void scale_rows(acc_t* D, int64_t pix, const acc_t* sc) const {
    for (int64_t p = 0; p < pix; ++p) {
      acc_t* __restrict__ dp = D + p * Chp;
      const acc_t* __restrict__ sp = sc;
#pragma omp simd
      for (int64_t c = 0; c < Chid; ++c) dp[c] *= sp[c];
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
    std::vector<int64_t> offs(static_cast<size_t>(4 * k * k));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / bands, oh0 = (t % bands) * band;
      const int64_t bh = std::min(band, OH - oh0);
      const int64_t first = oh0 * s - pad, last = (oh0 + bh - 1) * s - pad + (k - 1) * d;  // input rows read
      const int64_t r0 = std::max<int64_t>(0, first), r1 = std::min(H, last + 1);
      acc_t* Dt = dstore != nullptr ? dstore + (n * OH + oh0) * OW * Chp : D;  // this band's D
      if (scale == nullptr) {  // pass 2 of a squeeze-excite block reads pass 1's D instead
        expand(n, r0, std::max<int64_t>(0, r1 - r0), E, xs);
        depthwise(oh0, bh, r0, E, Dt, offs.data());
      }
      if (sums != nullptr) {
        column_sums(Dt, bh * OW, sums + t * Chid);
        continue;
      }
      if (scale != nullptr) scale_rows(Dt, bh * OW, scale + n * Chid);
      project(n, oh0, bh, Dt, P);
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

  // The depthwise rows over E; E is in cache (a band's buffers fit L2), where sliding blocks
  // measured faster in the depthwise op.
  kr.dw.g.set(a.W, a.OW, a.k, a.dilation, a.k, a.stride, a.pad, a.dilation);
  kr.dw.g.px = kr.Chp;
  kr.dw.g.row = a.W * kr.Chp;
  kr.dw.g.Cp = kr.Chp;
  kr.dw.g.blk = cpu::direct_block_for(kr.Chp, cpu::kVec<acc_t>, false);
  kr.dw.g.slide = a.dilation == 1 && a.stride <= 2 && cpu::slide_width(a.k);
  kr.dw.H = a.H;
  kr.dw.k = a.k;
  kr.dw.s = a.stride;
  kr.dw.d = a.dilation;
  kr.dw.pad = a.pad;

  // Depthwise weights tap-major (k * k, Chp) and bias (Chp,), zero beyond Chid.
  const auto acc_opts = opts_of<acc_t>();
  const std::vector<acc_t> wd = cpu::tap_major(a.dw_weight.data_ptr<acc_t>(), a.Chid, a.k * a.k, kr.Chp);
  at::Tensor bd = at::zeros({kr.Chp}, acc_opts);
  if (a.Chid > 0) bd.narrow(0, 0, a.Chid).copy_(a.dw_bias);
  kr.x = a.input.data_ptr<scalar_t>();
  kr.y = out.data_ptr<scalar_t>();
  if (kr.has_expand) {
    kr.we = a.expand_weight.data_ptr<acc_t>();
    kr.be = a.expand_bias.data_ptr<acc_t>();
  }
  kr.dw.wd = wd.data();
  kr.dw.bd = bd.data_ptr<acc_t>();
  kr.wp = a.project_weight.data_ptr<acc_t>();
  kr.bp = a.project_bias.data_ptr<acc_t>();
  at::Tensor scale, dstore;
  if (a.has_se()) {
    // Pass 1: D of every band into dstore, and per-band channel sums of it, merged over the bands
    // in order into the means (N, Chid); the squeeze-excite op's excite step turns them into the
    // scale for pass 2.
    const at::Tensor sums = at::empty({a.N * kr.bands, a.Chid}, acc_opts);
    dstore = at::empty({std::max<int64_t>(1, a.N * a.OH * a.OW * kr.Chp)}, acc_opts);
    kr.dstore = dstore.data_ptr<acc_t>();
    kr.sums = sums.data_ptr<acc_t>();
    parallel_run(kr, a.N * kr.bands);
    kr.sums = nullptr;
    at::Tensor pooled = at::empty({a.N, a.Chid}, acc_opts);
    const acc_t inv = acc_t(1) / static_cast<acc_t>(a.OH * a.OW);
    for (int64_t n = 0; n < a.N; ++n) {
      acc_t* __restrict__ pn = pooled.data_ptr<acc_t>() + n * a.Chid;
      std::fill(pn, pn + a.Chid, acc_t(0));
      for (int64_t b = 0; b < kr.bands; ++b) {
        const acc_t* __restrict__ src = sums.data_ptr<acc_t>() + (n * kr.bands + b) * a.Chid;
        for (int64_t c = 0; c < a.Chid; ++c) pn[c] += src[c];
      }
      for (int64_t c = 0; c < a.Chid; ++c) pn[c] *= inv;
    }
    scale = at::empty({a.N, a.Chid}, acc_opts);
    SqueezeExciteArgs se;
    se.layout = ChannelLayout{a.N, a.Chid, a.OH * a.OW, false};
    se.S = a.S;
    se.w1 = a.se_w1;
    se.b1 = a.se_b1;
    se.w2 = a.se_w2;
    se.b2 = a.se_b2;
    se.act = a.se_act;
    se.scale_act = a.se_scale_act;
    cpu::squeeze_excite_scale(se, pooled, scale);
    kr.scale = scale.data_ptr<acc_t>();
  }
  parallel_run(kr, a.N * kr.bands);
}

// The kernel at every dtype for one activation: what each inverted_residual_<act>.cpp instantiates.
template <Act A>
void run_every_dtype(const InvertedResidualArgs& a, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "inverted_residual_eval_cpu",
                                  [&] { run_inverted_residual<scalar_t, A>(a, out); });
}

}  // namespace

namespace cpu {
// The units' entry points: the whole-block kernel at every dtype, one unit per activation.
template <Act A>
void inverted_residual_forward(const InvertedResidualArgs& a, at::Tensor& out);
template <> void inverted_residual_forward<Act::kIdentity>(const InvertedResidualArgs& a, at::Tensor& out);
template <> void inverted_residual_forward<Act::kRelu>(const InvertedResidualArgs& a, at::Tensor& out);
template <> void inverted_residual_forward<Act::kRelu6>(const InvertedResidualArgs& a, at::Tensor& out);
template <> void inverted_residual_forward<Act::kHardswish>(const InvertedResidualArgs& a, at::Tensor& out);
template <> void inverted_residual_forward<Act::kHardsigmoid>(const InvertedResidualArgs& a, at::Tensor& out);
template <> void inverted_residual_forward<Act::kSigmoid>(const InvertedResidualArgs& a, at::Tensor& out);
template <> void inverted_residual_forward<Act::kSilu>(const InvertedResidualArgs& a, at::Tensor& out);
}  // namespace cpu

}  // namespace mobilenet_kernels
