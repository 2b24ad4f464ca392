// Channels-last "direct" depthwise convolution, shared by the C++ CPU kernels: the depthwise op's
// float32/float64 channels_last forward and grad_input (csrc/cpu/depthwise_conv2d_kernels.h, which
// describes the method) and the depthwise stage of the whole-block kernel
// (csrc/cpu/inverted_residual_kernels.h, over its expanded rows in a per-thread buffer).
// The input is read in place: pixels `px` elements apart (channels innermost), rows `row` elements
// apart; the zero padding is never materialised: each output pixel sums only its valid taps, the
// interior pixels of a row (window inside the image) through one tap list without bounds checks
// (register blocks of P pixels x NV 32-byte vectors of channels, or "sliding" blocks), the border
// pixels through a list of their own. The taps of one output are summed in tap-list order (kernel
// rows, then columns, ascending) from the first, then + bias, then the activation at the store,
// whichever block computes it, so every pixel's bits are fixed by the shape.
// Everything here is called from kernels compiled as target-attribute clones (cpu_dispatch.h), so
// it is always-inlined templates (compiled for the ISA of their caller), except the sliding runs,
// which are compiled out of line once per ISA (slide_run_isa).
#pragma once

#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_dispatch.h"
#include "mk_common.h"  // Act, act_forward

namespace mobilenet_kernels {
namespace cpu {

// ----------------------------------------------------------------------------- geometry

inline int64_t div_floor(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
inline int64_t div_ceil(int64_t a, int64_t b) { return -div_floor(-a, b); }

// Taps k in [lo, hi) read an input index o * s - p + k * d inside [0, L).
struct TapRange {
  int64_t lo, hi;
};
inline TapRange valid_taps(int64_t o, int64_t s, int64_t p, int64_t d, int64_t K, int64_t L) {
  const int64_t lo = std::max<int64_t>(0, div_ceil(p - o * s, d));
  return {lo, std::max(lo, std::min<int64_t>(K, div_floor(L - 1 + p - o * s, d) + 1))};
}

template <typename acc_t>
constexpr int kVec = 32 / static_cast<int>(sizeof(acc_t));  // one AVX2 register

// (taps, Cp) from w (C, taps): tap t of channel c at t * Cp + c, zero for c >= C.
template <typename T>
std::vector<T> tap_major(const T* w, int64_t C, int64_t taps, int64_t Cp) {
  std::vector<T> wt(static_cast<size_t>(taps * Cp), T(0));
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t t = 0; t < taps; ++t) wt[t * Cp + c] = w[c * taps + t];
  }
  return wt;
}

// ----------------------------------------------------------------------------- register blocks

// One 32-byte vector of T for the direct kernels. GCC/Clang vector extensions: lowered to AVX2 (and
// FMA, by contraction) in the AVX2 clones, to pairs of SSE registers in the baseline ones. Arrays of
// them indexed by constants stay in registers, where `omp simd` loops over plain arrays got spilled.
#if defined(__GNUC__) || defined(__clang__)
template <typename T>
struct Vec32;
template <>
struct Vec32<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec32<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using vec_t = typename Vec32<T>::type;
#else
template <typename T>
struct vec_t {
  T v[kVec<T>];
  vec_t operator+(const vec_t& o) const { vec_t r; for (int l = 0; l < kVec<T>; ++l) r.v[l] = v[l] + o.v[l]; return r; }
  vec_t operator*(const vec_t& o) const { vec_t r; for (int l = 0; l < kVec<T>; ++l) r.v[l] = v[l] * o.v[l]; return r; }
  vec_t& operator+=(const vec_t& o) { for (int l = 0; l < kVec<T>; ++l) v[l] += o.v[l]; return *this; }
};
#endif
template <typename T>
C10_ALWAYS_INLINE vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
C10_ALWAYS_INLINE void vstore(T* p, const vec_t<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}

// acc[p][v] = sum_t in[in_off[t] + p * step + v * V + l] * w[w_off[t] + v * V + l] (lanes l) for P
// pixels and NV vectors of channels; taps >= 1. Seeded by the first tap.
template <typename T, int P, int NV>
C10_ALWAYS_INLINE void direct_block(const T* in, int64_t step, const int64_t* in_off, const T* w,
                                    const int64_t* w_off, int64_t taps, vec_t<T> (&acc)[P][NV]) {
  constexpr int V = kVec<T>;
  {
    const T* ip = in + in_off[0];
    vec_t<T> wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = vload(w + w_off[0] + v * V);
    for (int p = 0; p < P; ++p) {
      for (int v = 0; v < NV; ++v) acc[p][v] = vload(ip + p * step + v * V) * wv[v];
    }
  }
  for (int64_t t = 1; t < taps; ++t) {
    const T* ip = in + in_off[t];
    vec_t<T> wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = vload(w + w_off[t] + v * V);
    for (int p = 0; p < P; ++p) {
      for (int v = 0; v < NV; ++v) acc[p][v] += vload(ip + p * step + v * V) * wv[v];
    }
  }
}

// out[p * step + v * V + l] = act(acc[p][v] + bias[v * V + l]).
template <Act A, typename T, int P, int NV>
C10_ALWAYS_INLINE void direct_store(const vec_t<T> (&acc)[P][NV], const T* bias, T* out, int64_t step) {
  constexpr int V = kVec<T>;
  vec_t<T> bv[NV];
  for (int v = 0; v < NV; ++v) bv[v] = vload(bias + v * V);
  for (int p = 0; p < P; ++p) {
    for (int v = 0; v < NV; ++v) vstore(out + p * step + v * V, acc[p][v] + bv[v]);
  }
  if constexpr (A != Act::kIdentity) {
    for (int p = 0; p < P; ++p) {
      T* __restrict__ o = out + p * step;
#pragma omp simd
      for (int j = 0; j < NV * V; ++j) o[j] = act_forward<A>(o[j]);
    }
  }
}

// out[p * out_step + c] = act(bias[c] + sum_t in[in_off[t] + p * in_step + c] * w[w_off[t] + c]) for
// P pixels and channels c < cn; taps >= 1. Blocks of NV vectors of channels, then one block of each
// smaller width for the rest, then scalars past the last whole vector.
template <Act A, typename T, int P, int NV>
C10_ALWAYS_INLINE void direct_pixels(const T* in, int64_t in_step, const int64_t* in_off, const T* w,
                                     const int64_t* w_off, int64_t taps, const T* bias, T* out, int64_t out_step,
                                     int64_t cn) {
  constexpr int V = kVec<T>;
  int64_t c = 0;
  for (; c + NV * V <= cn; c += NV * V) {
    vec_t<T> acc[P][NV];
    direct_block<T, P, NV>(in + c, in_step, in_off, w + c, w_off, taps, acc);
    direct_store<A, T, P, NV>(acc, bias + c, out + c, out_step);
  }
  if constexpr (NV > 1) {
    if (c < cn) {
      direct_pixels<A, T, P, NV - 1>(in + c, in_step, in_off, w + c, w_off, taps, bias + c, out + c, out_step,
                                     cn - c);
    }
  } else {
    for (; c < cn; ++c) {  // channels past the last whole vector
      for (int p = 0; p < P; ++p) {
        const T* ip = in + p * in_step + c;
        T s = ip[in_off[0]] * w[w_off[0] + c];
        for (int64_t t = 1; t < taps; ++t) s += ip[in_off[t]] * w[w_off[t] + c];
        out[p * out_step + c] = act_forward<A>(s + bias[c]);
      }
    }
  }
}

// Software prefetch of the input rows the next output row adds, spread over the register blocks of
// the current row: the block of output pixels [j, j + P) prefetches input pixels [j * step, (j + P) *
// step + extra) of each such row, `bytes` (one channel chunk) per pixel. Without it the large layers
// (input beyond the last-level cache) wait on memory at each new row: the hardware prefetchers do not
// run ahead of several interleaved strided streams.
struct RowPrefetch {
  const char* base = nullptr;  // first row, pixel of the run's first output pixel; nullptr: off
  int64_t rows = 0, row_bytes = 0, px_bytes = 0, step = 1, extra = 0, bytes = 0;
  int64_t px_lo = 0, px_hi = 0;  // pixels inside the image, relative to base
  bool write = false;
  C10_ALWAYS_INLINE void block(int64_t j, int64_t P) const {
#if defined(__GNUC__) || defined(__clang__)
    if (base == nullptr) return;
    const int64_t p0 = std::max(px_lo, j * step), p1 = std::min(px_hi, (j + P) * step + extra);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t px = p0; px < p1; ++px) {
        const char* q = base + r * row_bytes + px * px_bytes;
        const char* e = q + bytes;
        for (q = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(q) & ~uintptr_t(63)); q < e; q += 64) {
          if (write) __builtin_prefetch(q, 1, 3);
          else __builtin_prefetch(q, 0, 1);
        }
      }
    }
#endif
  }
};

// Register blocks of the direct kernels: (pixels, vectors of channels). Data in cache: 3 x 4 (few
// loads per FMA); wide pixels (>= 4 cache lines) streamed from memory: 2 x 4 (fewer input pixels in
// flight per block), which measured faster there; fewer than 4 vectors of channels: 6 x 2.
enum class DirectBlock { k3x4, k2x4, k6x2 };

// m consecutive pixels (steps in_step / out_step) sharing one tap list: register blocks of P pixels x
// NV vectors of channels, then one block of the remaining pixels.
template <Act A, typename T, int P, int NV>
C10_ALWAYS_INLINE void direct_run_cfg(const T* in, int64_t in_step, const int64_t* in_off, const T* w,
                                      const int64_t* w_off, int64_t taps, const T* bias, T* out, int64_t out_step,
                                      int64_t m, int64_t cn, const RowPrefetch& pf) {
  int64_t j = 0;
  for (; j + P <= m; j += P) {
    pf.block(j, j + 2 * P > m ? m - j + 2 : P);
    direct_pixels<A, T, P, NV>(in + j * in_step, in_step, in_off, w, w_off, taps, bias, out + j * out_step, out_step,
                               cn);
  }
  in += j * in_step;
  out += j * out_step;
  if constexpr (P > 1) {
    if (m - j == P - 1) {
      direct_pixels<A, T, P - 1, NV>(in, in_step, in_off, w, w_off, taps, bias, out, out_step, cn);
      return;
    }
  }
  if constexpr (P > 2) {
    if (m - j == P - 2) {
      direct_pixels<A, T, P - 2, NV>(in, in_step, in_off, w, w_off, taps, bias, out, out_step, cn);
      return;
    }
  }
  for (; j < m; ++j, in += in_step, out += out_step) {
    direct_pixels<A, T, 1, NV>(in, in_step, in_off, w, w_off, taps, bias, out, out_step, cn);
  }
}

template <Act A, typename T>
C10_ALWAYS_INLINE void direct_run(const T* in, int64_t in_step, const int64_t* in_off, const T* w,
                                  const int64_t* w_off, int64_t taps, const T* bias, T* out, int64_t out_step,
                                  int64_t m, int64_t cn, DirectBlock blk, const RowPrefetch& pf) {
  switch (blk) {
    case DirectBlock::k2x4:
      direct_run_cfg<A, T, 2, 4>(in, in_step, in_off, w, w_off, taps, bias, out, out_step, m, cn, pf);
      break;
    case DirectBlock::k6x2:
      direct_run_cfg<A, T, 6, 2>(in, in_step, in_off, w, w_off, taps, bias, out, out_step, m, cn, pf);
      break;
    default: direct_run_cfg<A, T, 3, 4>(in, in_step, in_off, w, w_off, taps, bias, out, out_step, m, cn, pf);
  }
}

// The register blocks for C channels, with the input streamed from memory or not.
inline DirectBlock direct_block_for(int64_t C, int64_t V, bool stream) {
  if (C < 4 * V) return DirectBlock::k6x2;
  return stream ? DirectBlock::k2x4 : DirectBlock::k3x4;
}

// Pixels no tap reaches: act(bias).
template <Act A, typename T>
C10_ALWAYS_INLINE void direct_fill(const T* bias, T* out, int64_t out_step, int64_t m, int64_t cn) {
  for (int64_t p = 0; p < m; ++p) {
    T* __restrict__ o = out + p * out_step;
    for (int64_t c = 0; c < cn; ++c) o[c] = act_forward<A>(bias[c]);
  }
}

// Sliding register blocks (forward, dilation 1 along the row): P output pixels x one vector of
// channels. Per kernel row, each input vector is loaded once and used by every (pixel p, tap j) pair
// that reads it (input column p * S + j), with the row's KW weights held in registers, instead of
// one load per pair: about half a load per FMA where direct_block needs 4/3, so the block runs at
// the FMA units' pace when its input is in cache. The taps of one output are still summed in
// tap-list order (kernel rows in order, taps j ascending), starting from -0 (x * w + -0 is x * w
// exactly), so a pixel gets the same bits here as from direct_block.
// The taps: a direct_pixels tap list (input offsets of pixel 0, weight offsets) of whole kernel rows
// of KW taps each, tap j of a row at input offset j * px and weight offset j * Cp from the row's
// first.
struct SlideTaps {
  const int64_t* in_off = nullptr;
  const int64_t* w_off = nullptr;
  int64_t taps = 0;
  int64_t px = 0;  // elements between adjacent input columns (C)
  int64_t Cp = 0;  // elements between the weights of adjacent taps
};

template <typename T, int P, int KW, int S>
C10_ALWAYS_INLINE void slide_block(const T* in, const T* w, const SlideTaps& st, vec_t<T> (&acc)[P][1]) {
  constexpr int kCols = (P - 1) * S + KW;  // input columns one kernel row reads
  T z[kVec<T>];
  for (int l = 0; l < kVec<T>; ++l) z[l] = T(-0.0);
  const vec_t<T> zero = vload(z);
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p) acc[p][0] = zero;
  const int64_t px = st.px, Cp = st.Cp;
  for (int64_t t = 0; t < st.taps; t += KW) {
    const T* ir = in + st.in_off[t];
    const T* wr = w + st.w_off[t];
    vec_t<T> wv[KW];
#pragma GCC unroll 16
    for (int j = 0; j < KW; ++j) wv[j] = vload(wr + j * Cp);
#pragma GCC unroll 64
    for (int col = 0; col < kCols; ++col) {
      const vec_t<T> x = vload(ir + col * px);
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) {
        const int j = col - p * S;
        if (j >= 0 && j < KW) acc[p][0] += x * wv[j];
      }
    }
  }
}

// Blocks of P of the m output pixels of one row (the first input column at `in`, pixel step
// S * px; output step px), stored as bias + the conv, without the activation; returns the pixels
// done, a multiple of P. Channels past the last whole vector go through direct_pixels.
template <typename T, int P, int KW, int S>
C10_ALWAYS_INLINE int64_t slide_run_cfg(const SlideTaps& st, const T* in, const T* w, const T* bias, T* out, int64_t m,
                                        int64_t cn, const RowPrefetch& pf) {
  constexpr int V = kVec<T>;
  const int64_t in_step = S * st.px, out_step = st.px;
  int64_t j = 0;
  for (; j + P <= m; j += P) {
    pf.block(j, j + 2 * P > m ? m - j + 2 : P);
    const T* ij = in + j * in_step;
    T* oj = out + j * out_step;
    int64_t c = 0;
    for (; c + V <= cn; c += V) {
      vec_t<T> acc[P][1];
      slide_block<T, P, KW, S>(ij + c, w + c, st, acc);
      direct_store<Act::kIdentity, T, P, 1>(acc, bias + c, oj + c, out_step);
    }
    if (c < cn) {
      direct_pixels<Act::kIdentity, T, P, 1>(ij + c, in_step, st.in_off, w + c, st.w_off, st.taps, bias + c, oj + c,
                                             out_step, cn - c);
    }
  }
  return j;
}

// Pixels per sliding block: P accumulators + KW weights + the input vector fit the 16 registers.
constexpr int slide_pixels_for(int KW) { return KW <= 3 ? 10 : KW <= 5 ? 8 : 6; }

// Kernel widths with a sliding instantiation.
inline bool slide_width(int64_t kW) { return kW == 3 || kW == 5 || kW == 7; }

// A sliding run over whole blocks of the m pixels (kW taps per kernel row, stride S): the pixels
// done (none without a whole vector of channels). The caller applies the activation to them and
// runs direct_run for the rest. Compiled out of line, once per ISA (slide_run_isa), so this code
// exists once per (dtype, stride), not once per activation.
template <typename T, int S>
C10_ALWAYS_INLINE int64_t slide_run(int64_t kW, const SlideTaps& st, const T* in, const T* w, const T* bias, T* out,
                                    int64_t m, int64_t cn, const RowPrefetch& pf) {
  if (cn < kVec<T>) return 0;
  switch (kW) {
    case 3: return slide_run_cfg<T, slide_pixels_for(3), 3, S>(st, in, w, bias, out, m, cn, pf);
    case 5: return slide_run_cfg<T, slide_pixels_for(5), 5, S>(st, in, w, bias, out, m, cn, pf);
    case 7: return slide_run_cfg<T, slide_pixels_for(7), 7, S>(st, in, w, bias, out, m, cn, pf);
    default: return 0;
  }
}

template <typename T, int S>
__attribute__((noinline)) int64_t slide_run_baseline(int64_t kW, const SlideTaps& st, const T* in, const T* w,
                                                     const T* bias, T* out, int64_t m, int64_t cn,
                                                     const RowPrefetch& pf) {
  return slide_run<T, S>(kW, st, in, w, bias, out, m, cn, pf);
}
#ifdef MK_AVX2_CLONES
template <typename T, int S>
__attribute__((noinline, target("avx2,fma"))) int64_t slide_run_avx2(int64_t kW, const SlideTaps& st, const T* in,
                                                                     const T* w, const T* bias, T* out, int64_t m,
                                                                     int64_t cn, const RowPrefetch& pf) {
  return slide_run<T, S>(kW, st, in, w, bias, out, m, cn, pf);
}
#endif
template <typename T, int S>
C10_ALWAYS_INLINE int64_t slide_run_isa(int64_t kW, const SlideTaps& st, const T* in, const T* w, const T* bias,
                                        T* out, int64_t m, int64_t cn, const RowPrefetch& pf) {
#ifdef MK_AVX2_CLONES
  if (cpu::use_avx2()) return slide_run_avx2<T, S>(kW, st, in, w, bias, out, m, cn, pf);
#endif
  return slide_run_baseline<T, S>(kW, st, in, w, bias, out, m, cn, pf);
}

// out[p * out_step + c] = act(out[...]) for m pixels, c < cn.
template <Act A, typename T>
C10_ALWAYS_INLINE void direct_act(T* out, int64_t out_step, int64_t m, int64_t cn) {
  if constexpr (A != Act::kIdentity) {
    for (int64_t p = 0; p < m; ++p) {
      T* __restrict__ o = out + p * out_step;
#pragma omp simd
      for (int64_t c = 0; c < cn; ++c) o[c] = act_forward<A>(o[c]);
    }
  }
}

// ----------------------------------------------------------------------------- one output row

// The geometry of direct_row: the input's columns and the kernel along a row, the strides of the
// tensors, and how the interior pixels run.
struct DirectRowGeom {
  int64_t W = 0, OW = 0;                     // input / output columns
  int64_t kH = 1, dH = 1;                    // kernel rows and their dilation
  int64_t kW = 1, sW = 1, pW = 0, dW = 1;    // along the row
  int64_t px = 0;                            // elements between pixels (input and output)
  int64_t row = 0;                           // elements between input rows
  int64_t Cp = 0;                            // elements between the weights of adjacent taps
  int64_t ow_lo = 0, ow_hi = 0;              // output columns whose window lies inside the row
  bool slide = false;                        // interior runs in sliding blocks (slide_run)
  DirectBlock blk = DirectBlock::k3x4;

  // Sets W, OW, the kernel and the interior columns [ow_lo, ow_hi).
  void set(int64_t W_, int64_t OW_, int64_t kH_, int64_t dH_, int64_t kW_, int64_t sW_, int64_t pW_,
           int64_t dW_) {
    W = W_, OW = OW_, kH = kH_, dH = dH_, kW = kW_, sW = sW_, pW = pW_, dW = dW_;
    ow_lo = std::min(OW, div_ceil(pW, sW));
    ow_hi = std::clamp<int64_t>(div_floor(W - 1 + pW - (kW - 1) * dW, sW) + 1, ow_lo, OW);
  }
};

// Output row `yrow` (OW pixels, channels [0, cn) of each) = act(bias + the conv) over the kernel
// rows kh (the valid ones; the others read the zero padding): `xrow` is the input at (the row of
// kernel row kh.lo, column 0), `w` the tap-major weights (kH * kW, Cp) and `bias` (cn,), all offset
// to the first channel. offs: scratch for 4 * kH * kW tap offsets. pf: prefetch of the interior run
// (RowPrefetch() for none).
template <Act A, typename T>
C10_ALWAYS_INLINE void direct_row(const DirectRowGeom& g, TapRange kh, const T* xrow, const T* w, const T* bias,
                                  T* yrow, int64_t cn, int64_t* offs, const RowPrefetch& pf) {
  const int64_t px = g.px, OW = g.OW, kW = g.kW, sW = g.sW, pW = g.pW, dW = g.dW, Cp = g.Cp;
  if (kh.hi <= kh.lo) {
    direct_fill<A>(bias, yrow, px, OW, cn);
    return;
  }
  const int64_t taps = g.kH * kW;
  int64_t* in_off = offs;
  int64_t* w_off = offs + taps;
  int64_t* b_in = offs + 2 * taps;
  int64_t* b_w = offs + 3 * taps;
  int64_t nt = 0;
  for (int64_t i = kh.lo; i < kh.hi; ++i) {
    for (int64_t j = 0; j < kW; ++j, ++nt) {
      in_off[nt] = (i - kh.lo) * g.dH * g.row + j * dW * px;
      w_off[nt] = (i * kW + j) * Cp;
    }
  }
  if (g.ow_hi > g.ow_lo) {
    const T* xi = xrow + (g.ow_lo * sW - pW) * px;
    T* yi = yrow + g.ow_lo * px;
    const int64_t m = g.ow_hi - g.ow_lo;
    int64_t done = 0;
    if (g.slide) {
      SlideTaps st;
      st.in_off = in_off;
      st.w_off = w_off;
      st.taps = nt;
      st.px = px;
      st.Cp = Cp;
      done = sW == 1 ? slide_run_isa<T, 1>(kW, st, xi, w, bias, yi, m, cn, pf)
                     : slide_run_isa<T, 2>(kW, st, xi, w, bias, yi, m, cn, pf);
      direct_act<A>(yi, px, done, cn);
    }
    if (done < m) {
      direct_run<A>(xi + done * sW * px, sW * px, in_off, w, w_off, nt, bias, yi + done * px, px, m - done, cn,
                    g.blk, done == 0 ? pf : RowPrefetch());
    }
  }
  for (int64_t ow = 0; ow < OW; ++ow) {  // border columns
    if (ow == g.ow_lo) ow = g.ow_hi;
    if (ow >= OW) break;
    const TapRange kw = valid_taps(ow, sW, pW, dW, kW, g.W);
    if (kw.hi <= kw.lo) {
      direct_fill<A>(bias, yrow + ow * px, px, 1, cn);
      continue;
    }
    int64_t bt = 0;
    for (int64_t i = kh.lo; i < kh.hi; ++i) {
      for (int64_t j = kw.lo; j < kw.hi; ++j, ++bt) {
        b_in[bt] = (i - kh.lo) * g.dH * g.row + (j - kw.lo) * dW * px;
        b_w[bt] = (i * kW + j) * Cp;
      }
    }
    direct_pixels<A, T, 1, 4>(xrow + (ow * sW - pW + kw.lo * dW) * px, 0, b_in, w, b_w, bt, bias, yrow + ow * px, 0,
                              cn);
  }
}

}  // namespace cpu
}  // namespace mobilenet_kernels
