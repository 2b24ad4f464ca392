// Per-channel batch statistics of stored conv outputs (the *_stats ops of depthwise_conv2d_kernels.h and
// pointwise_conv2d.cpp): a part of the output (a block, a sub-chunk of rows) gives per-channel
// centred (mean, M2) in fp32 (double for float64) while it is still in cache; the parts are merged
// by Chan's formula in double, in an order fixed by the shape.
// The sums of a part run over y - K with K the part's first value of the channel (finite_or_zero),
// so a mean far from zero costs no digits (differences of nearby floats are exact).
// channel_stats and plane_stats are called from kernels compiled as target-attribute clones
// (cpu_dispatch.h), so they are always-inlined templates: compiled for the ISA of their caller.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "mk_common.h"  // finite_or_zero

namespace mobilenet_kernels {
namespace cpu {

// Merges (nb, mean_b, m2_b) into (na, mean_a, m2_a): Chan et al.'s pairwise update; the caller
// adds nb to its count. A part holding an Inf or a NaN has a non-finite mean, which the update would
// turn into NaN (inf - inf); it passes through as in a plain sum instead (+-Inf, or NaN for both
// signs), with a NaN M2, as in torch.
template <typename T>
C10_ALWAYS_INLINE void chan_merge(T na, T& mean_a, T& m2_a, T nb, T mean_b, T m2_b) {
  if (!std::isfinite(mean_a) || !std::isfinite(mean_b)) {
    mean_a = na == 0 ? mean_b : mean_a + mean_b;
    m2_a = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  const T n = na + nb;
  const T delta = mean_b - mean_a;
  mean_a += delta * (nb / n);
  m2_a += m2_b + delta * delta * (na * nb / n);
}

// Centred (mean[c], m2[c]) of the m >= 1 values y[i * ld + c], i < m, for channels c < cn (rows of
// channels-innermost stored values). tmp: 3 * cn accumulators. Channels are the vector lanes, so
// each channel is summed in row order whatever the vectorization.
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void channel_stats(const scalar_t* y, int64_t m, int64_t ld, int64_t cn, acc_t* tmp, double* mean,
                                     double* m2) {
  acc_t* __restrict__ shift = tmp;
  acc_t* __restrict__ s = tmp + cn;
  acc_t* __restrict__ s2 = tmp + 2 * cn;
  for (int64_t c = 0; c < cn; ++c) {
    shift[c] = finite_or_zero(static_cast<acc_t>(y[c]));
    s[c] = s2[c] = acc_t(0);
  }
  for (int64_t i = 0; i < m; ++i) {
    const scalar_t* __restrict__ yi = y + i * ld;
#pragma omp simd
    for (int64_t c = 0; c < cn; ++c) s[c] += static_cast<acc_t>(yi[c]) - shift[c];
  }
  const acc_t count = static_cast<acc_t>(m);
  for (int64_t c = 0; c < cn; ++c) s[c] /= count;  // the shifted mean
  for (int64_t i = 0; i < m; ++i) {
    const scalar_t* __restrict__ yi = y + i * ld;
#pragma omp simd
    for (int64_t c = 0; c < cn; ++c) {
      const acc_t d = (static_cast<acc_t>(yi[c]) - shift[c]) - s[c];
      s2[c] += d * d;
    }
  }
  for (int64_t c = 0; c < cn; ++c) {
    mean[c] = static_cast<double>(shift[c]) + static_cast<double>(s[c]);
    m2[c] = static_cast<double>(s2[c]);
  }
}

// Centred (mean, m2) of the m >= 1 contiguous stored values y[i] of one channel. The sums use
// kLanes explicit lane accumulators, added in a fixed order at the end: the summation order depends
// on m only, not on how the compiler vectorizes (an omp simd reduction's order is its own choice).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
C10_ALWAYS_INLINE void plane_stats(const scalar_t* __restrict__ y, int64_t m, double& mean, double& m2) {
  constexpr int kLanes = 64 / static_cast<int>(sizeof(acc_t));  // two AVX2 registers
  const acc_t shift = finite_or_zero(static_cast<acc_t>(y[0]));
  acc_t s[kLanes];
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) s[l] = acc_t(0);
  int64_t i = 0;
  for (; i + kLanes <= m; i += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) s[l] += static_cast<acc_t>(y[i + l]) - shift;
  }
  for (; i < m; ++i) s[0] += static_cast<acc_t>(y[i]) - shift;
  acc_t sum = 0;
  for (int l = 0; l < kLanes; ++l) sum += s[l];
  const acc_t mu = sum / static_cast<acc_t>(m);  // the shifted mean
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) s[l] = acc_t(0);
  for (i = 0; i + kLanes <= m; i += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const acc_t d = (static_cast<acc_t>(y[i + l]) - shift) - mu;
      s[l] += d * d;
    }
  }
  for (; i < m; ++i) {
    const acc_t d = (static_cast<acc_t>(y[i]) - shift) - mu;
    s[0] += d * d;
  }
  acc_t sum2 = 0;
  for (int l = 0; l < kLanes; ++l) sum2 += s[l];
  mean = static_cast<double>(shift) + static_cast<double>(mu);
  m2 = static_cast<double>(sum2);
}

// mean, var (C,) in acc_t from per-part centred partials pmean/pm2[b * C + c], b < parts: merged
// in part order in double (the result does not depend on the thread count); part b holds
// count(b) values of each channel. var is the biased variance (M2 / n).
template <typename acc_t, typename Count>
void finish_stats(const double* pmean, const double* pm2, int64_t parts, int64_t C, const Count& count,
                  at::Tensor& mean, at::Tensor& var) {
  acc_t* out_mean = mean.data_ptr<acc_t>();
  acc_t* out_var = var.data_ptr<acc_t>();
  at::parallel_for(0, C, 16, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double n = 0, mu = 0, m2 = 0;
      for (int64_t b = 0; b < parts; ++b) {
        const double nb = static_cast<double>(count(b));
        chan_merge(n, mu, m2, nb, pmean[b * C + c], pm2[b * C + c]);
        n += nb;
      }
      out_mean[c] = static_cast<acc_t>(mu);
      out_var[c] = static_cast<acc_t>(m2 / n);
    }
  });
}

}  // namespace cpu
}  // namespace mobilenet_kernels
