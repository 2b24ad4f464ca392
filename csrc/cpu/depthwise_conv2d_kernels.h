// depthwise_conv2d, C++ CPU kernels (included by the four depthwise_conv2d*.cpp units below).
//
// Forward: act(conv2d(x, w, b, groups=C)). Backward: grad_input, grad_weight, grad_bias of the
// identity-activation conv (autograd applies act' first). Stats: the bias-free conv plus the
// per-channel batch mean and biased variance of the output as stored (after rounding), for a
// BatchNorm in training.
// Layouts: NCHW and channels_last, both native (other strides are made dense first); output in the
//          input's format. Any kernel size, stride, padding (also wider than the kernel) and dilation.
// dtypes: float64 (double arithmetic), float32, float16, bfloat16 (float arithmetic, one rounding
//         at the store).
// Structure:
//   channels_last, float32/float64 ("direct": the input is already in the accumulation dtype):
//         the kernels read the tensors in place. Forward and grad_input: register blocks of P
//         output pixels x NV 32-byte vectors of channels (3x4 from cache; 2x4 when wide pixels
//         stream from memory, as fewer pixels per block measured faster there; 6x2 below 32
//         channels), FMAs against a per-row tap list: the interior pixels (window inside the
//         image) share one list without bounds checks, each border pixel gets its valid taps.
//         Forward with dilation 1 along rows, stride 1 or 2 and kernel width 3, 5 or 7, when the
//         input is in cache or the kernel is 5x5 or larger: "sliding" blocks instead, 6-10 pixels x
//         one vector, each input vector loaded once per kernel row and used by all the taps that
//         read it (weights in registers), summed in the same order (same bits).
//         A row covers all channels (channel chunks only make tasks for small batches). When the
//         input exceeds what stays in the last-level cache, software prefetches spread over a
//         row's blocks bring in the input rows the next row adds (strided grad_input: the next
//         grad_input row, for writing). grad_weight: per (output row, kernel row, 2 vectors of
//         channels), register accumulators for the kW taps over the row's interior pixels,
//         border taps after; grad_bias from the same rows; the same prefetch of the next rows.
//   channels_last, float16/bfloat16 ("staged"): a task copies the input rows it reads into a
//         scratch buffer in float (converted once, the padding materialized as zeros),
//         channel-blocked ([C/8][rows][cols][8]; at most 128 channels per staging, so it stays
//         in L2); blocks of 8 output pixels x one vector of channels, pixel stride fixed at
//         compile time for stride 1 and 2. While a staged sub-chunk computes, software
//         prefetches stream in the next one.
//   NCHW (all dtypes): staged rows as above (per channel plane); 2-8 output rows x 1-4 vectors of
//         output columns; the staged rows are split into stride phases, so strided taps read
//         contiguous memory.
//   grad_input is gathered (no scatter, no atomics): input pixels of one stride phase form a
//   stride-1 correlation of grad_output with that phase's taps.
// Reductions (grad_weight, grad_bias, stats): per-(row group, channel) partials over a partition of
//   the N*OH output rows fixed by the shape, merged in double in group order, so results are
//   bitwise identical for any thread count (channel chunks, which depend on the thread count,
//   only partition the channels). Per-lane accumulators make the summation order independent of
//   how the compiler vectorizes. Stats: each sub-chunk's stored outputs (still in cache) give
//   centered (count, mean, M2), summed about the sub-chunk's first value so a large mean costs no
//   digits; these are merged by Chan's formula in double (csrc/cpu/chan_stats.h, shared with
//   pointwise_conv2d.cpp).
// x86: each kernel is compiled twice, for the baseline ISA and for AVX2+FMA (picked at run time),
//   since the extension is built without -march flags (csrc/cpu/cpu_dispatch.h). The direct kernels
//   use GCC/Clang vector extensions (portable loops elsewhere), so one source serves both.
// The direct channels_last code (vectors, register and sliding blocks, prefetch, one output row) is
//   in csrc/cpu/depthwise_direct.h, shared with the whole-block kernel (csrc/cpu/inverted_residual_kernels.h).
// Build: the instantiations are spread over translation units that a parallel build compiles side
//   by side (as one unit this took five minutes of a 16-core build, a third of a GPU lease): the
//   forward, one unit per activation (depthwise_conv2d_fwd_<act>.cpp), depthwise_conv2d_stats.cpp,
//   depthwise_conv2d_grad_input.cpp and depthwise_conv2d_grad_weight.cpp; the ops and their
//   registration are in depthwise_conv2d.cpp. Everything here has internal linkage except the
//   entry points at the end, which the units define.
// Limits: in the staged and NCHW paths the zero padding is multiplied like data in some places
//   (forward and grad_input columns, NCHW grad_weight columns), so a non-finite weight or
//   grad_output can give nan where a window only touches padding, as PyTorch's im2col path does.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "chan_stats.h"
#include "cpu_dispatch.h"
#include "depthwise_conv2d.h"
#include "depthwise_direct.h"

namespace mobilenet_kernels {
namespace {

using cpu::parallel_run;  // csrc/cpu/cpu_dispatch.h: baseline and AVX2 clones of each kernel
// csrc/cpu/depthwise_direct.h: the channels_last direct code, shared with inverted_residual_kernels.h
using cpu::div_ceil;
using cpu::div_floor;
using cpu::direct_act;
using cpu::direct_block_for;
using cpu::direct_fill;
using cpu::direct_pixels;
using cpu::direct_run;
using cpu::DirectBlock;
using cpu::kVec;
using cpu::RowPrefetch;
using cpu::slide_width;
using cpu::TapRange;
using cpu::valid_taps;
using cpu::vec_t;
using cpu::vload;
using cpu::vstore;

// ----------------------------------------------------------------------------- geometry

inline int64_t round_up(int64_t a, int64_t b) { return div_ceil(a, b) * b; }

// Outputs o in [lo, hi) read input index o * s - p + k * d inside [0, L) for one tap k.
inline TapRange valid_outputs(int64_t k, int64_t s, int64_t p, int64_t d, int64_t O, int64_t L) {
  const int64_t lo = std::max<int64_t>(0, div_ceil(p - k * d, s));
  return {lo, std::max(lo, std::min<int64_t>(O, div_floor(L - 1 + p - k * d, s) + 1))};
}

// Stride phase rho of the input index i + p = q * s + rho: the q range of one phase inside [0, L).
inline TapRange phase_range(int64_t rho, int64_t s, int64_t p, int64_t L) {
  const int64_t lo = div_ceil(p - rho, s);
  return {lo, std::max(lo, div_floor(L - 1 + p - rho, s) + 1)};
}

constexpr int kPixBlock = 8;                                  // channels_last: output pixels per block
constexpr int64_t kMaxGroups = 64;         // bounds the reduction partials
constexpr int64_t kTaskElements = 131072;  // outputs per task, before the kMaxGroups cap
constexpr int64_t kStageElements = 65536;  // scratch per staged sub-chunk (256 KB of floats: in L2)
constexpr int64_t kSlabChannels = 128;     // channels_last: channels staged together

// The N * R rows (R rows per image) cut into groups by the shape alone: whole images (`images` per
// group) or, for large images, `pieces` groups of `piece_rows` rows per image; never more than
// kMaxGroups. A group is processed in sub-chunks of at most `chunk` rows of one image (the staging
// buffer's size).
struct RowGroups {
  int64_t N = 0, R = 1, images = 1, pieces = 1, piece_rows = 1, count = 0, chunk = 1;
  int64_t begin(int64_t g) const {
    return pieces > 1 ? (g / pieces) * R + (g % pieces) * piece_rows : g * images * R;
  }
  int64_t end(int64_t g) const {
    return pieces > 1 ? (g / pieces) * R + std::min(R, (g % pieces + 1) * piece_rows)
                      : std::min(N, (g + 1) * images) * R;
  }
  // Rows of the sub-chunk starting at `row`: within one image, at most `chunk`, sizes balanced.
  int64_t sub_chunk(int64_t row, int64_t end) const {
    const int64_t left = std::min(R - row % R, end - row);
    return div_ceil(left, div_ceil(left, chunk));
  }
};

inline RowGroups make_row_groups(int64_t N, int64_t R, int64_t row_elements, int64_t chunk) {
  RowGroups G;
  G.N = N;
  G.R = R;
  G.chunk = std::max<int64_t>(1, chunk);
  if (N == 0 || R == 0) return G;
  const int64_t target = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(1, row_elements));
  const int64_t pieces = std::min(div_ceil(R, target), std::max<int64_t>(1, kMaxGroups / N));
  if (pieces <= 1) {
    G.images = std::max(std::min(N, std::max<int64_t>(1, target / R)), div_ceil(N, kMaxGroups));
    G.count = div_ceil(N, G.images);
  } else {
    G.piece_rows = div_ceil(R, pieces);
    G.pieces = div_ceil(R, G.piece_rows);
    G.count = N * G.pieces;
  }
  return G;
}

// Output rows per staged sub-chunk: the most rows whose staged input, (rows - 1) * step + span rows
// of row_elements each, fits kStageElements.
inline int64_t chunk_rows(int64_t row_elements, int64_t step, int64_t span) {
  const int64_t fit = kStageElements / std::max<int64_t>(1, row_elements);
  return std::max<int64_t>(1, (fit - span) / step + 1);
}

// channels_last stages `width` blocks of V channels at a time (at most kSlabChannels channels, slabs
// of balanced size), so a staged sub-chunk stays in L2 whatever C is.
struct ChannelSlabs {
  int64_t blocks, count, width;
  int64_t first(int64_t s) const { return s * width; }
  int64_t size(int64_t s) const { return std::min(width, blocks - s * width); }
};
inline ChannelSlabs channel_slabs(int64_t C, int64_t V) {
  ChannelSlabs s;
  s.blocks = div_ceil(C, V);
  s.count = std::max<int64_t>(1, div_ceil(s.blocks * V, kSlabChannels));
  s.width = std::max<int64_t>(1, div_ceil(s.blocks, s.count));
  s.count = std::max<int64_t>(1, div_ceil(s.blocks, s.width));
  return s;
}

// (ceil(C / V), kH * kW, V): the taps of each block of V channels, channels innermost; zero beyond C.
template <typename acc_t>
std::vector<acc_t> blocked_taps(const DepthwiseArgs& a) {
  constexpr int V = kVec<acc_t>;
  const int64_t T = a.kH * a.kW, Cp = round_up(a.C, V);
  const acc_t* w = a.weight.data_ptr<acc_t>();
  std::vector<acc_t> wb(static_cast<size_t>(T * Cp), acc_t(0));
  for (int64_t c = 0; c < a.C; ++c) {
    for (int64_t t = 0; t < T; ++t) wb[((c / V) * T + t) * V + c % V] = w[c * T + t];
  }
  return wb;
}

template <typename acc_t>
std::vector<acc_t> padded_bias(const DepthwiseArgs& a) {
  std::vector<acc_t> b(static_cast<size_t>(round_up(a.C, kVec<acc_t>)), acc_t(0));
  if (a.bias.defined()) std::copy(a.bias.data_ptr<acc_t>(), a.bias.data_ptr<acc_t>() + a.C, b.begin());
  return b;
}

// ----------------------------------------------------------------------------- staging

// Streams a byte range into L2 a few lines at a time: spread over the register blocks of one staged
// sub-chunk, it brings in the next sub-chunk's input while this one computes, so the staging copy
// reads from cache instead of waiting on memory.
struct StreamPrefetcher {
  const char* next = nullptr;
  const char* end = nullptr;
  int64_t lines_per_step = 0;
  template <typename T>
  void start(const T* begin, const T* finish, int64_t steps) {
    next = reinterpret_cast<const char*>(begin);
    end = reinterpret_cast<const char*>(finish);
    lines_per_step = steps > 0 ? div_ceil((end - next + 63) / 64, steps) : 0;
  }
  C10_ALWAYS_INLINE void step() {
#if defined(__GNUC__) || defined(__clang__)
    for (int64_t i = 0; i < lines_per_step && next < end; ++i, next += 64) __builtin_prefetch(next, 0, 2);
#endif
  }
};

// Channel-blocked staging of channels_last rows: dst[b][k][u][l] (block stride `plane`, row stride
// ncols * V) = img[row0 + k][col0 + u][c0 + b * V + l] for b < nb, in acc_t; zero outside the image
// and for channels >= C. In this layout one vector of channels of consecutive pixels is contiguous,
// so the taps of a register block read a few cache lines, in order.
template <int V, typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void stage_channel_blocks(const scalar_t* img /* (H, W, C) */, int64_t H, int64_t W, int64_t C,
                                            int64_t c0, int64_t nb, int64_t row0, int64_t nrows, int64_t col0,
                                            int64_t ncols, int64_t plane, acc_t* dst) {
  const int64_t full = std::clamp<int64_t>((C - c0) / V, 0, nb), tail = std::clamp<int64_t>(C - c0 - full * V, 0, V);
  const int64_t u_lo = std::clamp<int64_t>(-col0, 0, ncols);
  const int64_t u_hi = std::clamp<int64_t>(W - col0, u_lo, ncols);
  // Zeros are written as whole vectors, pixel by pixel: a fill per staged row would be a memset
  // call of a few bytes each.
  for (int64_t k = 0; k < nrows; ++k) {
    const int64_t r = row0 + k;
    const bool row_inside = r >= 0 && r < H;
    for (int64_t u = 0; u < ncols; ++u) {
      acc_t* d = dst + (k * ncols + u) * V;
      int64_t b = 0;
      if (row_inside && u >= u_lo && u < u_hi) {
        const scalar_t* s = img + (r * W + col0 + u) * C + c0;
        for (; b < full; ++b) {
          const scalar_t* __restrict__ sb = s + b * V;
          acc_t* __restrict__ db = d + b * plane;
#pragma omp simd
          for (int l = 0; l < V; ++l) db[l] = static_cast<acc_t>(sb[l]);
        }
        if (tail > 0 && b < nb) {
          acc_t* db = d + b * plane;
          for (int64_t l = 0; l < V; ++l) db[l] = l < tail ? static_cast<acc_t>(s[b * V + l]) : acc_t(0);
          ++b;
        }
      }
      for (; b < nb; ++b) {
        acc_t* __restrict__ db = d + b * plane;
#pragma omp simd
        for (int l = 0; l < V; ++l) db[l] = acc_t(0);
      }
    }
  }
}

// dst (nrows, P, wq): dst[k][rho][u] = plane[row0 + k][col0 + u * P + rho] in acc_t (rows ld apart),
// zero outside rows [0, H) and columns [0, W). One fill of the whole buffer, then the copies: fills
// around each staged row would be memset calls of a few bytes, which dominate on small planes.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void stage_plane(const scalar_t* plane, int64_t H, int64_t W, int64_t ld, int64_t row0,
                                   int64_t nrows, int64_t col0, int64_t P, int64_t wq, acc_t* dst) {
  std::fill(dst, dst + nrows * P * wq, acc_t(0));
  for (int64_t k = std::max<int64_t>(0, -row0); k < std::min(nrows, H - row0); ++k) {
    const int64_t r = row0 + k;
    for (int64_t rho = 0; rho < P; ++rho) {
      acc_t* __restrict__ dp = dst + (k * P + rho) * wq;
      const int64_t u_lo = std::clamp<int64_t>(div_ceil(-col0 - rho, P), 0, wq);
      const int64_t u_hi = std::clamp<int64_t>(div_floor(W - 1 - col0 - rho, P) + 1, u_lo, wq);
      const scalar_t* __restrict__ s = plane + r * ld + col0 + rho;
#pragma omp simd
      for (int64_t u = u_lo; u < u_hi; ++u) dp[u] = static_cast<acc_t>(s[u * P]);
    }
  }
}

// ----------------------------------------------------------------------------- register blocks

// channels_last (channel-blocked staging): acc[p][l] = sum_t in[in_off[t] + p * pix_stride + l] *
// w[w_off[t] + l] for kPixBlock pixels and one vector of channels; taps >= 1. Seeding acc with the
// first tap (the bias is added at the store) keeps it in registers: GCC would turn a copy or a zero
// fill into a memcpy/memset whose split stores stall the vector loads after them.
// kStride > 0 fixes pix_stride at compile time, so each FMA addresses its input with a constant
// displacement instead of one more index register.
template <typename acc_t, int64_t kStride = 0>
C10_ALWAYS_INLINE void channels_last_block(const acc_t* in, const int64_t* in_off, const acc_t* w,
                                           const int64_t* w_off, int64_t taps, int64_t runtime_stride,
                                           acc_t (&acc)[kPixBlock][kVec<acc_t>]) {
  constexpr int V = kVec<acc_t>;
  const int64_t pix_stride = kStride > 0 ? kStride : runtime_stride;
  {
    const acc_t* __restrict__ ip = in + in_off[0];
    const acc_t* __restrict__ wv = w + w_off[0];
    for (int p = 0; p < kPixBlock; ++p) {
#pragma omp simd
      for (int l = 0; l < V; ++l) acc[p][l] = ip[p * pix_stride + l] * wv[l];
    }
  }
  for (int64_t t = 1; t < taps; ++t) {
    const acc_t* __restrict__ ip = in + in_off[t];
    const acc_t* __restrict__ wv = w + w_off[t];
    for (int p = 0; p < kPixBlock; ++p) {
#pragma omp simd
      for (int l = 0; l < V; ++l) acc[p][l] += ip[p * pix_stride + l] * wv[l];
    }
  }
}

// Stores act(acc + bias) for pixels p < pn, channels l < cn of a channels_last block; pixel p at
// out + p * pix_stride. acc is only indexed by constants, so it can stay in registers.
template <Act A, typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void store_channels_last(const acc_t (&acc)[kPixBlock][kVec<acc_t>], const acc_t* bias, int64_t pn,
                                           int64_t cn, scalar_t* out, int64_t pix_stride) {
  constexpr int V = kVec<acc_t>;
  if (pn == kPixBlock && cn == V) {
    for (int p = 0; p < kPixBlock; ++p) {
      scalar_t* __restrict__ o = out + p * pix_stride;
#pragma omp simd
      for (int l = 0; l < V; ++l) o[l] = static_cast<scalar_t>(act_forward<A>(acc[p][l] + bias[l]));
    }
    return;
  }
  scalar_t part[kPixBlock][V];
  for (int p = 0; p < kPixBlock; ++p) {
#pragma omp simd
    for (int l = 0; l < V; ++l) part[p][l] = static_cast<scalar_t>(act_forward<A>(acc[p][l] + bias[l]));
  }
  for (int64_t p = 0; p < pn; ++p) {
    scalar_t* __restrict__ o = out + p * pix_stride;
    if (cn == V) {
#pragma omp simd
      for (int l = 0; l < V; ++l) o[l] = part[p][l];
    } else {
      for (int64_t l = 0; l < cn; ++l) o[l] = part[p][l];
    }
  }
}

// NCHW: acc[r][j] = sum_t w[t] * base[tap_off[t] + r * row_step + j] for RB rows and NV vectors of
// columns; taps >= 1 (seeded by the first tap, as channels_last_block).
template <typename acc_t, int RB, int NV>
C10_ALWAYS_INLINE void plane_block(const acc_t* base, const int64_t* tap_off, const acc_t* tap_w, int64_t taps,
                                   int64_t row_step, acc_t (&acc)[RB][NV * kVec<acc_t>]) {
  constexpr int J = NV * kVec<acc_t>;
  {
    const acc_t w = tap_w[0];
    const acc_t* __restrict__ s = base + tap_off[0];
    for (int r = 0; r < RB; ++r) {
#pragma omp simd
      for (int j = 0; j < J; ++j) acc[r][j] = w * s[r * row_step + j];
    }
  }
  for (int64_t t = 1; t < taps; ++t) {
    const acc_t w = tap_w[t];
    const acc_t* __restrict__ s = base + tap_off[t];
    for (int r = 0; r < RB; ++r) {
#pragma omp simd
      for (int j = 0; j < J; ++j) acc[r][j] += w * s[r * row_step + j];
    }
  }
}

// Four independent lane-wise accumulators of one vector (a reduction over pixels). The order of the
// additions depends on the shape only, not on how the compiler vectorizes.
template <typename acc_t>
struct LaneSums {
  acc_t s[4][kVec<acc_t>];
  C10_ALWAYS_INLINE void zero() {
    for (int k = 0; k < 4; ++k) {
#pragma omp simd
      for (int l = 0; l < kVec<acc_t>; ++l) s[k][l] = acc_t(0);
    }
  }
  // out[l] += the four accumulators, in a fixed order.
  C10_ALWAYS_INLINE void add_to(acc_t* out) const {
#pragma omp simd
    for (int l = 0; l < kVec<acc_t>; ++l) out[l] += (s[0][l] + s[1][l]) + (s[2][l] + s[3][l]);
  }
  acc_t total() const {
    acc_t lanes[kVec<acc_t>] = {};
    add_to(lanes);
    acc_t t = 0;
    for (int l = 0; l < kVec<acc_t>; ++l) t += lanes[l];
    return t;
  }
};

// sums += sum_i a[i * sa + l] * b[i * sb + l] over n vectors, four at a time into the four accumulators.
template <typename acc_t>
C10_ALWAYS_INLINE void dot_pixels(const acc_t* a, int64_t sa, const acc_t* b, int64_t sb, int64_t n,
                                  LaneSums<acc_t>& sums) {
  constexpr int V = kVec<acc_t>;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const acc_t* __restrict__ a0 = a + i * sa;
    const acc_t* __restrict__ b0 = b + i * sb;
    for (int k = 0; k < 4; ++k) {
#pragma omp simd
      for (int l = 0; l < V; ++l) sums.s[k][l] += a0[k * sa + l] * b0[k * sb + l];
    }
  }
  for (; i < n; ++i) {
#pragma omp simd
    for (int l = 0; l < V; ++l) sums.s[0][l] += a[i * sa + l] * b[i * sb + l];
  }
}

// ----------------------------------------------------------------------------- statistics

// Merges a part of m values per channel, (mean, M2) of channels c < cn from cpu::channel_stats or
// cpu::plane_stats, into the running group statistics (count gn) in double.
C10_ALWAYS_INLINE void merge_part(double& gn, double* g_mean, double* g_m2, const double* p_mean, const double* p_m2,
                                  int64_t cn, int64_t m) {
  for (int64_t c = 0; c < cn; ++c) {
    cpu::chan_merge<double>(gn, g_mean[c], g_m2[c], static_cast<double>(m), p_mean[c], p_m2[c]);
  }
  gn += static_cast<double>(m);
}

// ----------------------------------------------------------------------------- channels_last, direct (float, double)

// When the input is already in the accumulation dtype, channels_last kernels read it in place: no
// staging copy (the copy was one more pass over the data, which the memory-bound layers paid for).
// Register blocks of P output pixels x NV vectors of channels; interior pixels (whole window inside
// the image) get a tap list without bounds checks, the few border pixels a list of their own.

// Channel chunks of the direct kernels, in whole units of channels. A row's channels are processed
// together (chunks of at most 128 channels measured slower: each chunk re-walks the rows, in strided
// lines); they are split only to make enough tasks when there are few row groups (small batches).
struct ChannelChunks {
  int64_t C = 0, count = 1, width = 1;
  int64_t first(int64_t k) const { return k * width; }
  int64_t size(int64_t k) const { return std::min(width, C - k * width); }
};
inline ChannelChunks channel_chunks(int64_t C, int64_t unit, int64_t row_groups) {
  ChannelChunks s;
  s.C = C;
  const int64_t units = std::max<int64_t>(1, div_ceil(C, unit));
  const int64_t min_tasks = 2 * static_cast<int64_t>(at::get_num_threads());
  const int64_t count = std::clamp<int64_t>(div_ceil(min_tasks, std::max<int64_t>(1, row_groups)), 1, units);
  s.width = div_ceil(units, count) * unit;
  s.count = std::max<int64_t>(1, div_ceil(C, s.width));
  return s;
}

// (kH * kW, Cp): tap t of channel c at t * Cp + c, zero for c >= C (csrc/cpu/depthwise_direct.h).
template <typename T>
std::vector<T> tap_major_weights(const DepthwiseArgs& a, int64_t Cp) {
  return cpu::tap_major(a.weight.data_ptr<T>(), a.C, a.kH * a.kW, Cp);
}


// Streamed from memory: operands beyond what stays in the last-level cache between calls (it is
// shared with the other cores).
constexpr int64_t kStreamBytes = int64_t(6) << 20;

// Whether a direct forward / grad_input streams its input from memory: the input is large and its
// pixels are wide (at least 4 cache lines; narrower pixels measured faster with the hardware
// prefetchers alone).
template <typename T>
inline bool direct_streams(const DepthwiseArgs& a) {
  const int64_t ts = static_cast<int64_t>(sizeof(T));
  return a.N * a.H * a.W * a.C * ts >= kStreamBytes && a.C * ts >= 256;
}


template <typename T, Act A, bool kStats>
struct ForwardDirect {
  static constexpr int V = kVec<T>;
  const DepthwiseArgs& a;
  ChannelChunks chunks;
  RowGroups groups;          // over the N * OH output rows
  int64_t Cp;                // channels padded to whole vectors
  cpu::DirectRowGeom geom;   // a row's geometry, interior columns, register blocks, sliding
  bool stream;               // operands streamed from memory: prefetch the next rows
  const T* wt = nullptr;     // (kH * kW, Cp)
  const T* bias = nullptr;   // (Cp,)
  const T* x;                // (N, H, W, C)
  T* y;                      // (N, OH, OW, C)
  double* part_mean = nullptr;  // (groups.count, C), kStats only
  double* part_m2 = nullptr;

  ForwardDirect(const DepthwiseArgs& a_, const at::Tensor& out) : a(a_) {
    Cp = round_up(a.C, V);
    // sub-chunks (the stats' merge unit) of about kStageElements staged-input elements
    groups = make_row_groups(a.N, a.OH, a.OW * a.C, chunk_rows(a.W * a.C, a.sH, (a.kH - 1) * a.dH + 1));
    chunks = channel_chunks(a.C, a.C >= 4 * V ? 4 * V : 2 * V, groups.count);
    geom.set(a.W, a.OW, a.kH, a.dH, a.kW, a.sW, a.pW, a.dW);
    geom.px = a.C;
    geom.row = a.W * a.C;
    geom.Cp = Cp;
    stream = direct_streams<T>(a);
    geom.blk = direct_block_for(a.C, V, stream);
    // Sliding blocks pay off when the input is in cache or the kernel is large (5x5: 25 FMAs per
    // input and output); 3x3 layers streamed from memory measured faster with direct_run's blocks.
    const int64_t in_bytes = a.N * a.H * a.W * a.C * static_cast<int64_t>(sizeof(T));
    geom.slide = a.dW == 1 && a.sW <= 2 && slide_width(a.kW) && (a.kH * a.kW >= 25 || in_bytes < kStreamBytes);
    x = a.input.data_ptr<T>();
    y = out.data_ptr<T>();
  }
  int64_t tasks() const { return groups.count * chunks.count; }

  // Output row oh of image n, channels [c0, c0 + cn); offs: 4 * kH * kW tap offsets (scratch).
  C10_ALWAYS_INLINE void row(int64_t n, int64_t oh, int64_t c0, int64_t cn, int64_t* offs) const {
    const int64_t C = a.C, H = a.H, W = a.W, OW = a.OW;
    const TapRange kh = valid_taps(oh, a.sH, a.pH, a.dH, a.kH, H);
    T* yrow = y + (n * a.OH + oh) * OW * C + c0;
    if (kh.hi <= kh.lo) {
      direct_fill<A>(bias + c0, yrow, C, OW, cn);
      return;
    }
    // x at (first valid kernel row, column 0) of this output row
    const T* xrow = x + ((n * H + oh * a.sH - a.pH + kh.lo * a.dH) * W) * C + c0;
    RowPrefetch pf;
    // the input rows the next output row reads and this one does not
    const int64_t next = oh * a.sH - a.pH + (a.kH - 1) * a.dH + 1;
    const int64_t r0 = std::clamp<int64_t>(next, 0, H), r1 = std::clamp<int64_t>(next + a.sH, r0, H);
    if (stream && geom.ow_hi > geom.ow_lo && oh + 1 < a.OH && r1 > r0) {
      const int64_t ts = static_cast<int64_t>(sizeof(T)), first = geom.ow_lo * a.sW - a.pW;
      pf.base = reinterpret_cast<const char*>(x + ((n * H + r0) * W + first) * C + c0);
      pf.rows = r1 - r0;
      pf.row_bytes = W * C * ts;
      pf.px_bytes = C * ts;
      pf.step = a.sW;
      pf.extra = (a.kW - 1) * a.dW + 1 - a.sW;
      pf.bytes = cn * ts;
      pf.px_lo = -first;
      pf.px_hi = W - first;
    }
    cpu::direct_row<A, T>(geom, kh, xrow, wt + c0, bias + c0, yrow, cn, offs, pf);
  }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    const int64_t C = a.C, OH = a.OH, OW = a.OW, taps = a.kH * a.kW;
    std::vector<int64_t> offs(static_cast<size_t>(4 * taps));
    std::vector<T> tmp(kStats ? 3 * chunks.width : 0);
    std::vector<double> g_mean(kStats ? chunks.width : 0), g_m2(kStats ? chunks.width : 0);
    std::vector<double> p_mean(kStats ? chunks.width : 0), p_m2(kStats ? chunks.width : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / chunks.count, k = task % chunks.count;
      const int64_t c0 = chunks.first(k), cn = chunks.size(k);
      double gn = 0;
      if (kStats) {
        std::fill(g_mean.begin(), g_mean.end(), 0.0);
        std::fill(g_m2.begin(), g_m2.end(), 0.0);
      }
      for (int64_t r = groups.begin(g), row_end = groups.end(g); r < row_end;) {
        const int64_t n = r / OH, oh0 = r % OH;
        const int64_t rn = groups.sub_chunk(r, row_end);
        for (int64_t i = 0; i < rn; ++i) {
          row(n, oh0 + i, c0, cn, offs.data());
        }
        if (kStats) {
          cpu::channel_stats(y + (n * OH + oh0) * OW * C + c0, rn * OW, C, cn, tmp.data(), p_mean.data(), p_m2.data());
          merge_part(gn, g_mean.data(), g_m2.data(), p_mean.data(), p_m2.data(), cn, rn * OW);
        }
        r += rn;
      }
      if (kStats) {
        std::copy(g_mean.begin(), g_mean.begin() + cn, part_mean + g * C + c0);
        std::copy(g_m2.begin(), g_m2.begin() + cn, part_m2 + g * C + c0);
      }
    }
  }
};

// grad_input, gathered: input row ih, column phase rho (iw + pW = q * sW + rho) is a stride-1
// correlation of grad_output with the taps (i, j) of that phase: ih + pH = oh * sH + i * dH,
// j * dW = m * sW + rho, ow = q - m.
template <typename T>
struct GradInputDirect {
  static constexpr int V = kVec<T>;
  const DepthwiseArgs& a;
  ChannelChunks chunks;
  RowGroups groups;  // over the N * H input rows
  int64_t Cp;
  std::vector<TapRange> qcols;  // per column phase: the q of input columns [0, W)
  bool stream;                  // operands streamed from memory: prefetch (see row())
  DirectBlock blk;
  const T* wt = nullptr;        // (kH * kW, Cp)
  const T* zeros = nullptr;     // (Cp,)
  const T* go;                  // (N, OH, OW, C)
  T* gi;                        // (N, H, W, C)

  GradInputDirect(const DepthwiseArgs& a_, const at::Tensor& grad_out, const at::Tensor& grad_in)
      : a(a_) {
    Cp = round_up(a.C, V);
    groups = make_row_groups(a.N, a.H, a.W * a.C, a.H);
    chunks = channel_chunks(a.C, a.C >= 4 * V ? 4 * V : 2 * V, groups.count);
    stream = direct_streams<T>(a);
    blk = direct_block_for(a.C, V, stream);
    for (int64_t rho = 0; rho < a.sW; ++rho) qcols.push_back(phase_range(rho, a.sW, a.pW, a.W));
    go = grad_out.data_ptr<T>();
    gi = grad_in.data_ptr<T>();
  }
  int64_t tasks() const { return groups.count * chunks.count; }

  C10_ALWAYS_INLINE void row(int64_t n, int64_t ih, int64_t c0, int64_t cn, int64_t* in_off, int64_t* w_off,
                             int64_t* b_in, int64_t* b_w, int64_t* ms, int64_t* rows) const {
    const int64_t C = a.C, W = a.W, OH = a.OH, OW = a.OW, kH = a.kH, kW = a.kW, sW = a.sW, pW = a.pW;
    T* girow = gi + (n * a.H + ih) * W * C + c0;
    const T* wc = wt + c0;
    // kernel rows i reaching this input row, and their grad_output rows
    int64_t nrows = 0, oh_first = 0;
    for (int64_t i = 0; i < kH; ++i) {
      const int64_t num = ih + a.pH - i * a.dH;
      if (num < 0 || num % a.sH != 0 || num / a.sH >= OH) continue;
      if (nrows == 0) oh_first = num / a.sH;
      rows[2 * nrows] = i;
      rows[2 * nrows++ + 1] = num / a.sH;
    }
    const T* gorow = go + (n * OH + oh_first) * OW * C + c0;
    for (int64_t rho = 0; rho < sW; ++rho) {
      const TapRange q = qcols[rho];
      if (q.hi <= q.lo) continue;
      T* out = girow + (q.lo * sW + rho - pW) * C;  // input column of q.lo
      const int64_t out_step = sW * C;
      int64_t nt = 0, m_lo = INT64_MAX, m_hi = INT64_MIN;
      for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t j = 0; j < kW; ++j) {
          if (j * a.dW % sW != rho) continue;
          const int64_t m = j * a.dW / sW;
          in_off[nt] = ((rows[2 * r + 1] - oh_first) * OW - m) * C;
          w_off[nt] = (rows[2 * r] * kW + j) * Cp;
          ms[nt++] = m;
          m_lo = std::min(m_lo, m);
          m_hi = std::max(m_hi, m);
        }
      }
      if (nt == 0) {
        direct_fill<Act::kIdentity>(zeros, out, out_step, q.hi - q.lo, cn);
        continue;
      }
      const int64_t lo = std::clamp<int64_t>(m_hi, q.lo, q.hi);
      const int64_t hi = std::clamp<int64_t>(OW + m_lo, lo, q.hi);
      if (hi > lo) {
        // When streaming, with the first phase: strided, the next grad_input row for writing (it is
        // larger than grad_output; prefetching it saves the store misses' wait); else the
        // grad_output row the next input row adds (kernel row 0).
        RowPrefetch pf;
        const int64_t oh_next = (ih + 1 + a.pH) / a.sH;
        if (stream && a.sH * sW > 1 && rho == 0 && ih + 1 < a.H) {
          const int64_t ts = static_cast<int64_t>(sizeof(T)), first = lo * sW + rho - pW;
          pf.base = reinterpret_cast<const char*>(girow + W * C + first * C);
          pf.rows = 1;
          pf.px_bytes = C * ts;
          pf.step = sW;
          pf.extra = 0;
          pf.bytes = cn * ts;
          pf.px_lo = -first;
          pf.px_hi = W - first;
          pf.write = true;
        } else if (stream && rho == 0 && ih + 1 < a.H && oh_next < OH && oh_next * a.sH == ih + 1 + a.pH) {
          const int64_t ts = static_cast<int64_t>(sizeof(T)), first = lo - m_hi;
          pf.base = reinterpret_cast<const char*>(go + ((n * OH + oh_next) * OW + first) * C + c0);
          pf.rows = 1;
          pf.px_bytes = C * ts;
          pf.extra = m_hi - m_lo;
          pf.bytes = cn * ts;
          pf.px_lo = -first;
          pf.px_hi = OW - first;
        }
        direct_run<Act::kIdentity>(gorow + lo * C, C, in_off, wc, w_off, nt, zeros, out + (lo - q.lo) * out_step,
                                   out_step, hi - lo, cn, blk, pf);
      }
      for (int64_t qq = q.lo; qq < q.hi; ++qq) {
        if (qq == lo) qq = hi;
        if (qq >= q.hi) break;
        int64_t bt = 0;
        for (int64_t t = 0; t < nt; ++t) {
          const int64_t ow = qq - ms[t];
          if (ow < 0 || ow >= OW) continue;
          b_in[bt] = in_off[t] + qq * C;
          b_w[bt++] = w_off[t];
        }
        T* o = out + (qq - q.lo) * out_step;
        if (bt == 0) {
          direct_fill<Act::kIdentity>(zeros, o, 0, 1, cn);
        } else {
          direct_pixels<Act::kIdentity, T, 1, 4>(gorow, 0, b_in, wc, b_w, bt, zeros, o, 0, cn);
        }
      }
    }
  }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    const int64_t taps = a.kH * a.kW, H = a.H;
    std::vector<int64_t> offs(static_cast<size_t>(5 * taps + 2 * a.kH));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / chunks.count, k = task % chunks.count;
      const int64_t c0 = chunks.first(k), cn = chunks.size(k);
      for (int64_t r = groups.begin(g), row_end = groups.end(g); r < row_end; ++r) {
        row(r / H, r % H, c0, cn, offs.data(), offs.data() + taps, offs.data() + 2 * taps, offs.data() + 3 * taps,
            offs.data() + 4 * taps, offs.data() + 5 * taps);
      }
    }
  }
};

// dst[k * ld + c] += sum_i g[i * g_step + c] * x[i * x_step + k * d_step + c] for k < KW, c < cn, over
// m >= 1 pixels. Register accumulators per (tap, vector), seeded by the first pixel; the order of the
// additions depends on the shape only.
template <typename T, int KW>
C10_ALWAYS_INLINE void direct_wgrad_row(const T* g, int64_t g_step, const T* x, int64_t x_step, int64_t d_step,
                                        int64_t m, int64_t cn, T* dst, int64_t ld,
                                        StreamPrefetcher* pf = nullptr) {
  constexpr int V = kVec<T>;
  constexpr int NV = KW <= 5 ? 2 : 1;
  int64_t c = 0;
  auto block = [&](auto nv) {
    constexpr int B = decltype(nv)::value;
    if (pf != nullptr) {
      pf[0].step();
      pf[1].step();
    }
    vec_t<T> acc[KW][B];
    {
      vec_t<T> gv[B];
      for (int v = 0; v < B; ++v) gv[v] = vload(g + c + v * V);
      for (int k = 0; k < KW; ++k) {
        for (int v = 0; v < B; ++v) acc[k][v] = gv[v] * vload(x + c + k * d_step + v * V);
      }
    }
    for (int64_t i = 1; i < m; ++i) {
      const T* gi = g + i * g_step + c;
      const T* xi = x + i * x_step + c;
      vec_t<T> gv[B];
      for (int v = 0; v < B; ++v) gv[v] = vload(gi + v * V);
      for (int k = 0; k < KW; ++k) {
        for (int v = 0; v < B; ++v) acc[k][v] += gv[v] * vload(xi + k * d_step + v * V);
      }
    }
    for (int k = 0; k < KW; ++k) {
      for (int v = 0; v < B; ++v) {
        T* d = dst + k * ld + c + v * V;
        vstore(d, vload(d) + acc[k][v]);
      }
    }
  };
  for (; c + NV * V <= cn; c += NV * V) block(std::integral_constant<int, NV>{});
  if (NV > 1 && c + V <= cn) {
    block(std::integral_constant<int, 1>{});
    c += V;
  }
  for (; c < cn; ++c) {
    for (int k = 0; k < KW; ++k) {
      T s = g[c] * x[k * d_step + c];
      for (int64_t i = 1; i < m; ++i) s += g[i * g_step + c] * x[i * x_step + k * d_step + c];
      dst[k * ld + c] += s;
    }
  }
}

// dst[c] += sum_i g[i * g_step + c] over m >= 1 pixels, alternating between two accumulators.
template <typename T>
C10_ALWAYS_INLINE void direct_sum_row(const T* g, int64_t g_step, int64_t m, int64_t cn, T* dst) {
  constexpr int V = kVec<T>;
  int64_t c = 0;
  for (; c + 2 * V <= cn; c += 2 * V) {
    vec_t<T> s0[2], s1[2];
    for (int v = 0; v < 2; ++v) {
      s0[v] = vload(g + c + v * V);
      s1[v] = vec_t<T>{};
    }
    int64_t i = 1;
    for (; i + 2 <= m; i += 2) {
      const T* gi = g + i * g_step + c;
      for (int v = 0; v < 2; ++v) {
        s1[v] += vload(gi + v * V);
        s0[v] += vload(gi + g_step + v * V);
      }
    }
    if (i < m) {
      for (int v = 0; v < 2; ++v) s1[v] += vload(g + i * g_step + c + v * V);
    }
    for (int v = 0; v < 2; ++v) vstore(dst + c + v * V, vload(dst + c + v * V) + (s0[v] + s1[v]));
  }
  for (; c < cn; ++c) {
    T s = g[c];
    for (int64_t i = 1; i < m; ++i) s += g[i * g_step + c];
    dst[c] += s;
  }
}

// grad_weight and grad_bias partials: task (row group g, channel chunk) adds its channels' sums into
// part[g] (kH * kW + 1, Cp); the last tap row is grad_bias. The row groups depend on the shape only,
// so the results do not depend on the thread count.
template <typename T>
struct GradWeightDirect {
  static constexpr int V = kVec<T>;
  const DepthwiseArgs& a;
  ChannelChunks chunks;
  RowGroups groups;  // over the N * OH output rows
  int64_t Cp;
  int64_t ow_lo, ow_hi;  // output columns whose window lies inside the image
  bool stream;           // operands streamed from memory: prefetch the next rows
  const T* x;            // (N, H, W, C)
  const T* go;           // (N, OH, OW, C)
  T* part = nullptr;     // (groups.count, kH * kW + 1, Cp), zeroed

  GradWeightDirect(const DepthwiseArgs& a_, const at::Tensor& grad_out) : a(a_) {
    Cp = round_up(a.C, V);
    groups = make_row_groups(a.N, a.OH, a.OW * a.C, a.OH);
    chunks = channel_chunks(a.C, 2 * V, groups.count);
    ow_lo = std::min(a.OW, div_ceil(a.pW, a.sW));
    ow_hi = std::clamp<int64_t>(div_floor(a.W - 1 + a.pW - (a.kW - 1) * a.dW, a.sW) + 1, ow_lo, a.OW);
    stream = a.N * a.H * a.W * a.C * static_cast<int64_t>(sizeof(T)) >= kStreamBytes;
    x = a.input.data_ptr<T>();
    go = grad_out.data_ptr<T>();
  }
  int64_t tasks() const { return groups.count * chunks.count; }

  C10_ALWAYS_INLINE void row(int64_t n, int64_t oh, int64_t c0, int64_t cn, T* dst /* part[g] + c0 */) const {
    const int64_t C = a.C, W = a.W, OW = a.OW, kW = a.kW, sW = a.sW, pW = a.pW, dW = a.dW, taps = a.kH * kW;
    const T* grow = go + (n * a.OH + oh) * OW * C + c0;
    direct_sum_row(grow, C, OW, cn, dst + taps * Cp);
    const TapRange kh = valid_taps(oh, a.sH, a.pH, a.dH, a.kH, a.H);
    StreamPrefetcher pf[2];  // the input rows and the grad_output row the next output row adds
    StreamPrefetcher* ppf = nullptr;
    if (stream && oh + 1 < a.OH && kh.hi > kh.lo) {
      const int64_t next = oh * a.sH - a.pH + (a.kH - 1) * a.dH + 1;
      const int64_t r0 = std::clamp<int64_t>(next, 0, a.H), r1 = std::clamp<int64_t>(next + a.sH, r0, a.H);
      const int64_t steps = (kh.hi - kh.lo) * div_ceil(cn, (kW <= 5 ? 2 : 1) * V);
      pf[0].start(x + (n * a.H + r0) * W * C, x + (n * a.H + r1) * W * C, steps);
      pf[1].start(grow - c0 + OW * C, grow - c0 + 2 * OW * C, steps);
      ppf = pf;
    }
    for (int64_t i = kh.lo; i < kh.hi; ++i) {
      const T* xrow = x + ((n * a.H + oh * a.sH - a.pH + i * a.dH) * W) * C + c0;
      T* di = dst + i * kW * Cp;
      if (ow_hi > ow_lo) {
        const T* g0 = grow + ow_lo * C;
        const T* x0 = xrow + (ow_lo * sW - pW) * C;
        const int64_t m = ow_hi - ow_lo;
        switch (kW) {
          case 3: direct_wgrad_row<T, 3>(g0, C, x0, sW * C, dW * C, m, cn, di, Cp, ppf); break;
          case 5: direct_wgrad_row<T, 5>(g0, C, x0, sW * C, dW * C, m, cn, di, Cp, ppf); break;
          case 7: direct_wgrad_row<T, 7>(g0, C, x0, sW * C, dW * C, m, cn, di, Cp, ppf); break;
          default:
            for (int64_t j = 0; j < kW; ++j) {
              direct_wgrad_row<T, 1>(g0, C, x0 + j * dW * C, sW * C, 0, m, cn, di + j * Cp, Cp);
            }
        }
      }
      for (int64_t ow = 0; ow < OW; ++ow) {  // border columns: each valid tap on its own
        if (ow == ow_lo) ow = ow_hi;
        if (ow >= OW) break;
        const TapRange kw = valid_taps(ow, sW, pW, dW, kW, W);
        for (int64_t j = kw.lo; j < kw.hi; ++j) {
          direct_wgrad_row<T, 1>(grow + ow * C, C, xrow + (ow * sW - pW + j * dW) * C, 0, 0, 1, cn, di + j * Cp, Cp);
        }
      }
    }
  }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    const int64_t OH = a.OH, taps = a.kH * a.kW;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / chunks.count, k = task % chunks.count;
      const int64_t c0 = chunks.first(k), cn = chunks.size(k);
      T* dst = part + g * (taps + 1) * Cp + c0;
      for (int64_t r = groups.begin(g), row_end = groups.end(g); r < row_end; ++r) row(r / OH, r % OH, c0, cn, dst);
    }
  }
};

// ----------------------------------------------------------------------------- forward, channels_last

template <typename scalar_t, Act A, bool kStats>
struct ForwardChannelsLast {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int V = kVec<acc_t>;
  const DepthwiseArgs& a;
  ChannelSlabs slabs;
  int64_t ncols;      // staged input columns (a row narrower than one pixel block runs past OW)
  RowGroups groups;   // over the N * OH output rows
  const acc_t* wb;    // (blocks, kH * kW, V)
  const acc_t* bias;  // (blocks * V,)
  const scalar_t* x;  // (N, H, W, C)
  scalar_t* y;        // (N, OH, OW, C)
  double* part_mean;  // (groups.count, C), kStats only
  double* part_m2;

  ForwardChannelsLast(const DepthwiseArgs& a_, const at::Tensor& out) : a(a_), slabs(channel_slabs(a_.C, V)) {
    ncols = (std::max<int64_t>(a.OW, kPixBlock) - 1) * a.sW + (a.kW - 1) * a.dW + 1;
    groups = make_row_groups(a.N, a.OH, a.OW * a.C,
                             chunk_rows(ncols * slabs.width * V, a.sH, (a.kH - 1) * a.dH + 1));
    x = a.input.data_ptr<scalar_t>();
    y = out.data_ptr<scalar_t>();
  }
  int64_t tasks() const { return groups.count; }
  int64_t staged_rows(int64_t rn) const { return (rn - 1) * a.sH + (a.kH - 1) * a.dH + 1; }
  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    const int64_t C = a.C, T = a.kH * a.kW, nslabs = slabs.count;
    const int64_t H = a.H, W = a.W, OH = a.OH, OW = a.OW, sH = a.sH, sW = a.sW, dH = a.dH;
    const int64_t plane = staged_rows(groups.chunk) * ncols * V;
    std::vector<acc_t> buf(static_cast<size_t>(slabs.width * plane));
    std::vector<int64_t> in_off(groups.chunk * T), w_off(groups.chunk * T), taps(groups.chunk);
    StreamPrefetcher prefetcher;
    const acc_t zeros[V] = {};
    const int64_t zero_off[1] = {0};
    std::vector<acc_t> tmp(kStats ? 3 * C : 0);
    std::vector<double> g_mean(kStats ? C : 0), g_m2(kStats ? C : 0);
    std::vector<double> p_mean(kStats ? C : 0), p_m2(kStats ? C : 0);
    for (int64_t g = begin; g < end; ++g) {
      double gn = 0;
      if (kStats) {
        std::fill(g_mean.begin(), g_mean.end(), 0.0);
        std::fill(g_m2.begin(), g_m2.end(), 0.0);
      }
      for (int64_t row = groups.begin(g), row_end = groups.end(g); row < row_end;) {
        const int64_t n = row / OH, oh0 = row % OH;
        const int64_t rn = groups.sub_chunk(row, row_end);
        {  // the input rows of the next sub-chunk (of this group or the next one)
          const int64_t next = row + rn < row_end ? row + rn : (g + 1 < end ? groups.begin(g + 1) : -1);
          if (next >= 0) {
            const int64_t next_end = row + rn < row_end ? row_end : groups.end(g + 1);
            const int64_t n2 = next / OH, ih = (next % OH) * sH - a.pH;
            const int64_t lo = std::clamp<int64_t>(ih, 0, H);
            const int64_t hi = std::clamp<int64_t>(ih + staged_rows(groups.sub_chunk(next, next_end)), lo, H);
            prefetcher.start(x + (n2 * H + lo) * W * C, x + (n2 * H + hi) * W * C,
                             slabs.blocks * rn * div_ceil(OW, kPixBlock));
          } else {
            prefetcher.start(x, x, 0);
          }
        }
        for (int64_t s = 0; s < nslabs; ++s) {
          const int64_t b0 = slabs.first(s), nb = slabs.size(s);
          stage_channel_blocks<V>(x + n * H * W * C, H, W, C, b0 * V, nb, oh0 * sH - a.pH, staged_rows(rn), -a.pW,
                                  ncols, plane, buf.data());
          // Tap lists of the sub-chunk's rows; a row's taps skip kernel rows in the padding.
          for (int64_t r = 0; r < rn; ++r) {
            const TapRange kh = valid_taps(oh0 + r, sH, a.pH, dH, a.kH, H);
            int64_t t = 0;
            for (int64_t i = kh.lo; i < kh.hi; ++i) {
              for (int64_t j = 0; j < a.kW; ++j, ++t) {
                in_off[r * T + t] = ((r * sH + i * dH) * ncols + j * a.dW) * V;
                w_off[r * T + t] = (i * a.kW + j) * V;
              }
            }
            taps[r] = t;
          }
          // Channel blocks outer: the rows of one staged plane stay in L1 while the output rows
          // sweep down it.
          for (int64_t b = b0; b < b0 + nb; ++b) {
            const int64_t cn = std::min<int64_t>(V, C - b * V);
            const acc_t* in = buf.data() + (b - b0) * plane;
            const acc_t* w = wb + b * T * V;
            for (int64_t r = 0; r < rn; ++r) {
              const int64_t* io = in_off.data() + r * T;
              const int64_t* wo = w_off.data() + r * T;
              scalar_t* yrow = y + (n * OH + oh0 + r) * OW * C + b * V;
              for (int64_t j = 0; j < OW; j += kPixBlock) {
                // The last block ends at OW (recomputing a few pixels) when the row has a full block.
                const int64_t j0 = std::max<int64_t>(0, std::min(j, OW - kPixBlock));
                prefetcher.step();
                acc_t acc[kPixBlock][V];
                if (taps[r] > 0 && sW == 1) {
                  channels_last_block<acc_t, V>(in + j0 * V, io, w, wo, taps[r], V, acc);
                } else if (taps[r] > 0 && sW == 2) {
                  channels_last_block<acc_t, 2 * V>(in + j0 * 2 * V, io, w, wo, taps[r], 2 * V, acc);
                } else if (taps[r] > 0) {
                  channels_last_block<acc_t>(in + j0 * sW * V, io, w, wo, taps[r], sW * V, acc);
                } else {  // a window entirely in the padding
                  channels_last_block<acc_t>(zeros, zero_off, zeros, zero_off, 1, 0, acc);
                }
                store_channels_last<A>(acc, bias + b * V, std::min<int64_t>(kPixBlock, OW - j0), cn, yrow + j0 * C,
                                       C);
              }
            }
          }
        }
        if (kStats) {
          cpu::channel_stats(y + (n * OH + oh0) * OW * C, rn * OW, C, C, tmp.data(), p_mean.data(), p_m2.data());
          merge_part(gn, g_mean.data(), g_m2.data(), p_mean.data(), p_m2.data(), C, rn * OW);
        }
        row += rn;
      }
      if (kStats) {
        std::copy(g_mean.begin(), g_mean.end(), part_mean + g * C);
        std::copy(g_m2.begin(), g_m2.end(), part_m2 + g * C);
      }
    }
  }
};

// ----------------------------------------------------------------------------- forward, NCHW

// (RB rows, NV vectors) per register block, from the number of output columns.
template <typename F>
void with_plane_block(int64_t cols, int64_t vec, const F& f) {
  const int64_t nvec = div_ceil(cols, vec);
  if (nvec <= 1) {
    f(std::integral_constant<int, 8>{}, std::integral_constant<int, 1>{});
  } else if (nvec == 2) {
    f(std::integral_constant<int, 4>{}, std::integral_constant<int, 2>{});
  } else {
    f(std::integral_constant<int, 2>{}, std::integral_constant<int, 4>{});
  }
}

template <typename scalar_t, Act A, bool kStats, int RB, int NV>
struct ForwardContiguous {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int64_t J = NV * kVec<acc_t>;  // output columns per block
  const DepthwiseArgs& a;
  RowGroups groups;   // over the N * OH output rows of one channel
  int64_t wq;         // staged entries per stride phase of a row
  const acc_t* w;     // (C, kH * kW)
  const acc_t* bias;  // (C,) or nullptr
  const scalar_t* x;  // (N, C, H, W)
  scalar_t* y;        // (N, C, OH, OW)
  double* part_mean;  // (groups.count, C), kStats only
  double* part_m2;

  ForwardContiguous(const DepthwiseArgs& a_, const at::Tensor& out) : a(a_) {
    wq = round_up(a.OW, J) + (a.kW - 1) * a.dW / a.sW;
    groups = make_row_groups(a.N, a.OH, a.OW, chunk_rows(a.sW * wq, a.sH, (a.kH - 1) * a.dH + 1));
    w = a.weight.data_ptr<acc_t>();
    bias = a.bias.defined() ? a.bias.data_ptr<acc_t>() : nullptr;
    x = a.input.data_ptr<scalar_t>();
    y = out.data_ptr<scalar_t>();
  }
  int64_t tasks() const { return a.C * groups.count; }
  int64_t staged_rows(int64_t rn) const { return (round_up(rn, RB) - 1) * a.sH + (a.kH - 1) * a.dH + 1; }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    const int64_t C = a.C, T = a.kH * a.kW, H = a.H, W = a.W, OH = a.OH, OW = a.OW, sH = a.sH, sW = a.sW;
    const int64_t row_len = sW * wq;
    std::vector<acc_t> buf(static_cast<size_t>(staged_rows(groups.chunk) * row_len));
    std::vector<int64_t> tap_off(T);
    for (int64_t i = 0; i < a.kH; ++i) {
      for (int64_t j = 0; j < a.kW; ++j) {
        tap_off[i * a.kW + j] = i * a.dH * row_len + (j * a.dW % sW) * wq + j * a.dW / sW;
      }
    }
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / groups.count, g = task % groups.count;
      const acc_t* wc = w + c * T;
      const acc_t b = bias ? bias[c] : acc_t(0);
      double gn = 0, g_mean = 0, g_m2 = 0;
      for (int64_t row = groups.begin(g), row_end = groups.end(g); row < row_end;) {
        const int64_t n = row / OH, oh0 = row % OH;
        const int64_t rn = groups.sub_chunk(row, row_end);
        stage_plane(x + (n * C + c) * H * W, H, W, W, oh0 * sH - a.pH, staged_rows(rn), -a.pW, sW, wq, buf.data());
        scalar_t* yp = y + ((n * C + c) * OH + oh0) * OW;
        for (int64_t r0 = 0; r0 < rn; r0 += RB) {
          const int64_t rb = std::min<int64_t>(RB, rn - r0);
          for (int64_t j0 = 0; j0 < OW; j0 += J) {
            const int64_t jn = std::min<int64_t>(J, OW - j0);
            acc_t acc[RB][J];
            plane_block<acc_t, RB, NV>(buf.data() + r0 * sH * row_len + j0, tap_off.data(), wc, T, sH * row_len, acc);
            for (int64_t r = 0; r < rb; ++r) {
              scalar_t* __restrict__ o = yp + (r0 + r) * OW + j0;
#pragma omp simd
              for (int64_t j = 0; j < jn; ++j) o[j] = static_cast<scalar_t>(act_forward<A>(acc[r][j] + b));
            }
          }
        }
        if (kStats) {
          double p_mean, p_m2;
          cpu::plane_stats(yp, rn * OW, p_mean, p_m2);
          merge_part(gn, &g_mean, &g_m2, &p_mean, &p_m2, 1, rn * OW);
        }
        row += rn;
      }
      if (kStats) {
        part_mean[g * C + c] = g_mean;
        part_m2[g * C + c] = g_m2;
      }
    }
  }
};

template <typename scalar_t, Act A, bool kStats>
void forward(const DepthwiseArgs& a, at::Tensor& out, at::Tensor* mean, at::Tensor* var) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<double> pmean, pm2;
  auto launch = [&](auto& k) {
    if (kStats) {
      pmean.assign(static_cast<size_t>(k.groups.count * a.C), 0.0);
      pm2.assign(pmean.size(), 0.0);
      k.part_mean = pmean.data();
      k.part_m2 = pm2.data();
    }
    parallel_run(k, k.tasks());
    if (kStats) {
      const RowGroups& G = k.groups;
      const auto group_pixels = [&](int64_t g) { return (G.end(g) - G.begin(g)) * a.OW; };
      cpu::finish_stats<acc_t>(pmean.data(), pm2.data(), G.count, a.C, group_pixels, *mean, *var);
    }
  };
  if (a.channels_last()) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      ForwardDirect<acc_t, A, kStats> k(a, out);
      const auto wt = tap_major_weights<acc_t>(a, k.Cp);
      const auto bias = padded_bias<acc_t>(a);
      k.wt = wt.data();
      k.bias = bias.data();
      launch(k);
    } else {
      ForwardChannelsLast<scalar_t, A, kStats> k(a, out);
      const auto wb = blocked_taps<acc_t>(a);
      const auto bias = padded_bias<acc_t>(a);
      k.wb = wb.data();
      k.bias = bias.data();
      launch(k);
    }
  } else {
    with_plane_block(a.OW, kVec<acc_t>, [&](auto rb, auto nv) {
      ForwardContiguous<scalar_t, A, kStats, decltype(rb)::value, decltype(nv)::value> k(a, out);
      launch(k);
    });
  }
}

// ----------------------------------------------------------------------------- grad_input

// Column phases of grad_input: input column iw = q * sW + rho - pW for q in cols[rho]; grad_output
// column ow is staged at u = ow - ow_base, zero outside [0, OW).
struct ColumnPhases {
  std::vector<TapRange> cols;
  int64_t ow_base = 0, ncols = 1;
};

// `block`: the register block's width; blocks_shift: the last block of a phase is shifted back to
// end at its last column (channels_last), else it runs past it (NCHW).
inline ColumnPhases column_phases(const DepthwiseArgs& a, int64_t block, bool blocks_shift) {
  ColumnPhases cp;
  const int64_t max_m = (a.kW - 1) * a.dW / a.sW;
  int64_t lo = INT64_MAX, hi = INT64_MIN;
  for (int64_t rho = 0; rho < a.sW; ++rho) {
    const TapRange q = phase_range(rho, a.sW, a.pW, a.W);
    cp.cols.push_back(q);
    if (q.hi > q.lo) {
      lo = std::min(lo, q.lo - max_m);
      const int64_t n = q.hi - q.lo;
      hi = std::max(hi, q.lo + (blocks_shift ? std::max(n, block) : round_up(n, block)));
    }
  }
  if (hi > lo) {
    cp.ow_base = lo;
    cp.ncols = hi - lo;
  }
  return cp;
}

template <typename scalar_t>
struct GradInputChannelsLast {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int V = kVec<acc_t>;
  const DepthwiseArgs& a;
  ChannelSlabs slabs;
  ColumnPhases phases;
  RowGroups groups;    // over the N * H input rows
  const acc_t* wb;     // (blocks, kH * kW, V)
  const scalar_t* go;  // (N, OH, OW, C)
  scalar_t* gi;        // (N, H, W, C)

  GradInputChannelsLast(const DepthwiseArgs& a_, const at::Tensor& grad_out, const at::Tensor& grad_in)
      : a(a_), slabs(channel_slabs(a_.C, V)), phases(column_phases(a_, kPixBlock, true)) {
    // A sub-chunk of rn input rows stages about rn / sH + (kH - 1) * dH / sH + 1 grad_output rows.
    const int64_t fit = kStageElements / (phases.ncols * slabs.width * V);
    groups = make_row_groups(a.N, a.H, a.W * a.C, (fit - 1) * a.sH - (a.kH - 1) * a.dH + 1);
    go = grad_out.data_ptr<scalar_t>();
    gi = grad_in.data_ptr<scalar_t>();
  }
  int64_t tasks() const { return groups.count; }
  // grad_output rows [lo, hi) that input rows [ih0, ih0 + rn) received from.
  TapRange output_rows(int64_t ih0, int64_t rn) const {
    const int64_t lo = std::max<int64_t>(0, div_ceil(ih0 + a.pH - (a.kH - 1) * a.dH, a.sH));
    return {lo, std::max(lo, std::min<int64_t>(a.OH, div_floor(ih0 + rn - 1 + a.pH, a.sH) + 1))};
  }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    const int64_t C = a.C, T = a.kH * a.kW, nslabs = slabs.count;
    const int64_t H = a.H, W = a.W, OH = a.OH, OW = a.OW, sH = a.sH, sW = a.sW, dH = a.dH, dW = a.dW;
    const int64_t ncols = phases.ncols;
    const int64_t plane = ((groups.chunk - 1 + (a.kH - 1) * dH) / sH + 1) * ncols * V;
    std::vector<acc_t> buf(static_cast<size_t>(slabs.width * plane));
    std::vector<int64_t> in_off(groups.chunk * sW * T), w_off(groups.chunk * sW * T), taps(groups.chunk * sW);
    const acc_t zeros[V] = {};
    const int64_t zero_off[1] = {0};
    for (int64_t g = begin; g < end; ++g) {
      for (int64_t row = groups.begin(g), row_end = groups.end(g); row < row_end;) {
        const int64_t n = row / H, ih0 = row % H;
        const int64_t rn = groups.sub_chunk(row, row_end);
        const TapRange oh = output_rows(ih0, rn);
        for (int64_t s = 0; s < nslabs; ++s) {
          const int64_t b0 = slabs.first(s), nb = slabs.size(s);
          if (oh.hi > oh.lo) {
            stage_channel_blocks<V>(go + n * OH * OW * C, OH, OW, C, b0 * V, nb, oh.lo, oh.hi - oh.lo,
                                    phases.ow_base, ncols, plane, buf.data());
          }
          // Tap lists per (input row, column phase): ih + pH = oh * sH + kh * dH, iw + pW = ow * sW + kw * dW.
          for (int64_t r = 0; r < rn; ++r) {
            for (int64_t rho = 0; rho < sW; ++rho) {
              const TapRange q = phases.cols[rho];
              int64_t t = 0;
              for (int64_t i = 0; i < a.kH; ++i) {
                const int64_t num = ih0 + r + a.pH - i * dH;
                if (num < 0 || num % sH != 0 || num / sH >= OH) continue;
                for (int64_t j = 0; j < a.kW; ++j) {
                  if (j * dW % sW != rho) continue;
                  const int64_t m = j * dW / sW;  // ow = q - m
                  in_off[(r * sW + rho) * T + t] = ((num / sH - oh.lo) * ncols + (q.lo - m - phases.ow_base)) * V;
                  w_off[(r * sW + rho) * T + t++] = (i * a.kW + j) * V;
                }
              }
              taps[r * sW + rho] = t;
            }
          }
          for (int64_t b = b0; b < b0 + nb; ++b) {
            const int64_t cn = std::min<int64_t>(V, C - b * V);
            const acc_t* in = buf.data() + (b - b0) * plane;
            const acc_t* w = wb + b * T * V;
            for (int64_t r = 0; r < rn; ++r) {
              for (int64_t rho = 0; rho < sW; ++rho) {
                const TapRange q = phases.cols[rho];
                const int64_t nq = q.hi - q.lo, nt = taps[r * sW + rho];
                const int64_t* io = in_off.data() + (r * sW + rho) * T;
                const int64_t* wo = w_off.data() + (r * sW + rho) * T;
                scalar_t* out0 = gi + ((n * H + ih0 + r) * W + q.lo * sW + rho - a.pW) * C + b * V;
                for (int64_t j = 0; j < nq; j += kPixBlock) {
                  const int64_t j0 = std::max<int64_t>(0, std::min(j, nq - kPixBlock));  // as in the forward
                  acc_t acc[kPixBlock][V];
                  if (nt > 0) {
                    channels_last_block<acc_t, V>(in + j0 * V, io, w, wo, nt, V, acc);
                  } else {  // pixels no tap reaches
                    channels_last_block<acc_t>(zeros, zero_off, zeros, zero_off, 1, 0, acc);
                  }
                  store_channels_last<Act::kIdentity>(acc, zeros, std::min<int64_t>(kPixBlock, nq - j0), cn,
                                                      out0 + j0 * sW * C, sW * C);
                }
              }
            }
          }
        }
        row += rn;
      }
    }
  }
};

template <typename scalar_t, int RB, int NV>
struct GradInputContiguous {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int64_t J = NV * kVec<acc_t>;
  const DepthwiseArgs& a;
  ColumnPhases phases;
  RowGroups groups;    // over the N * H input rows of one channel
  const acc_t* w;      // (C, kH * kW)
  const scalar_t* go;  // (N, C, OH, OW)
  scalar_t* gi;        // (N, C, H, W)

  GradInputContiguous(const DepthwiseArgs& a_, const at::Tensor& grad_out, const at::Tensor& grad_in)
      : a(a_), phases(column_phases(a_, J, false)) {
    groups = make_row_groups(a.N, a.H, a.W, (kStageElements / phases.ncols - 1) * a.sH - (a.kH - 1) * a.dH + 1);
    w = a.weight.data_ptr<acc_t>();
    go = grad_out.data_ptr<scalar_t>();
    gi = grad_in.data_ptr<scalar_t>();
  }
  int64_t tasks() const { return a.C * groups.count; }
  int64_t max_staged_rows() const {
    return round_up(div_ceil(groups.chunk, a.sH), RB) + (a.kH - 1) * a.dH / a.sH + 1;
  }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    const int64_t C = a.C, T = a.kH * a.kW, H = a.H, W = a.W, OH = a.OH, OW = a.OW, sH = a.sH, sW = a.sW;
    const int64_t dH = a.dH, dW = a.dW, ncols = phases.ncols, max_mh = (a.kH - 1) * dH / sH;
    std::vector<acc_t> buf(static_cast<size_t>(max_staged_rows() * ncols));
    std::vector<int64_t> tap_off(T);
    std::vector<acc_t> tap_w(T);
    std::vector<TapRange> qrows(sH);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / groups.count, g = task % groups.count;
      const acc_t* wc = w + c * T;
      for (int64_t row = groups.begin(g), row_end = groups.end(g); row < row_end;) {
        const int64_t n = row / H, ih0 = row % H;
        const int64_t rn = groups.sub_chunk(row, row_end);
        // Row phases: ih + pH = qh * sH + rho_h for qh in qrows[rho_h]; the blocks of RB rows
        // read grad_output rows [oh_base, oh_end), staged with zeros outside [0, OH).
        int64_t oh_base = INT64_MAX, oh_end = INT64_MIN;
        for (int64_t rho = 0; rho < sH; ++rho) {
          TapRange q{div_ceil(ih0 + a.pH - rho, sH), div_floor(ih0 + rn - 1 + a.pH - rho, sH) + 1};
          q.hi = std::max(q.lo, q.hi);
          qrows[rho] = q;
          if (q.hi > q.lo) {
            oh_base = std::min(oh_base, q.lo - max_mh);
            oh_end = std::max(oh_end, q.lo + round_up(q.hi - q.lo, RB));
          }
        }
        stage_plane(go + (n * C + c) * OH * OW, OH, OW, OW, oh_base, oh_end - oh_base, phases.ow_base, 1, ncols,
                    buf.data());
        scalar_t* gip = gi + (n * C + c) * H * W;
        for (int64_t rho_h = 0; rho_h < sH; ++rho_h) {
          const TapRange qh = qrows[rho_h];
          if (qh.hi <= qh.lo) continue;
          for (int64_t rho_w = 0; rho_w < sW; ++rho_w) {
            const TapRange qw = phases.cols[rho_w];
            if (qw.hi <= qw.lo) continue;
            // Element (qh, qw) of a tap sits at staged (qh - mh - oh_base, qw - mw - ow_base).
            int64_t taps = 0;
            for (int64_t i = 0; i < a.kH; ++i) {
              if (i * dH % sH != rho_h) continue;
              for (int64_t j = 0; j < a.kW; ++j) {
                if (j * dW % sW != rho_w) continue;
                tap_off[taps] = -(i * dH / sH) * ncols - j * dW / sW;
                tap_w[taps++] = wc[i * a.kW + j];
              }
            }
            for (int64_t q0 = qh.lo; q0 < qh.hi; q0 += RB) {
              const int64_t rb = std::min<int64_t>(RB, qh.hi - q0);
              for (int64_t p0 = qw.lo; p0 < qw.hi; p0 += J) {
                const int64_t jn = std::min<int64_t>(J, qw.hi - p0);
                if (taps == 0) {  // pixels no tap reaches
                  for (int64_t r = 0; r < rb; ++r) {
                    scalar_t* o = gip + ((q0 + r) * sH + rho_h - a.pH) * W + p0 * sW + rho_w - a.pW;
                    for (int64_t j = 0; j < jn; ++j) o[j * sW] = scalar_t(0);
                  }
                  continue;
                }
                acc_t acc[RB][J];
                plane_block<acc_t, RB, NV>(buf.data() + (q0 - oh_base) * ncols + (p0 - phases.ow_base),
                                           tap_off.data(), tap_w.data(), taps, ncols, acc);
                for (int64_t r = 0; r < rb; ++r) {
                  scalar_t* __restrict__ o = gip + ((q0 + r) * sH + rho_h - a.pH) * W + p0 * sW + rho_w - a.pW;
#pragma omp simd
                  for (int64_t j = 0; j < jn; ++j) o[j * sW] = static_cast<scalar_t>(acc[r][j]);
                }
              }
            }
          }
        }
        row += rn;
      }
    }
  }
};

// ----------------------------------------------------------------------------- grad_weight, grad_bias

template <typename scalar_t>
struct GradWeightChannelsLast {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int V = kVec<acc_t>;
  const DepthwiseArgs& a;
  ChannelSlabs slabs;
  int64_t Cp;          // channels padded to whole blocks
  int64_t ncols;       // staged input columns
  RowGroups groups;    // over the N * OH output rows
  const scalar_t* x;   // (N, H, W, C)
  const scalar_t* go;  // (N, OH, OW, C)
  acc_t* part;         // (groups.count, kH * kW + 1, Cp); the last tap row is grad_bias

  GradWeightChannelsLast(const DepthwiseArgs& a_, const at::Tensor& grad_out)
      : a(a_), slabs(channel_slabs(a_.C, V)), Cp(round_up(a_.C, V)) {
    ncols = (a.OW - 1) * a.sW + (a.kW - 1) * a.dW + 1;
    // Per output row: sH staged input rows of ncols and one grad_output row of OW (per slab).
    const int64_t fit = kStageElements / (slabs.width * V), span = ((a.kH - 1) * a.dH + 1 - a.sH) * ncols;
    groups = make_row_groups(a.N, a.OH, a.OW * a.C, (fit - span) / (a.sH * ncols + a.OW));
    x = a.input.data_ptr<scalar_t>();
    go = grad_out.data_ptr<scalar_t>();
  }
  int64_t tasks() const { return groups.count; }
  int64_t staged_rows(int64_t rn) const { return (rn - 1) * a.sH + (a.kH - 1) * a.dH + 1; }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    const int64_t C = a.C, T = a.kH * a.kW, nslabs = slabs.count;
    const int64_t H = a.H, W = a.W, OH = a.OH, OW = a.OW, sH = a.sH, sW = a.sW, dH = a.dH, dW = a.dW;
    const int64_t xplane = staged_rows(groups.chunk) * ncols * V, gplane = groups.chunk * OW * V;
    std::vector<acc_t> xbuf(static_cast<size_t>(slabs.width * xplane));
    std::vector<acc_t> gbuf(static_cast<size_t>(slabs.width * gplane));
    std::vector<acc_t> local(static_cast<size_t>((T + 1) * Cp));
    std::vector<TapRange> ow_range(a.kW);
    for (int64_t j = 0; j < a.kW; ++j) ow_range[j] = valid_outputs(j, sW, a.pW, dW, OW, W);
    acc_t ones[V];
    std::fill(ones, ones + V, acc_t(1));
    for (int64_t g = begin; g < end; ++g) {
      std::fill(local.begin(), local.end(), acc_t(0));
      for (int64_t row = groups.begin(g), row_end = groups.end(g); row < row_end;) {
        const int64_t n = row / OH, oh0 = row % OH;
        const int64_t rn = groups.sub_chunk(row, row_end);
        for (int64_t s = 0; s < nslabs; ++s) {
          const int64_t b0 = slabs.first(s), nb = slabs.size(s);
          stage_channel_blocks<V>(x + n * H * W * C, H, W, C, b0 * V, nb, oh0 * sH - a.pH, staged_rows(rn), -a.pW,
                                  ncols, xplane, xbuf.data());
          stage_channel_blocks<V>(go + row * OW * C, rn, OW, C, b0 * V, nb, 0, rn, 0, OW, gplane, gbuf.data());
          // Per channel block and tap, one reduction over the sub-chunk's rows (those whose kernel
          // row is inside the image) and the tap's valid columns.
          for (int64_t b = 0; b < nb; ++b) {
            const acc_t* gb = gbuf.data() + b * gplane;
            const acc_t* xb = xbuf.data() + b * xplane;
            acc_t* lb = local.data() + (b0 + b) * V;
            LaneSums<acc_t> sums;
            for (int64_t i = 0; i < a.kH; ++i) {
              const TapRange rows = valid_outputs(i, sH, a.pH, dH, OH, H);
              const int64_t r_lo = std::clamp<int64_t>(rows.lo - oh0, 0, rn);
              const int64_t r_hi = std::clamp<int64_t>(rows.hi - oh0, r_lo, rn);
              for (int64_t j = 0; j < a.kW; ++j) {
                const TapRange o = ow_range[j];
                if (o.hi <= o.lo || r_hi <= r_lo) continue;
                sums.zero();
                for (int64_t r = r_lo; r < r_hi; ++r) {
                  dot_pixels<acc_t>(gb + (r * OW + o.lo) * V, V, xb + ((r * sH + i * dH) * ncols + o.lo * sW + j * dW) * V,
                                    sW * V, o.hi - o.lo, sums);
                }
                sums.add_to(lb + (i * a.kW + j) * Cp);
              }
            }
            sums.zero();
            dot_pixels<acc_t>(gb, V, ones, 0, rn * OW, sums);
            sums.add_to(lb + T * Cp);
          }
        }
        row += rn;
      }
      std::copy(local.begin(), local.end(), part + g * (T + 1) * Cp);
    }
  }
};

template <typename scalar_t>
struct GradWeightContiguous {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int V = kVec<acc_t>;
  const DepthwiseArgs& a;
  int64_t OWp;         // output columns padded to whole vectors (zero grad_output beyond OW)
  int64_t wq;          // staged entries per stride phase of an input row
  int64_t x_cols;      // input columns read by some output; staged as zero beyond
  RowGroups groups;    // over the N * OH output rows of one channel
  const scalar_t* x;   // (N, C, H, W)
  const scalar_t* go;  // (N, C, OH, OW)
  acc_t* part;         // (groups.count, C, kH * kW + 1); the last entry is grad_bias

  GradWeightContiguous(const DepthwiseArgs& a_, const at::Tensor& grad_out) : a(a_) {
    OWp = round_up(a.OW, V);
    wq = OWp + (a.kW - 1) * a.dW / a.sW;
    x_cols = std::min<int64_t>(a.W, (a.OW - 1) * a.sW - a.pW + (a.kW - 1) * a.dW + 1);
    groups = make_row_groups(a.N, a.OH, a.OW, chunk_rows(a.sW * wq + OWp, a.sH, (a.kH - 1) * a.dH + 1));
    x = a.input.data_ptr<scalar_t>();
    go = grad_out.data_ptr<scalar_t>();
  }
  int64_t tasks() const { return a.C * groups.count; }
  int64_t staged_rows(int64_t rn) const { return (rn - 1) * a.sH + (a.kH - 1) * a.dH + 1; }

  // Whole padded rows are reduced for every tap: the products outside a tap's valid columns are
  // grad_output x staged zero padding (or zero grad_output x zero), so they add exact zeros, as in
  // PyTorch's im2col formulation. Rows whose kernel row is in the padding are skipped.
  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    const int64_t C = a.C, T = a.kH * a.kW, H = a.H, W = a.W, OH = a.OH, OW = a.OW, sH = a.sH, sW = a.sW;
    const int64_t dH = a.dH, dW = a.dW, row_len = sW * wq, nvec = OWp / V;
    std::vector<acc_t> xbuf(static_cast<size_t>(staged_rows(groups.chunk) * row_len));
    std::vector<acc_t> gbuf(static_cast<size_t>(groups.chunk * OWp));
    std::vector<LaneSums<acc_t>> sums(static_cast<size_t>(T + 1));
    acc_t ones[V];
    std::fill(ones, ones + V, acc_t(1));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / groups.count, g = task % groups.count;
      for (auto& s : sums) s.zero();
      for (int64_t row = groups.begin(g), row_end = groups.end(g); row < row_end;) {
        const int64_t n = row / OH, oh0 = row % OH;
        const int64_t rn = groups.sub_chunk(row, row_end);
        stage_plane(x + (n * C + c) * H * W, H, x_cols, W, oh0 * sH - a.pH, staged_rows(rn), -a.pW, sW, wq,
                    xbuf.data());
        stage_plane(go + ((n * C + c) * OH + oh0) * OW, rn, OW, OW, 0, rn, 0, 1, OWp, gbuf.data());
        for (int64_t i = 0; i < a.kH; ++i) {
          const TapRange rows = valid_outputs(i, sH, a.pH, dH, OH, H);
          const int64_t r_lo = std::clamp<int64_t>(rows.lo - oh0, 0, rn);
          const int64_t r_hi = std::clamp<int64_t>(rows.hi - oh0, r_lo, rn);
          for (int64_t j = 0; j < a.kW; ++j) {
            const acc_t* xs = xbuf.data() + i * dH * row_len + (j * dW % sW) * wq + j * dW / sW;
            for (int64_t r = r_lo; r < r_hi; ++r) {
              dot_pixels<acc_t>(gbuf.data() + r * OWp, V, xs + r * sH * row_len, V, nvec, sums[i * a.kW + j]);
            }
          }
        }
        dot_pixels<acc_t>(gbuf.data(), V, ones, 0, rn * nvec, sums[T]);
        row += rn;
      }
      for (int64_t t = 0; t <= T; ++t) part[(g * C + c) * (T + 1) + t] = sums[t].total();
    }
  }
};

// grad_weight (C, T) and grad_bias (C,) = sum over groups, in group order, of
// part[g * sg + c * sc + t * st] (t = T: grad_bias).
template <typename acc_t>
void finish_grad_weight(const std::vector<acc_t>& part, int64_t groups, int64_t C, int64_t T, int64_t sg, int64_t sc,
                        int64_t st, at::Tensor& grad_weight, at::Tensor& grad_bias) {
  acc_t* gw = grad_weight.data_ptr<acc_t>();
  acc_t* gb = grad_bias.data_ptr<acc_t>();
  at::parallel_for(0, C, 16, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t t = 0; t <= T; ++t) {
        double total = 0;
        for (int64_t g = 0; g < groups; ++g) total += part[g * sg + c * sc + t * st];
        (t < T ? gw[c * T + t] : gb[c]) = static_cast<acc_t>(total);
      }
    }
  });
}

template <typename scalar_t>
void grad_weight_and_bias(const DepthwiseArgs& a, const at::Tensor& go, at::Tensor& gw, at::Tensor& gb) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t T = a.kH * a.kW;
  std::vector<acc_t> part;
  if (a.channels_last()) {
    auto launch = [&](auto& k) {
      const int64_t Cp = k.Cp;
      part.assign(static_cast<size_t>(k.groups.count * (T + 1) * Cp), acc_t(0));
      k.part = part.data();
      parallel_run(k, k.tasks());
      finish_grad_weight(part, k.groups.count, a.C, T, (T + 1) * Cp, 1, Cp, gw, gb);
    };
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      GradWeightDirect<acc_t> k(a, go);
      launch(k);
    } else {
      GradWeightChannelsLast<scalar_t> k(a, go);
      launch(k);
    }
  } else {
    GradWeightContiguous<scalar_t> k(a, go);
    part.assign(static_cast<size_t>(k.groups.count * a.C * (T + 1)), acc_t(0));
    k.part = part.data();
    parallel_run(k, k.tasks());
    finish_grad_weight(part, k.groups.count, a.C, T, a.C * (T + 1), T + 1, 1, gw, gb);
  }
}

template <typename scalar_t>
void grad_input(const DepthwiseArgs& a, const at::Tensor& go, at::Tensor& gi) {
  using acc_t = at::opmath_type<scalar_t>;
  if (a.channels_last()) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      GradInputDirect<acc_t> k(a, go, gi);
      const auto wt = tap_major_weights<acc_t>(a, k.Cp);
      const std::vector<acc_t> zeros(static_cast<size_t>(k.Cp), acc_t(0));
      k.wt = wt.data();
      k.zeros = zeros.data();
      parallel_run(k, k.tasks());
    } else {
      GradInputChannelsLast<scalar_t> k(a, go, gi);
      const auto wb = blocked_taps<acc_t>(a);
      k.wb = wb.data();
      parallel_run(k, k.tasks());
    }
  } else {
    with_plane_block(div_ceil(a.W, a.sW), kVec<acc_t>, [&](auto rb, auto nv) {
      GradInputContiguous<scalar_t, decltype(rb)::value, decltype(nv)::value> k(a, go, gi);
      parallel_run(k, k.tasks());
    });
  }
}

// The forward at every dtype for one activation: what each depthwise_conv2d_fwd_<act>.cpp instantiates.
template <Act A>
void forward_every_dtype(const DepthwiseArgs& a, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "depthwise_conv2d_cpu",
                                  [&] { forward<scalar_t, A, false>(a, out, nullptr, nullptr); });
}

}  // namespace

namespace cpu {
// The units' entry points, every dtype each. The forward is one unit per activation
// (depthwise_conv2d_fwd_<act>.cpp, each an explicit specialization of depthwise_forward).
template <Act A>
void depthwise_forward(const DepthwiseArgs& a, at::Tensor& out);
template <> void depthwise_forward<Act::kIdentity>(const DepthwiseArgs& a, at::Tensor& out);
template <> void depthwise_forward<Act::kRelu>(const DepthwiseArgs& a, at::Tensor& out);
template <> void depthwise_forward<Act::kRelu6>(const DepthwiseArgs& a, at::Tensor& out);
template <> void depthwise_forward<Act::kHardswish>(const DepthwiseArgs& a, at::Tensor& out);
template <> void depthwise_forward<Act::kHardsigmoid>(const DepthwiseArgs& a, at::Tensor& out);
template <> void depthwise_forward<Act::kSigmoid>(const DepthwiseArgs& a, at::Tensor& out);
template <> void depthwise_forward<Act::kSilu>(const DepthwiseArgs& a, at::Tensor& out);
void depthwise_forward_stats(const DepthwiseArgs& a, at::Tensor& out, at::Tensor& mean,
                             at::Tensor& var);  // depthwise_conv2d_stats.cpp
void depthwise_grad_input(const DepthwiseArgs& a, const at::Tensor& go,
                          at::Tensor& grad_in);  // depthwise_conv2d_grad_input.cpp
void depthwise_grad_weight_and_bias(const DepthwiseArgs& a, const at::Tensor& go, at::Tensor& gw,
                                    at::Tensor& gb);  // depthwise_conv2d_grad_weight.cpp
}  // namespace cpu

}  // namespace mobilenet_kernels
