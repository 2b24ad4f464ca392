// squeeze_excite, C++ CPU kernels.
//
// Forward: out = x * scale_act(W2 act(W1 mean_hw(x) + b1) + b2), per (image, channel); also returns
//          pooled = mean_hw(x) (N, C) for the backward. Backward: grad_input and the four parameter
//          grads (formulas in squeeze_excite.h). The same three stages as the CUDA and Triton backends:
//   1. A reduction over HW per (n, c): sum x (forward), sum g * x (backward).
//        NCHW: one contiguous plane per (n, c), summed in 4 x V lanes.
//        channels_last: tasks own (image, pixel piece); each walks its pixels with blocks of up to
//        4 x V channels held in registers, and writes one partial row of C sums; partials are merged
//        over pieces in double, in piece order.
//   2. The excite step in the accumulation dtype, for all images at once: the per-image matvecs are
//      small GEMMs (M = N images), so each weight is read once per call rather than once per image.
//      Z1 = P W1^T and Z2 = H W2^T are "NT" products (a dot per output); the backward's transposed
//      products dH = dZ2 W2, dP = dZ1 W1, grad_W2 = dZ2^T H and grad_W1 = dZ1^T P are "NN" products
//      (an axpy over k per output row), so no weight is ever transposed. Activations and their
//      derivatives are applied as each output is stored.
//   3. One elementwise pass: out = x * s (forward); grad_x = g * s + dpooled / HW (backward).
// Layouts: NCHW and channels_last, both native (other strides are made dense first); output and
//          grad_input in the input's format.
// dtypes: float64 (double arithmetic), float32, float16, bfloat16 (float arithmetic, one rounding at
//         the store). Parameters arrive in the accumulation dtype (squeeze_excite.h) and their grads
//         are returned in each parameter's own dtype.
// Determinism: every value is computed by exactly one task, in an order fixed by the shape alone
//   (lane l of a dot sums k = l mod V in order, then a fixed tree; an NN output sums k in order; a
//   channels_last pixel piece sums its pixels in order; the pieces are merged in order), never by the
//   thread count or the register block a value lands in. Parameter grads sum over n in order. So
//   results are bitwise identical from run to run and for any number of threads.
// x86: each kernel is compiled twice, for the baseline ISA and for AVX2+FMA (picked at run time),
//   since the extension is built without -march flags (the scheme of depthwise_conv2d_kernels.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu_dispatch.h"
#include "squeeze_excite.h"

namespace mobilenet_kernels {
namespace {

using cpu::parallel_run;  // csrc/cpu/cpu_dispatch.h: baseline and AVX2 clones of each kernel

// ----------------------------------------------------------------------------- helpers

int64_t div_ceil(int64_t a, int64_t b) { return (a + b - 1) / b; }  // a >= 0, b > 0

template <typename acc_t>
constexpr int kVec = 32 / static_cast<int>(sizeof(acc_t));  // one AVX2 register

constexpr int64_t kTaskElements = 32768;    // elementwise pass: elements per task
constexpr int64_t kPieceElements = 16384;   // channels_last reduction: elements per pixel piece
constexpr int64_t kGemmTaskMacs = 65536;    // excite GEMMs: multiply-adds per task

// The V lanes of one accumulator summed by a fixed tree ((0+4)+(2+6))+((1+5)+(3+7)); destroys s.
template <int V, typename acc_t>
C10_ALWAYS_INLINE acc_t lane_sum(acc_t* s) {
  for (int w = V / 2; w >= 1; w /= 2) {
    for (int l = 0; l < w; ++l) s[l] += s[l + w];
  }
  return s[0];
}

// One term of a pass-1 sum: x (forward) or g * x (backward), in acc_t.
template <bool kProduct, typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
C10_ALWAYS_INLINE acc_t term(const scalar_t* a, const scalar_t* b, int64_t i) {
  if constexpr (kProduct) {
    return static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i]);
  } else {
    (void)b;
    return static_cast<acc_t>(a[i]);
  }
}

// y[i] = v rounded to scalar_t, by c10's own conversions. fp16/bf16 write the bits (`.x`): GCC does
// not vectorize an omp simd loop that assigns a c10::Half or c10::BFloat16 object (a struct copy), but
// does vectorize the same rounding stored to the member (5-10x on the fp16/bf16 passes).
template <typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void store(scalar_t* y, int64_t i, acc_t v) {
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    y[i].x = c10::detail::fp16_ieee_from_fp32_value(v);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    y[i].x = c10::detail::round_to_nearest_even(v);
  } else {
    y[i] = static_cast<scalar_t>(v);
  }
}

// ----------------------------------------------------------------------------- pass 1: sums over HW

// NCHW: out[plane] = sum_hw term / divisor for each (n, c) plane. Four lane-wise accumulators of one
// vector (the adds of a plane overlap), the whole vectors after them into the first, a fixed tree
// over the lanes, then the last HW mod V terms one by one: the order depends on HW alone. The
// accumulators never see a runtime lane index, so they stay in registers (small planes are common:
// 7x7, 1x1).
template <typename scalar_t, bool kProduct>
struct PlaneSums {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* a;
  const scalar_t* b;  // kProduct only
  acc_t* out;
  int64_t HW;
  acc_t divisor;

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    constexpr int V = kVec<acc_t>;
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* __restrict__ ap = a + plane * HW;
      const scalar_t* __restrict__ bp = kProduct ? b + plane * HW : nullptr;
      acc_t total = 0;
      int64_t i = 0;
      if (HW >= V) {
        acc_t s[4][V];
        for (int q = 0; q < 4; ++q) {
#pragma omp simd
          for (int l = 0; l < V; ++l) s[q][l] = acc_t(0);
        }
        for (; i + 4 * V <= HW; i += 4 * V) {
          for (int q = 0; q < 4; ++q) {
#pragma omp simd
            for (int l = 0; l < V; ++l) s[q][l] += term<kProduct>(ap, bp, i + q * V + l);
          }
        }
        for (; i + V <= HW; i += V) {
#pragma omp simd
          for (int l = 0; l < V; ++l) s[0][l] += term<kProduct>(ap, bp, i + l);
        }
#pragma omp simd
        for (int l = 0; l < V; ++l) s[0][l] = (s[0][l] + s[1][l]) + (s[2][l] + s[3][l]);
        total = lane_sum<V>(s[0]);
      }
      for (; i < HW; ++i) total += term<kProduct>(ap, bp, i);
      out[plane] = total / divisor;
    }
  }
};

// channels_last: the HW pixels of each image cut into `pieces` pieces of at most `piece` pixels, by
// the shape alone. Task t = (n, k) writes partial[t * C + c] = sum over its pixels, in pixel order;
// channels go in register blocks of 4V, then V, then one at a time.
template <typename scalar_t, bool kProduct>
struct PixelSums {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* a;
  const scalar_t* b;  // kProduct only
  acc_t* partial;
  int64_t C, HW, pieces, piece;

  template <int W>
  C10_ALWAYS_INLINE void block(const scalar_t* a0, const scalar_t* b0, int64_t pixels, acc_t* out) const {
    acc_t s[W];
#pragma omp simd
    for (int l = 0; l < W; ++l) s[l] = acc_t(0);
    for (int64_t p = 0; p < pixels; ++p) {
      const scalar_t* __restrict__ ap = a0 + p * C;
      const scalar_t* __restrict__ bp = kProduct ? b0 + p * C : nullptr;
#pragma omp simd
      for (int l = 0; l < W; ++l) s[l] += term<kProduct>(ap, bp, l);
    }
#pragma omp simd
    for (int l = 0; l < W; ++l) out[l] = s[l];
  }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    constexpr int V = kVec<acc_t>;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / pieces, p0 = (t % pieces) * piece, pixels = std::min(piece, HW - p0);
      const int64_t offset = (n * HW + p0) * C;
      const scalar_t* a0 = a + offset;
      const scalar_t* b0 = kProduct ? b + offset : nullptr;
      acc_t* out = partial + t * C;
      int64_t c = 0;
      for (; c + 4 * V <= C; c += 4 * V) block<4 * V>(a0 + c, kProduct ? b0 + c : nullptr, pixels, out + c);
      for (; c + V <= C; c += V) block<V>(a0 + c, kProduct ? b0 + c : nullptr, pixels, out + c);
      for (; c < C; ++c) block<1>(a0 + c, kProduct ? b0 + c : nullptr, pixels, out + c);
    }
  }
};

// out (N, C) = sum_hw term / divisor, for x (and g) dense in the layout L.
template <typename scalar_t, bool kProduct>
void hw_sums(const ChannelLayout& L, const scalar_t* a, const scalar_t* b, at::opmath_type<scalar_t> divisor,
             at::opmath_type<scalar_t>* out) {
  using acc_t = at::opmath_type<scalar_t>;
  if (!L.channels_last) {
    PlaneSums<scalar_t, kProduct> k{a, b, out, L.HW, divisor};
    parallel_run(k, L.N * L.C, div_ceil(kTaskElements, L.HW));
    return;
  }
  const int64_t pieces = div_ceil(L.HW, std::max<int64_t>(1, kPieceElements / L.C));
  const int64_t piece = div_ceil(L.HW, pieces);
  std::vector<acc_t> partial(static_cast<size_t>(L.N * pieces * L.C));
  PixelSums<scalar_t, kProduct> k{a, b, partial.data(), L.C, L.HW, pieces, piece};
  parallel_run(k, L.N * pieces, div_ceil(kPieceElements, piece * L.C));
  for (int64_t n = 0; n < L.N; ++n) {
    for (int64_t c = 0; c < L.C; ++c) {
      double total = 0;
      for (int64_t j = 0; j < pieces; ++j) total += partial[(n * pieces + j) * L.C + c];
      out[n * L.C + c] = static_cast<acc_t>(total) / divisor;
    }
  }
}

// ----------------------------------------------------------------------------- pass 2: the excite GEMMs

// out(i, j) = bias[j] + sum_k A[i * K + k] * B[j * K + k] for i < M, j < P: A (M, K) and B (P, K)
// row-major; epi(i, j0, values, count) stores `count` consecutive outputs of row i. Every dot runs
// one scheme (lane l sums k = l mod V in order, a fixed tree over the lanes, then the last K mod V
// terms one by one), so a value does not depend on the register block (BI images x BJ rows of B) it
// lands in. A task owns kMJ rows of B and sweeps all M images, so those rows are read from L1.
template <typename acc_t, class Epi>
struct GemmNT {
  static constexpr int kMI = 4, kMJ = 2;
  const acc_t* A;
  const acc_t* B;
  const acc_t* bias;
  int64_t M, P, K;
  Epi epi;

  int64_t tasks() const { return div_ceil(P, kMJ); }
  int64_t grain() const { return div_ceil(kGemmTaskMacs, std::max<int64_t>(1, kMJ * M * K)); }

  template <int BI, int BJ>
  C10_ALWAYS_INLINE void block(int64_t i0, int64_t j0) const {
    constexpr int V = kVec<acc_t>;
    const acc_t* a0 = A + i0 * K;
    const acc_t* b0 = B + j0 * K;
    acc_t z[BI][BJ];
    for (int bi = 0; bi < BI; ++bi) {
      for (int bj = 0; bj < BJ; ++bj) z[bi][bj] = acc_t(0);
    }
    int64_t k = 0;
    if (K >= V) {
      acc_t acc[BI][BJ][V];
      for (int bi = 0; bi < BI; ++bi) {
        for (int bj = 0; bj < BJ; ++bj) {
#pragma omp simd
          for (int l = 0; l < V; ++l) acc[bi][bj][l] = acc_t(0);
        }
      }
      for (; k + V <= K; k += V) {
        for (int bi = 0; bi < BI; ++bi) {
          for (int bj = 0; bj < BJ; ++bj) {
            const acc_t* __restrict__ ak = a0 + bi * K + k;
            const acc_t* __restrict__ bk = b0 + bj * K + k;
#pragma omp simd
            for (int l = 0; l < V; ++l) acc[bi][bj][l] += ak[l] * bk[l];
          }
        }
      }
      for (int bi = 0; bi < BI; ++bi) {
        for (int bj = 0; bj < BJ; ++bj) z[bi][bj] = lane_sum<V>(acc[bi][bj]);
      }
    }
    for (; k < K; ++k) {
      for (int bi = 0; bi < BI; ++bi) {
        for (int bj = 0; bj < BJ; ++bj) z[bi][bj] += a0[bi * K + k] * b0[bj * K + k];
      }
    }
    for (int bi = 0; bi < BI; ++bi) {
      for (int bj = 0; bj < BJ; ++bj) z[bi][bj] += bias[j0 + bj];
      epi(i0 + bi, j0, z[bi], BJ);
    }
  }

  template <int BJ>
  C10_ALWAYS_INLINE void rows(int64_t j0) const {
    int64_t i = 0;
    for (; i + kMI <= M; i += kMI) block<kMI, BJ>(i, j0);
    for (; i < M; ++i) block<1, BJ>(i, j0);
  }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    for (int64_t j = begin * kMJ; j < std::min(P, end * kMJ); j += kMJ) {
      if (j + kMJ <= P) {
        rows<kMJ>(j);
      } else {
        for (int64_t jj = j; jj < P; ++jj) rows<1>(jj);
      }
    }
  }
};

// out(i, j) = sum_k A[i * sa_i + k * sa_k] * B[k * P + j] for i < M, j < P: B (K, P) row-major, A
// strided (so A may be a transposed (N, C) buffer); epi as for GemmNT. Each output is one chain over
// k in order and the vectors run across j (independent outputs), so a value does not depend on the
// register block either. A task owns kNJ columns of B and sweeps all M rows of A.
template <typename acc_t, class Epi>
struct GemmNN {
  static constexpr int kMI = 4, kNJ = 2 * kVec<acc_t>;
  const acc_t* A;
  int64_t sa_i, sa_k;
  const acc_t* B;
  int64_t M, P, K;
  Epi epi;

  int64_t tasks() const { return div_ceil(P, kNJ); }
  int64_t grain() const { return div_ceil(kGemmTaskMacs, std::max<int64_t>(1, kNJ * M * K)); }

  template <int BI, int BJ>
  C10_ALWAYS_INLINE void block(int64_t i0, int64_t j0) const {
    acc_t acc[BI][BJ];
    for (int bi = 0; bi < BI; ++bi) {
#pragma omp simd
      for (int l = 0; l < BJ; ++l) acc[bi][l] = acc_t(0);
    }
    for (int64_t k = 0; k < K; ++k) {
      const acc_t* __restrict__ bk = B + k * P + j0;
      for (int bi = 0; bi < BI; ++bi) {
        const acc_t av = A[(i0 + bi) * sa_i + k * sa_k];
#pragma omp simd
        for (int l = 0; l < BJ; ++l) acc[bi][l] += av * bk[l];
      }
    }
    for (int bi = 0; bi < BI; ++bi) epi(i0 + bi, j0, acc[bi], BJ);
  }

  template <int BJ>
  C10_ALWAYS_INLINE void columns(int64_t j0) const {
    int64_t i = 0;
    for (; i + kMI <= M; i += kMI) block<kMI, BJ>(i, j0);
    for (; i < M; ++i) block<1, BJ>(i, j0);
  }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    constexpr int V = kVec<acc_t>;
    for (int64_t t = begin; t < end; ++t) {
      int64_t j = t * kNJ;
      if (j + kNJ <= P) {
        columns<kNJ>(j);
        continue;
      }
      if (j + V <= P) {
        columns<V>(j);
        j += V;
      }
      for (; j < P; ++j) columns<1>(j);
    }
  }
};

template <typename acc_t, class Epi>
void gemm_nt(const acc_t* A, const acc_t* B, const acc_t* bias, int64_t M, int64_t P, int64_t K, Epi epi) {
  GemmNT<acc_t, Epi> k{A, B, bias, M, P, K, epi};
  parallel_run(k, k.tasks(), k.grain());
}

template <typename acc_t, class Epi>
void gemm_nn(const acc_t* A, int64_t sa_i, int64_t sa_k, const acc_t* B, int64_t M, int64_t P, int64_t K, Epi epi) {
  GemmNN<acc_t, Epi> k{A, sa_i, sa_k, B, M, P, K, epi};
  parallel_run(k, k.tasks(), k.grain());
}

// GEMM epilogues: each stores `n` consecutive outputs v[0, n) of row i, starting at column j0, into
// row-major (., ld) buffers.
template <typename acc_t>
struct Store {
  acc_t* out;
  int64_t ld;
  C10_ALWAYS_INLINE void operator()(int64_t i, int64_t j0, const acc_t* v, int64_t n) const {
    acc_t* __restrict__ o = out + i * ld + j0;
#pragma omp simd
    for (int64_t l = 0; l < n; ++l) o[l] = v[l];
  }
};

// out = v / divisor (d = dpooled / HW).
template <typename acc_t>
struct DivideStore {
  acc_t* out;
  int64_t ld;
  acc_t divisor;
  C10_ALWAYS_INLINE void operator()(int64_t i, int64_t j0, const acc_t* v, int64_t n) const {
    acc_t* __restrict__ o = out + i * ld + j0;
#pragma omp simd
    for (int64_t l = 0; l < n; ++l) o[l] = v[l] / divisor;
  }
};

// out = act(z) (h, or s); pre, when set, keeps z itself (z1 for the backward).
template <Act A, typename acc_t>
struct ActStore {
  acc_t* out;
  acc_t* pre;
  int64_t ld;
  C10_ALWAYS_INLINE void operator()(int64_t i, int64_t j0, const acc_t* z, int64_t n) const {
    acc_t* __restrict__ o = out + i * ld + j0;
#pragma omp simd
    for (int64_t l = 0; l < n; ++l) o[l] = act_forward<A>(z[l]);
    if (pre != nullptr) {
      acc_t* __restrict__ p = pre + i * ld + j0;
#pragma omp simd
      for (int64_t l = 0; l < n; ++l) p[l] = z[l];
    }
  }
};

// The backward's z2 epilogue: s = scale_act(z2) and dz2 = ds * scale_act'(z2).
template <Act A, typename acc_t>
struct ScaleAndGradStore {
  acc_t* s;
  acc_t* dz;
  const acc_t* ds;
  int64_t ld;
  C10_ALWAYS_INLINE void operator()(int64_t i, int64_t j0, const acc_t* z, int64_t n) const {
    acc_t* __restrict__ so = s + i * ld + j0;
    acc_t* __restrict__ dzo = dz + i * ld + j0;
    const acc_t* __restrict__ dsi = ds + i * ld + j0;
#pragma omp simd
    for (int64_t l = 0; l < n; ++l) {
      so[l] = act_forward<A>(z[l]);
      dzo[l] = dsi[l] * act_derivative<A>(z[l]);
    }
  }
};

// dz1 = v * act'(z1), v = (dz2 W2)[i, j].
template <Act A, typename acc_t>
struct ActGradStore {
  acc_t* dz;
  const acc_t* z;
  int64_t ld;
  C10_ALWAYS_INLINE void operator()(int64_t i, int64_t j0, const acc_t* v, int64_t n) const {
    acc_t* __restrict__ o = dz + i * ld + j0;
    const acc_t* __restrict__ zi = z + i * ld + j0;
#pragma omp simd
    for (int64_t l = 0; l < n; ++l) o[l] = v[l] * act_derivative<A>(zi[l]);
  }
};

// Forward excite: s (N, C) = scale_act(W2 act(W1 pooled + b1) + b2); h (N, S) is scratch.
template <typename acc_t>
void excite_forward(const SqueezeExciteArgs& a, const acc_t* pooled, acc_t* h, acc_t* s) {
  const int64_t N = a.layout.N, C = a.layout.C, S = a.S;
  MK_DISPATCH_ACTIVATION(a.act, [&] {
    gemm_nt(pooled, a.w1.data_ptr<acc_t>(), a.b1.data_ptr<acc_t>(), N, S, C, ActStore<kAct, acc_t>{h, nullptr, S});
  });
  MK_DISPATCH_ACTIVATION(a.scale_act, [&] {
    gemm_nt(h, a.w2.data_ptr<acc_t>(), a.b2.data_ptr<acc_t>(), N, C, S, ActStore<kAct, acc_t>{s, nullptr, C});
  });
}

struct ExciteGrads {
  at::Tensor w1, b1, w2, b2;  // acc dtype: (S, C), (S,), (C, S), (C,); b1 and b2 start zeroed (sums)
};

// Backward excite, from pooled and ds = sum_hw g * x (both (N, C)): s (N, C), d = dpooled / HW (N, C),
// and the parameter grads. z1, h and z2 are recomputed from the saved pooled by the forward's GEMM
// kernel (same blocking, same order), so they are the values the forward used.
template <typename acc_t>
void excite_backward(const SqueezeExciteArgs& a, const acc_t* pooled, const acc_t* ds, acc_t* s, acc_t* d,
                     ExciteGrads& g) {
  const int64_t N = a.layout.N, C = a.layout.C, S = a.S;
  const acc_t* w1 = a.w1.data_ptr<acc_t>();
  const acc_t* w2 = a.w2.data_ptr<acc_t>();
  std::vector<acc_t> z1(N * S), h(N * S), dz1(N * S), dz2(N * C);

  // z1 = W1 pooled + b1, h = act(z1); z2 = W2 h + b2, s = scale_act(z2), dz2 = ds * scale_act'(z2)
  MK_DISPATCH_ACTIVATION(a.act, [&] {
    gemm_nt(pooled, w1, a.b1.data_ptr<acc_t>(), N, S, C, ActStore<kAct, acc_t>{h.data(), z1.data(), S});
  });
  MK_DISPATCH_ACTIVATION(a.scale_act, [&] {
    gemm_nt(h.data(), w2, a.b2.data_ptr<acc_t>(), N, C, S, ScaleAndGradStore<kAct, acc_t>{s, dz2.data(), ds, C});
  });
  // dz1 = (dz2 W2) * act'(z1); d = (dz1 W1) / HW
  MK_DISPATCH_ACTIVATION(a.act, [&] {
    gemm_nn(dz2.data(), C, 1, w2, N, S, C, ActGradStore<kAct, acc_t>{dz1.data(), z1.data(), S});
  });
  gemm_nn(dz1.data(), S, 1, w1, N, C, S, DivideStore<acc_t>{d, C, static_cast<acc_t>(a.layout.HW)});

  // Parameter grads: grad_W2 = dz2^T h and grad_W1 = dz1^T pooled (each output sums n in order), and
  // the biases' column sums, also in n order.
  gemm_nn(dz2.data(), 1, C, h.data(), C, S, N, Store<acc_t>{g.w2.data_ptr<acc_t>(), S});
  gemm_nn(dz1.data(), 1, S, pooled, S, C, N, Store<acc_t>{g.w1.data_ptr<acc_t>(), C});
  acc_t* __restrict__ gb2 = g.b2.data_ptr<acc_t>();
  acc_t* __restrict__ gb1 = g.b1.data_ptr<acc_t>();
  for (int64_t n = 0; n < N; ++n) {
    const acc_t* __restrict__ dz2n = dz2.data() + n * C;
    const acc_t* __restrict__ dz1n = dz1.data() + n * S;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) gb2[c] += dz2n[c];
#pragma omp simd
    for (int64_t j = 0; j < S; ++j) gb1[j] += dz1n[j];
  }
}

// ----------------------------------------------------------------------------- pass 3: elementwise

// Forward: y = x * s[n, c]. Backward (kBackward): y = g * s[n, c] + d[n, c], with x = g.
template <typename scalar_t, bool kBackward>
struct ScalePass {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  const acc_t* s;
  const acc_t* d;  // kBackward only
  scalar_t* y;
  ChannelLayout L;

  int64_t tasks() const { return L.channels_last ? L.rows() : L.N * L.C; }
  int64_t grain() const { return div_ceil(kTaskElements, L.channels_last ? L.C : L.HW); }

  C10_ALWAYS_INLINE void run(int64_t begin, int64_t end) const {
    const int64_t C = L.C, HW = L.HW;
    if (L.channels_last) {
      for (int64_t m = begin; m < end; ++m) {  // one pixel of image m / HW
        const int64_t n = m / HW;
        const scalar_t* __restrict__ xr = x + m * C;
        const acc_t* __restrict__ sr = s + n * C;
        const acc_t* __restrict__ dr = kBackward ? d + n * C : nullptr;
        scalar_t* __restrict__ yr = y + m * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const acc_t v = static_cast<acc_t>(xr[c]) * sr[c];
          store(yr, c, kBackward ? v + dr[c] : v);
        }
      }
      return;
    }
    for (int64_t plane = begin; plane < end; ++plane) {
      const acc_t sv = s[plane], dv = kBackward ? d[plane] : acc_t(0);
      const scalar_t* __restrict__ xp = x + plane * HW;
      scalar_t* __restrict__ yp = y + plane * HW;
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) {
        const acc_t v = static_cast<acc_t>(xp[i]) * sv;
        store(yp, i, kBackward ? v + dv : v);
      }
    }
  }
};

template <typename scalar_t, bool kBackward>
void scale_pass(const ChannelLayout& L, const scalar_t* x, const at::opmath_type<scalar_t>* s,
                const at::opmath_type<scalar_t>* d, scalar_t* y) {
  ScalePass<scalar_t, kBackward> k{x, s, d, y, L};
  parallel_run(k, k.tasks(), k.grain());
}

// ----------------------------------------------------------------------------- ops

std::tuple<at::Tensor, at::Tensor> squeeze_excite_cpu(const at::Tensor& input, const at::Tensor& fc1_weight,
                                                      const at::Tensor& fc1_bias, const at::Tensor& fc2_weight,
                                                      const at::Tensor& fc2_bias, c10::string_view activation,
                                                      c10::string_view scale_activation) {
  const auto a = prepare_squeeze_excite(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, std::string(activation),
                                        std::string(scale_activation));
  const ChannelLayout& L = a.layout;
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(a.format));
  at::Tensor pooled = at::empty({L.N, L.C}, input.options().dtype(acc_type_for(input.scalar_type())));
  if (input.numel() == 0) return {out, pooled};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "squeeze_excite_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = a.input.data_ptr<scalar_t>();
    acc_t* p = pooled.data_ptr<acc_t>();
    hw_sums<scalar_t, false>(L, x, nullptr, static_cast<acc_t>(L.HW), p);
    std::vector<acc_t> h(L.N * a.S), s(L.N * L.C);
    excite_forward<acc_t>(a, p, h.data(), s.data());
    scale_pass<scalar_t, false>(L, x, s.data(), nullptr, out.data_ptr<scalar_t>());
  });
  return {out, pooled};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> squeeze_excite_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& pooled, const at::Tensor& fc1_weight,
    const at::Tensor& fc1_bias, const at::Tensor& fc2_weight, const at::Tensor& fc2_bias,
    c10::string_view activation, c10::string_view scale_activation) {
  const auto a = prepare_squeeze_excite(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, std::string(activation),
                                        std::string(scale_activation));
  const at::Tensor go = prepare_se_grad_output(grad_output, a, input);
  const at::Tensor pooled_acc = prepare_se_pooled(pooled, a);
  const ChannelLayout& L = a.layout;
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  at::Tensor grad_in = at::empty(input.sizes(), input.options().memory_format(a.format));
  // The weight grads are written whole by their GEMMs; with no images they are zero.
  auto weight_grad = [&](int64_t rows, int64_t cols) {
    return input.numel() > 0 ? at::empty({rows, cols}, acc_opts) : at::zeros({rows, cols}, acc_opts);
  };
  ExciteGrads g{weight_grad(a.S, L.C), at::zeros({a.S}, acc_opts), weight_grad(L.C, a.S), at::zeros({L.C}, acc_opts)};
  if (input.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "squeeze_excite_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const scalar_t* x = a.input.data_ptr<scalar_t>();
      const scalar_t* gy = go.data_ptr<scalar_t>();
      std::vector<acc_t> ds(L.N * L.C), s(L.N * L.C), d(L.N * L.C);
      hw_sums<scalar_t, true>(L, gy, x, acc_t(1), ds.data());
      excite_backward<acc_t>(a, pooled_acc.data_ptr<acc_t>(), ds.data(), s.data(), d.data(), g);
      scale_pass<scalar_t, true>(L, gy, s.data(), d.data(), grad_in.data_ptr<scalar_t>());
    });
  }
  return {grad_in, g.w1.to(fc1_weight.scalar_type()).view(fc1_weight.sizes()), g.b1.to(fc1_bias.scalar_type()),
          g.w2.to(fc2_weight.scalar_type()).view(fc2_weight.sizes()), g.b2.to(fc2_bias.scalar_type())};
}

}  // namespace

void cpu::squeeze_excite_scale(const SqueezeExciteArgs& a, const at::Tensor& pooled, at::Tensor& scale) {
  AT_DISPATCH_FLOATING_TYPES(pooled.scalar_type(), "squeeze_excite_scale_cpu", [&] {
    std::vector<scalar_t> h(a.layout.N * a.S);
    excite_forward<scalar_t>(a, pooled.data_ptr<scalar_t>(), h.data(), scale.data_ptr<scalar_t>());
  });
}

TORCH_LIBRARY_IMPL(mobilenet_kernels, CPU, m) {
  m.impl("squeeze_excite", &squeeze_excite_cpu);
  m.impl("squeeze_excite_backward", &squeeze_excite_backward_cpu);
}

}  // namespace mobilenet_kernels
