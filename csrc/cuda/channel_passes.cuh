// The per-channel passes of batch_norm_act's CUDA kernels (batch_norm_act.cu) over a dense input of
// N x C x HW elements: channels_last ((M, C), M = N * HW rows) or NCHW ((N, C, HW)).
//
// Reductions, two-stage and deterministic: stage 1 (reduce_nhwc_kernel / reduce_nchw_kernel) runs a
// term functor over a tile of each channel's M elements and writes two partial sums per (tile,
// channel); stage 2 (finish_kernel) sums a channel's tiles in a fixed order, in double, and hands the
// totals to a finish functor. The tiles depend on the shape alone (reduction_tiles), and every sum
// runs in a fixed order: bitwise deterministic for a given shape and vector width.
// Elementwise passes with per-channel coefficients: per_channel_nhwc_kernel / per_channel_nchw_kernel.
//
// channels_last: each thread handles V channels of a row as one 16-byte vector (V = 16 / sizeof
// scalar_t: 8 for float16 / bfloat16, 4 for float32, 2 for float64) where C and every pointer
// allow it (vector_width, mk_cuda.cuh), else one. GPU run 6 (batch 128 V3-Large training step)
// timed the BN backward's one-channel-per-thread passes at 48 us (reduction) and 43 us
// (grad_input) a launch, 2 B loads of 32 channels per warp row, against ATen's 30 us and 32 us for
// its vectorized ones.
//
// A functor reads kInputs dense tensors. load<V>(i) issues the 16-byte loads of elements
// i .. i + V - 1 (channels c .. c + V - 1 of one row) of each into an Inputs<Scalar, V, kInputs>.
// The channels_last kernels issue kRowsInFlight rows' loads (64 bytes a thread) before they use
// any, then hand each row's vectors to the functor in row order (for_rows_in_flight, mk_cuda.cuh,
// says why), so the arithmetic and its order are those of one row at a time. A term functor (the
// reductions) provides Scalar, State begin(c) and add<V>(states, i, in, sum0, sum1), which adds the
// terms of elements i .. i + V - 1 (states[j] channel c + j's) to sum0[j], sum1[j] and may write
// those elements of an output in the same pass; an elementwise functor provides Scalar, begin(c)
// and apply<V>(states, i, in). V = 1 on the NCHW paths.
// Shared by the CUDA launchers (batch_norm_act.cu) and the host emulation
// (python_tests/cuda_emulation/bn_host.cpp), which runs these kernels with these plans on the CPU.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "batch_norm_act.h"
#include "mk_cuda.cuh"

namespace mobilenet_kernels {
namespace cuda {
namespace bn {

constexpr int kThreads = 256;
constexpr int kFinishLanes = 16;  // tile lanes per channel in finish_kernel
// channels_last: rows whose loads a thread issues before it uses any, 64 bytes of them (16-byte
// vectors: four rows of one input, two of two; ptxas, sm_90: bf16 TrainInputGrad takes 64-99
// registers with two rows, 2-4 blocks of 256 threads per SM, and 128-149 with four, 1 block), and
// rows a thread of the elementwise pass takes per chunk (plan_per_channel).
template <typename Op>
inline constexpr int kRowsInFlight = 4 / Op::kInputs;
constexpr int kRowsPerThread = 4;

// The vectors a functor reads for one group of V elements: one per input tensor.
template <typename scalar_t, int V, int K>
struct Inputs {
  Vec<scalar_t, V> v[K];
};


// --------------------------------------------------------------------------------------- functors

// x and g = grad_out * act'(z), z = x * scale + shift with channel c + j's folded BatchNorm in s[j],
// of the loaded vectors of x and grad_out (the reduction pass; train_grad_in forms g the same way).
template <Act A, int V, typename scalar_t, typename acc_t, typename State>
__device__ __forceinline__ void x_and_g(const Vec<scalar_t, V>& xv, const Vec<scalar_t, V>& gv, const State* s,
                                        acc_t (&xj)[V], acc_t (&g)[V]) {
#pragma unroll
  for (int j = 0; j < V; ++j) {
    xj[j] = static_cast<acc_t>(xv.v[j]);
    g[j] = static_cast<acc_t>(gv.v[j]) * act_derivative<A>(xj[j] * s[j].scale + s[j].shift);
  }
}

// Terms of the backward: g * x_hat and g, g = grad_out * act'(z); in eval mode (kWriteGradInput)
// also grad_in = g * scale in the same pass.
template <typename scalar_t, typename acc_t, Act A, bool kWriteGradInput>
struct BackwardTerms {
  using Scalar = scalar_t;
  const scalar_t* __restrict__ gy;  // dense, the input's layout
  const scalar_t* __restrict__ x;   // dense
  scalar_t* __restrict__ gx;        // dense, or null
  const acc_t *mean, *var, *weight, *bias;
  acc_t eps;
  struct State {
    acc_t rstd, scale, shift, mu;
  };
  static constexpr int kInputs = 2;  // x, grad_out
  __device__ State begin(int64_t c) const {
    State s;
    bn_scale_shift<acc_t>(mean, var, weight, bias, eps, c, s.rstd, s.scale, s.shift);
    s.mu = mean[c];
    return s;
  }
  template <int V>
  __device__ Inputs<scalar_t, V, kInputs> load(int64_t i) const {
    return {{load_raw_vec<scalar_t, V>(x + i), load_raw_vec<scalar_t, V>(gy + i)}};
  }
  template <int V>
  __device__ void add(const State* s, int64_t i, const Inputs<scalar_t, V, kInputs>& in, acc_t* sum_gxhat,
                      acc_t* sum_g) const {
    acc_t xj[V], g[V];
    x_and_g<A, V>(in.v[0], in.v[1], s, xj, g);
    Vec<scalar_t, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if constexpr (kWriteGradInput) out.v[j] = static_cast<scalar_t>(g[j] * s[j].scale);
      sum_g[j] += g[j];
      sum_gxhat[j] += g[j] * (xj[j] - s[j].mu) * s[j].rstd;
    }
    if constexpr (kWriteGradInput) *reinterpret_cast<Vec<scalar_t, V>*>(gx + i) = out;
  }
};

template <typename acc_t>
struct StoreSums {
  acc_t *sum0, *sum1;
  __device__ void operator()(int64_t c, double a, double b) const {
    sum0[c] = static_cast<acc_t>(a);
    sum1[c] = static_cast<acc_t>(b);
  }
};

// Terms of the batch statistics: shifted sums of x - K_c and (x - K_c)^2, with K_c the channel's
// first element (finite_or_zero), so that a large mean does not cancel the variance away (mean 1e4,
// std 1 is fine). A NaN variance stays NaN.
template <typename scalar_t, typename acc_t>
struct ShiftedMomentTerms {
  using Scalar = scalar_t;
  const scalar_t* __restrict__ x;  // dense
  int64_t first_stride;            // offset of channel c's first element: c * first_stride
  using State = acc_t;
  static constexpr int kInputs = 1;
  __device__ State begin(int64_t c) const { return finite_or_zero(static_cast<acc_t>(x[c * first_stride])); }
  template <int V>
  __device__ Inputs<scalar_t, V, kInputs> load(int64_t i) const {
    return {{load_raw_vec<scalar_t, V>(x + i)}};
  }
  template <int V>
  __device__ void add(const State* K, int64_t, const Inputs<scalar_t, V, kInputs>& in, acc_t* s1, acc_t* s2) const {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const acc_t d = static_cast<acc_t>(in.v[0].v[j]) - K[j];
      s1[j] += d;
      s2[j] += d * d;
    }
  }
};

template <typename scalar_t, typename acc_t>
struct StoreMeanVar {
  const scalar_t* __restrict__ x;
  int64_t first_stride;
  double count;
  acc_t *mean, *var;  // (C,): batch mean and biased variance
  __device__ void operator()(int64_t c, double s1, double s2) const {
    const double K = static_cast<double>(finite_or_zero(static_cast<acc_t>(x[c * first_stride])));
    const double v = (s2 - s1 * s1 / count) / count;
    mean[c] = static_cast<acc_t>(K + s1 / count);
    var[c] = static_cast<acc_t>(v < 0 ? 0.0 : v);
  }
};

// Training backward, pass 2: grad_in = scale * (g - sum_g / M - x_hat * sum_gxhat / M), with
// x_hat * sum_gxhat / M = (x - mu) * k, k = rstd * sum_gxhat / M (x - mu first: no cancellation
// when |mu| >> std). A channel's coefficients, TrainDxCoef: also what the fused depthwise backward
// reads from a (kTrainDxRows, C) table (StoreSumsAndDxTable) to compute grad_in where it stages or
// loads its grad_output (csrc/cuda/depthwise_tiled.cuh), through the same train_grad_in: the same bits.
template <typename acc_t>
struct TrainDxCoef {
  acc_t scale, shift, mu, k, mean_g;
};
constexpr int kTrainDxRows = 5;

template <typename acc_t>
__device__ __forceinline__ TrainDxCoef<acc_t> train_dx_coef(const acc_t* mean, const acc_t* var, const acc_t* weight,
                                                            const acc_t* bias, const acc_t* sum_gxhat,
                                                            const acc_t* sum_g, acc_t eps, acc_t inv_count,
                                                            int64_t c) {
  TrainDxCoef<acc_t> s;
  acc_t rstd;
  bn_scale_shift<acc_t>(mean, var, weight, bias, eps, c, rstd, s.scale, s.shift);
  s.mu = mean[c];
  s.k = rstd * (sum_gxhat[c] * inv_count);
  s.mean_g = sum_g[c] * inv_count;
  return s;
}

// grad_in of one element: x the BatchNorm's input (z of the conv before it), gy its grad_output.
template <Act A, typename acc_t>
__device__ __forceinline__ acc_t train_grad_in(const TrainDxCoef<acc_t>& s, acc_t x, acc_t gy) {
  const acc_t g = gy * act_derivative<A>(x * s.scale + s.shift);
  return s.scale * (g - s.mean_g - (x - s.mu) * s.k);
}

// f(std::integral_constant<Act, A>{}) for the runtime activation act: a uniform branch to code
// compiled per activation, for device functions that take the activation at run time (fewer
// instantiations of the kernels that call them) and must give the bits of the per-activation
// templates the passes use.
template <typename F>
__device__ __forceinline__ auto with_activation(Act act, F f) {
  switch (act) {
    case Act::kRelu:
      return f(std::integral_constant<Act, Act::kRelu>{});
    case Act::kRelu6:
      return f(std::integral_constant<Act, Act::kRelu6>{});
    case Act::kHardswish:
      return f(std::integral_constant<Act, Act::kHardswish>{});
    case Act::kHardsigmoid:
      return f(std::integral_constant<Act, Act::kHardsigmoid>{});
    case Act::kSigmoid:
      return f(std::integral_constant<Act, Act::kSigmoid>{});
    case Act::kSilu:
      return f(std::integral_constant<Act, Act::kSilu>{});
    default:
      return f(std::integral_constant<Act, Act::kIdentity>{});
  }
}

// train_grad_in with the activation a runtime switch, each case train_grad_in<A> itself: the
// fused depthwise backward's TiledBnDx.
template <typename acc_t>
__device__ __forceinline__ acc_t train_grad_in(Act act, const TrainDxCoef<acc_t>& s, acc_t x, acc_t gy) {
  return with_activation(act, [&](auto a) { return train_grad_in<decltype(a)::value>(s, x, gy); });
}

// The apply pass's value at one element, act(x * scale + shift) (EvalApply, scale and shift from
// bn_scale_shift).
template <Act A, typename acc_t>
__device__ __forceinline__ acc_t apply_value(acc_t x, acc_t scale, acc_t shift) {
  return act_forward<A>(x * scale + shift);
}

// apply_value with the activation a runtime switch, each case apply_value<A> itself: the depthwise
// kernels that apply a BatchNorm to the input they stage (TiledInputBn, depthwise_tiled.cuh)
// compute the apply pass's bits.
template <typename acc_t>
__device__ __forceinline__ acc_t apply_value(Act act, acc_t x, acc_t scale, acc_t shift) {
  return with_activation(act, [&](auto a) { return apply_value<decltype(a)::value>(x, scale, shift); });
}

template <typename scalar_t, typename acc_t, Act A>
struct TrainInputGrad {
  using Scalar = scalar_t;
  const scalar_t* __restrict__ gy;
  const scalar_t* __restrict__ x;
  scalar_t* __restrict__ gx;
  const acc_t *mean, *var, *weight, *bias, *sum_gxhat, *sum_g;
  acc_t eps, inv_count;
  using State = TrainDxCoef<acc_t>;
  static constexpr int kInputs = 2;  // x, grad_out
  __device__ State begin(int64_t c) const {
    return train_dx_coef<acc_t>(mean, var, weight, bias, sum_gxhat, sum_g, eps, inv_count, c);
  }
  template <int V>
  __device__ Inputs<scalar_t, V, kInputs> load(int64_t i) const {
    return {{load_raw_vec<scalar_t, V>(x + i), load_raw_vec<scalar_t, V>(gy + i)}};
  }
  template <int V>
  __device__ void apply(const State* s, int64_t i, const Inputs<scalar_t, V, kInputs>& in) const {
    Vec<scalar_t, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      out.v[j] = static_cast<scalar_t>(
          train_grad_in<A>(s[j], static_cast<acc_t>(in.v[0].v[j]), static_cast<acc_t>(in.v[1].v[j])));
    }
    *reinterpret_cast<Vec<scalar_t, V>*>(gx + i) = out;
  }
};

// The training backward's reduction finish for the fused depthwise backward: the sums, as
// StoreSums, and from them the grad_input pass's coefficients (train_dx_coef) in a
// (kTrainDxRows, C) table, row r the r-th field of TrainDxCoef. The sums it reads back are those
// this thread has just written.
template <typename acc_t>
struct StoreSumsAndDxTable {
  acc_t *sum_gxhat, *sum_g;
  const acc_t *mean, *var, *weight, *bias;
  acc_t eps, inv_count;
  int64_t C;
  acc_t* table;
  __device__ void operator()(int64_t c, double a, double b) const {
    sum_gxhat[c] = static_cast<acc_t>(a);
    sum_g[c] = static_cast<acc_t>(b);
    const TrainDxCoef<acc_t> s = train_dx_coef<acc_t>(mean, var, weight, bias, sum_gxhat, sum_g, eps, inv_count, c);
    table[c] = s.scale;
    table[C + c] = s.shift;
    table[2 * C + c] = s.mu;
    table[3 * C + c] = s.k;
    table[4 * C + c] = s.mean_g;
  }
};

// Eval forward (and the training forward's apply pass on the batch statistics):
// y = act(x * scale + shift).
template <typename scalar_t, typename acc_t, Act A>
struct EvalApply {
  using Scalar = scalar_t;
  const scalar_t* __restrict__ x;
  scalar_t* __restrict__ y;
  const acc_t *mean, *var, *weight, *bias;
  acc_t eps;
  struct State {
    acc_t scale, shift;
  };
  static constexpr int kInputs = 1;
  __device__ State begin(int64_t c) const {
    State s;
    acc_t rstd;
    bn_scale_shift<acc_t>(mean, var, weight, bias, eps, c, rstd, s.scale, s.shift);
    return s;
  }
  template <int V>
  __device__ Inputs<scalar_t, V, kInputs> load(int64_t i) const {
    return {{load_raw_vec<scalar_t, V>(x + i)}};
  }
  template <int V>
  __device__ void apply(const State* s, int64_t i, const Inputs<scalar_t, V, kInputs>& in) const {
    Vec<scalar_t, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      out.v[j] = static_cast<scalar_t>(apply_value<A>(static_cast<acc_t>(in.v[0].v[j]), s[j].scale, s[j].shift));
    }
    *reinterpret_cast<Vec<scalar_t, V>*>(y + i) = out;
  }
};

// ---------------------------------------------------------------------------------------- kernels

// channels_last, stage 1: block (tx channel vectors, ty row lanes, a power of two); blockIdx.x: the
// channel-vector block, blockIdx.y: the row tile. A thread adds its V channels' terms over rows
// m_begin + y, m_begin + y + ty, ... in order, kRowsInFlight rows' loads at a time; a fixed tree
// over the row lanes (block_sum_store) gives the tile's partials.
template <typename acc_t, int V, typename Term>
__global__ void __launch_bounds__(kThreads)
    reduce_nhwc_kernel(Term term, int64_t M, int64_t C, int64_t rows_per_tile,
                       acc_t* __restrict__ partial0,    // (tiles, C)
                       acc_t* __restrict__ partial1) {  // (tiles, C)
  __shared__ acc_t buf0[kThreads * V];
  __shared__ acc_t buf1[kThreads * V];
  using In = Inputs<typename Term::Scalar, V, Term::kInputs>;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  const int64_t m_begin = static_cast<int64_t>(blockIdx.y) * rows_per_tile;
  const int64_t m_end = std::min(M, m_begin + rows_per_tile);
  const int64_t ty = blockDim.y;
  acc_t a[V], b[V];
#pragma unroll
  for (int j = 0; j < V; ++j) a[j] = b[j] = acc_t(0);
  if (c0 < C) {
    typename Term::State state[V];
#pragma unroll
    for (int j = 0; j < V; ++j) state[j] = term.begin(c0 + j);
    for_rows_in_flight<kRowsInFlight<Term>>(
        m_begin + threadIdx.y, m_end, ty, [&](int64_t m) { return term.template load<V>(m * C + c0); },
        [&](int64_t m, const In& in) { term.template add<V>(state, m * C + c0, in, a, b); });
  }
  const int64_t offset = static_cast<int64_t>(blockIdx.y) * C + c0;
  block_sum_store<acc_t, V>(a, buf0, c0 < C, partial0, offset);
  block_sum_store<acc_t, V>(b, buf1, c0 < C, partial1, offset);
}

// NCHW, stage 1: blockIdx.x is the channel, blockIdx.y the tile of the channel's N*HW terms.
template <typename acc_t, typename Term>
__global__ void __launch_bounds__(kThreads)
    reduce_nchw_kernel(Term term, int64_t M, int64_t C, int64_t HW, int64_t terms_per_tile,
                       acc_t* __restrict__ partial0,    // (tiles, C)
                       acc_t* __restrict__ partial1) {  // (tiles, C)
  __shared__ acc_t s0[kThreads];
  __shared__ acc_t s1[kThreads];
  const int64_t c = blockIdx.x;
  const typename Term::State state = term.begin(c);
  const int64_t j_begin = static_cast<int64_t>(blockIdx.y) * terms_per_tile;
  const int64_t j_end = std::min(M, j_begin + terms_per_tile);
  acc_t a = 0, b = 0;
  for (int64_t j = j_begin + threadIdx.x; j < j_end; j += kThreads) {
    const int64_t n = j / HW;
    const int64_t i = (n * C + c) * HW + (j - n * HW);
    term.template add<1>(&state, i, term.template load<1>(i), &a, &b);
  }
  s0[threadIdx.x] = a;
  s1[threadIdx.x] = b;
  __syncthreads();
  for (int width = kThreads / 2; width > 0; width /= 2) {  // fixed tree: deterministic
    if (threadIdx.x < width) {
      s0[threadIdx.x] += s0[threadIdx.x + width];
      s1[threadIdx.x] += s1[threadIdx.x + width];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial0[blockIdx.y * C + c] = s0[0];
    partial1[blockIdx.y * C + c] = s1[0];
  }
}

// Stage 2: channel c = blockIdx.x * 32 + x; lane y sums tiles y, y + 16, ... in order (four tiles'
// loads issued ahead), then a fixed tree over the lanes; all in double. Hands the two totals to
// the finish functor. (One thread per channel walking up to 512 tiles in turn took ~15 us a launch
// in GPU run 6's profile, 46 launches per V3-Large step.)
template <typename acc_t, typename Finish>
__global__ void __launch_bounds__(32 * kFinishLanes)
    finish_kernel(const acc_t* __restrict__ partial0, const acc_t* __restrict__ partial1, int64_t tiles, int64_t C,
                  Finish finish) {
  __shared__ double s0[kFinishLanes][32];
  __shared__ double s1[kFinishLanes][32];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  double a = 0, b = 0;
  if (c < C) {
    int64_t t = threadIdx.y;
    for (; t + 3 * kFinishLanes < tiles; t += 4 * kFinishLanes) {
      double pa[4], pb[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        pa[k] = partial0[(t + k * kFinishLanes) * C + c];
        pb[k] = partial1[(t + k * kFinishLanes) * C + c];
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        a += pa[k];
        b += pb[k];
      }
    }
    for (; t < tiles; t += kFinishLanes) {
      a += partial0[t * C + c];
      b += partial1[t * C + c];
    }
  }
  s0[threadIdx.y][threadIdx.x] = a;
  s1[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  for (int half = kFinishLanes / 2; half > 0; half /= 2) {  // fixed tree: deterministic
    if (threadIdx.y < half) {
      s0[threadIdx.y][threadIdx.x] += s0[threadIdx.y + half][threadIdx.x];
      s1[threadIdx.y][threadIdx.x] += s1[threadIdx.y + half][threadIdx.x];
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < C) finish(c, s0[0][threadIdx.x], s1[0][threadIdx.x]);
}

// channels_last elementwise: block (tx channel vectors, ty row lanes); blockIdx.y: the channel-vector
// block. Block x takes chunks of kRowsPerThread * ty rows, x, x + gridDim.x, ...; thread y rows
// y, y + ty, ... of a chunk, kRowsInFlight rows' loads at a time. Each thread folds its V channels
// once.
template <int V, typename Elementwise>
__global__ void __launch_bounds__(kThreads) per_channel_nhwc_kernel(Elementwise op, int64_t M, int64_t C) {
  using In = Inputs<typename Elementwise::Scalar, V, Elementwise::kInputs>;
  constexpr int R = kRowsInFlight<Elementwise>;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * V;
  if (c0 >= C) return;
  typename Elementwise::State state[V];
#pragma unroll
  for (int j = 0; j < V; ++j) state[j] = op.begin(c0 + j);
  const int64_t ty = blockDim.y;
  const int64_t chunk = kRowsPerThread * ty;
  for (int64_t m0 = static_cast<int64_t>(blockIdx.x) * chunk + threadIdx.y; m0 < M;
       m0 += static_cast<int64_t>(gridDim.x) * chunk) {
    for_rows_in_flight<R>(
        m0, std::min(M, m0 + chunk), ty, [&](int64_t m) { return op.template load<V>(m * C + c0); },
        [&](int64_t m, const In& in) { op.template apply<V>(state, m * C + c0, in); });
  }
}

// NCHW elementwise: blockIdx.x is the (n, c) plane, blockIdx.y a chunk of its HW elements.
template <typename Elementwise>
__global__ void __launch_bounds__(kThreads) per_channel_nchw_kernel(Elementwise op, int64_t C, int64_t HW) {
  const int64_t plane = blockIdx.x;
  const typename Elementwise::State state = op.begin(plane % C);
  for (int64_t p = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; p < HW;
       p += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int64_t i = plane * HW + p;
    op.template apply<1>(&state, i, op.template load<1>(i));
  }
}

// ------------------------------------------------------------------------------------ host plans

// The row tiles of a reduction, by shape alone: NCHW (a block per channel and tile) at least 1024
// terms a tile; channels_last also enough tiles for ~1024 blocks where a tile keeps 32 rows (a
// block covers up to 256 channels: 32 lanes of 8), so that a late layer's few rows per channel
// (7x7 at batch 128: 6272) still spread over the GPU. At most 512 tiles (finish_kernel's walk).
inline int64_t reduction_tiles(const ChannelLayout& L) {
  const int64_t M = std::max<int64_t>(L.rows(), 1);
  int64_t tiles = ceil_div(M, 1024);
  if (L.channels_last) tiles = std::max(tiles, std::min(ceil_div(M, 32), ceil_div(1024, ceil_div(L.C, 256))));
  return std::max<int64_t>(1, std::min<int64_t>(512, tiles));
}

// The launches of one pass over L with `vec` channels per thread (channels_last; 1 for NCHW).
struct PassPlan {
  dim3 grid, block;
  int64_t tiles = 1, per_tile = 0;  // reductions: row tiles (channels_last rows, NCHW terms each)
  dim3 finish_grid, finish_block;   // reductions: finish_kernel's launch
};

// block (tx, ty): tx channel vectors, as many as there are up to 32 (above 32 spread evenly over the
// fewest blocks of at most 32: 60 vectors are two blocks of 30), so that no lane idles (a power of
// two had left 7 of 16 lanes idle at 72 bf16 channels, 7 of 32 at 200); ty row lanes, the largest
// power of two with tx * ty <= kThreads (the reductions' tree halves it).
inline dim3 nhwc_block(int64_t C, int vec) {
  const int64_t tx = even_lanes(std::max<int64_t>(C / vec, 1), 32);
  return dim3(static_cast<unsigned>(tx), static_cast<unsigned>(pow2_beside(tx, kThreads)));
}

inline PassPlan plan_reduction(const ChannelLayout& L, int vec) {
  PassPlan p;
  p.tiles = reduction_tiles(L);
  p.per_tile = ceil_div(std::max<int64_t>(L.rows(), 1), p.tiles);
  if (L.channels_last) {
    p.block = nhwc_block(L.C, vec);
    p.grid = dim3(static_cast<unsigned>(ceil_div(L.C / vec, p.block.x)), static_cast<unsigned>(p.tiles));
  } else {
    p.block = dim3(kThreads);
    p.grid = dim3(static_cast<unsigned>(L.C), static_cast<unsigned>(p.tiles));
  }
  p.finish_grid = dim3(static_cast<unsigned>(ceil_div(L.C, 32)));
  p.finish_block = dim3(32, kFinishLanes);
  return p;
}

inline PassPlan plan_per_channel(const ChannelLayout& L, int vec) {
  PassPlan p;
  if (L.channels_last) {
    p.block = nhwc_block(L.C, vec);
    const int64_t chunks = ceil_div(L.rows(), p.block.y * kRowsPerThread);
    p.grid = dim3(static_cast<unsigned>(std::min<int64_t>(chunks, 1 << 20)),
                  static_cast<unsigned>(ceil_div(L.C / vec, p.block.x)));
  } else {
    p.block = dim3(kThreads);
    p.grid = dim3(static_cast<unsigned>(L.N * L.C),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(L.HW, kThreads * 4), 65535)));
  }
  return p;
}

// Whether a plan's grid fits a launch (the callers' checks name the op).
inline bool channel_grid_fits(const ChannelLayout& L, const PassPlan& p) {
  return L.channels_last ? p.grid.y <= 65535 : L.N * L.C < (int64_t(1) << 31);
}

}  // namespace bn
}  // namespace cuda
}  // namespace mobilenet_kernels
