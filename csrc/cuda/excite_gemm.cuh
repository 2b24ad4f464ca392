// squeeze_excite's "excite" step (both 1x1 layers on the pooled vectors, and their backward) as
// small tiled GEMMs with epilogues, for the CUDA kernels of squeeze_excite.cu.
//
// The step is a few matrix products of N images' vectors with the weights: forward
// h = act(P W1^T + b1) (N x S) and s = scale_act(H W2^T + b2) (N x C); backward dz2 = ds *
// scale_act'(z2), dz1 = (dz2 W2) * act'(z1), dpooled = dz1 W1 / HW and the parameter gradients
// dz2^T H, dz1^T P (over the images) with the bias gradients as a column of ones. Each is one
// launch of excite_gemm_kernel: a block owns a tile of kTileR x kTileO outputs, stages kTileK-wide
// slices of both operands in shared memory and walks K. So a block reads a slice of a weight
// matrix once for kTileR images, and the products spread over ceil(R / kTileR) * ceil(O / kTileO)
// blocks. (Before, one block per image computed its whole step, reading both weight matrices from
// L2 per image: 39 us (forward) and 72 us (backward) a launch in GPU run 7's batch-128 V3-Large
// training profile, bound by what one SM reads from L2, since N <= #SMs left nothing to spread.)
//
// out(r, o) = epi(r, o, sum_k A(r, k) B(o, k)): operand element (i, k) at p[i * si + k * sk], so
// one kernel serves P W1^T (B = W1 as stored), dz2 W2 (B(j, c) = W2[c, j]: si = 1) and the
// products over images (A(c, n) = dz2[n, c]). Each output's sum runs over k = 0, 1, ..., K - 1 in
// order, one accumulator, in the accumulation dtype: deterministic, and an image's outputs do not
// depend on the batch they are in (no atomics, no split over k).
// Shared with the host emulation (python_tests/cuda_emulation/se_host.cpp): no warp shuffles.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "mk_cuda.cuh"

namespace mobilenet_kernels {
namespace cuda {
namespace se {

constexpr int kTileR = 16;  // output rows (images, or the first parameter dimension) per block
constexpr int kTileO = 32;  // output columns per block
// k per staged slice: 128 (float) or 64 (double), 24-25 KB of slices. Wide slices keep a thread's
// staging loads (24 of them in flight for float) many to one wait: at batch 1 a block walks K =
// 960 in 8 slices, where 32-wide ones would have cost 30 round trips to L2 in a row.
template <typename acc_t>
inline constexpr int kTileK = sizeof(acc_t) == 8 ? 64 : 128;
template <typename acc_t>
inline constexpr int kPitch = kTileK<acc_t> + 1;  // a staged row's elements: conflict-free column reads
constexpr int kThreadsX = 16, kThreadsY = kTileR;  // thread (x, y): row y, columns x and x + 16
constexpr int kThreads = kThreadsX * kThreadsY;

// The staged slices: A's kTileR rows, then B's kTileO rows, kPitch elements each.
MK_DYNAMIC_SMEM(mk_se_gemm_smem, 16);

template <typename acc_t>
constexpr size_t excite_gemm_smem_bytes() {
  return static_cast<size_t>(kTileR + kTileO) * kPitch<acc_t> * sizeof(acc_t);
}

// An operand of rows i < rows (and a row of ones at i == ones_row, -1 for none): element (i, k) at
// p[i * si + k * sk].
template <typename acc_t>
struct Operand {
  const acc_t* p;
  int64_t si, sk;
  int rows;
  int ones_row;
};

// Stages rows i0 .. i0 + ROWS - 1, k0 .. k0 + kTileK - 1 of `op` into tile[i * kPitch + k], 0 past
// K and past the operand's rows; consecutive threads take consecutive elements of the operand's
// contiguous dimension (k when sk == 1, else i), so the loads coalesce. A thread's elements are
// (i + t di, k + t dk), t < kSteps: its loads are all issued before any store.
template <int ROWS, typename acc_t>
__device__ __forceinline__ void stage_slice(acc_t* tile, const Operand<acc_t>& op, int i0, int k0, int K) {
  constexpr int TK = kTileK<acc_t>, P = kPitch<acc_t>, kSteps = ROWS * TK / kThreads;
  static_assert(ROWS * TK % kThreads == 0 && kThreads % TK == 0 && kThreads % ROWS == 0, "even staging");
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const bool k_fast = op.sk == 1;
  const int i = k_fast ? tid / TK : tid % ROWS;
  const int k = k_fast ? tid % TK : tid / ROWS;
  const int di = k_fast ? kThreads / TK : 0;
  const int dk = k_fast ? 0 : kThreads / ROWS;
  acc_t v[kSteps];
#pragma unroll
  for (int t = 0; t < kSteps; ++t) {
    const int gi = i0 + i + t * di, gk = k0 + k + t * dk;
    v[t] = acc_t(0);
    if (gk < K) {
      if (gi < op.rows) {
        v[t] = op.p[gi * op.si + gk * op.sk];
      } else if (gi == op.ones_row) {
        v[t] = acc_t(1);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kSteps; ++t) tile[(i + t * di) * P + k + t * dk] = v[t];
}

// grid (ceil(R / kTileR), ceil(O / kTileO)), block (kThreadsX, kThreadsY), excite_gemm_smem_bytes.
template <typename acc_t, typename Epilogue>
__global__ void __launch_bounds__(kThreads)
    excite_gemm_kernel(Operand<acc_t> a, Operand<acc_t> b, int R, int O, int K, Epilogue epi) {
  constexpr int TK = kTileK<acc_t>, P = kPitch<acc_t>;
  acc_t* as = reinterpret_cast<acc_t*>(mk_se_gemm_smem);  // [kTileR][P]
  acc_t* bs = as + kTileR * P;                            // [kTileO][P]
  const int r0 = static_cast<int>(blockIdx.x) * kTileR;
  const int o0 = static_cast<int>(blockIdx.y) * kTileO;
  const int y = threadIdx.y, x = threadIdx.x;
  acc_t acc0 = acc_t(0), acc1 = acc_t(0);
  for (int k0 = 0; k0 < K; k0 += TK) {
    stage_slice<kTileR>(as, a, r0, k0, K);
    stage_slice<kTileO>(bs, b, o0, k0, K);
    __syncthreads();
#pragma unroll 16
    for (int k = 0; k < TK; ++k) {  // past K both slices hold zeros: + 0 * 0, the sums unchanged
      const acc_t v = as[y * P + k];
      acc0 += v * bs[x * P + k];
      acc1 += v * bs[(x + kThreadsX) * P + k];
    }
    __syncthreads();
  }
  const int r = r0 + y;
  if (r < R) {
    if (o0 + x < O) epi(r, o0 + x, acc0);
    if (o0 + x + kThreadsX < O) epi(r, o0 + x + kThreadsX, acc1);
  }
}

// ------------------------------------------------------------------------------------ epilogues
// Row r is the image n in the products over channels, the parameter's first index in those over
// images. Scratch tensors are dense (N, C) or (N, S).

// h[n, j] = act(z1), z1 = acc + b1[j]; backward (the hidden layer recomputed) also z1.
template <typename acc_t, bool kBackward>
struct HiddenOut {
  const acc_t* b1;
  acc_t* h;
  acc_t* z1;  // kBackward
  int S;
  Act act;
  __device__ void operator()(int n, int j, acc_t acc) const {
    const int64_t q = static_cast<int64_t>(n) * S + j;
    const acc_t z = acc + b1[j];
    h[q] = apply_activation(act, z);
    if constexpr (kBackward) z1[q] = z;
  }
};

// Forward: scale[n, c] = scale_act(acc + b2[c]); backward also dz2 = ds * scale_act'(z2).
template <typename acc_t, bool kBackward>
struct ScaleOut {
  const acc_t* b2;
  acc_t* scale;
  const acc_t* ds;  // kBackward: sum_hw grad_out * x
  acc_t* dz2;       // kBackward
  int C;
  Act scale_act;
  __device__ void operator()(int n, int c, acc_t acc) const {
    const int64_t q = static_cast<int64_t>(n) * C + c;
    const acc_t z = acc + b2[c];
    scale[q] = apply_activation(scale_act, z);
    if constexpr (kBackward) dz2[q] = ds[q] * activation_grad(scale_act, z);
  }
};

// dz1[n, j] = acc * act'(z1[n, j]), acc = (dz2 W2)[n, j].
template <typename acc_t>
struct HiddenGrad {
  const acc_t* z1;
  acc_t* dz1;
  int S;
  Act act;
  __device__ void operator()(int n, int j, acc_t acc) const {
    const int64_t q = static_cast<int64_t>(n) * S + j;
    dz1[q] = acc * activation_grad(act, z1[q]);
  }
};

// dpooled[n, c] / HW = acc * inv_hw, acc = (dz1 W1)[n, c].
template <typename acc_t>
struct PooledGrad {
  acc_t* dp_hw;
  int C;
  acc_t inv_hw;
  __device__ void operator()(int n, int c, acc_t acc) const { dp_hw[static_cast<int64_t>(n) * C + c] = acc * inv_hw; }
};

// A layer's parameter gradients over the images: weight[r, o] (o < cols) and bias[r] (o == cols,
// the column of ones).
template <typename acc_t>
struct ParamGrad {
  acc_t *weight, *bias;
  int cols;
  __device__ void operator()(int r, int o, acc_t acc) const {
    if (o < cols) {
      weight[static_cast<int64_t>(r) * cols + o] = acc;
    } else {
      bias[r] = acc;
    }
  }
};

// ------------------------------------------------------------------------------------ the steps

template <typename acc_t>
struct ExciteParams {
  const acc_t *w1, *b1, *w2, *b2;  // (S, C), (S,), (C, S), (C,)
  int N, C, S;
  Act act, scale_act;
};

// Whether the sizes fit the kernels' int indexing and a launch's grid.
inline bool excite_sizes_fit(int64_t N, int64_t C, int64_t S) {
  const int64_t kMax = std::numeric_limits<int>::max() - kTileO;
  return N <= kMax && C <= kMax && S <= kMax && (C + 1) / kTileO < 65535 && (S + 1) / kTileO < 65535;
}

inline dim3 excite_grid(int R, int O) {
  return dim3(static_cast<unsigned>(ceil_div(R, kTileR)), static_cast<unsigned>(ceil_div(O, kTileO)));
}

// A dense (rows, cols) matrix as an operand: element (i, k) = m[i, k].
template <typename acc_t>
Operand<acc_t> rows_of(const acc_t* m, int rows, int cols) {
  return {m, cols, 1, rows, -1};
}

// Its transpose: element (i, k) = m[k, i]; with_ones adds row `cols` of ones.
template <typename acc_t>
Operand<acc_t> cols_of(const acc_t* m, int cols, bool with_ones = false) {
  return {m, 1, cols, cols, with_ones ? cols : -1};
}

// out(r, o) = epi(r, o, sum_k a(r, k) b(o, k)) for r < R, o < O: one launch of excite_gemm_kernel
// through launch(kernel, grid, block, dynamic_smem_bytes, args...) (on a stream in
// squeeze_excite.cu, on the host in the emulation).
template <typename acc_t, typename Epilogue, typename Launch>
void gemm(const Launch& launch, const Operand<acc_t>& a, const Operand<acc_t>& b, int R, int O, int K,
          const Epilogue& epi) {
  launch(excite_gemm_kernel<acc_t, Epilogue>, excite_grid(R, O), dim3(kThreadsX, kThreadsY),
         excite_gemm_smem_bytes<acc_t>(), a, b, R, O, K, epi);
}

// The forward: scale = scale_act(act(P W1^T + b1) W2^T + b2), two launches; h is (N, S) scratch.
template <typename acc_t, typename Launch>
void excite_forward(const ExciteParams<acc_t>& p, const acc_t* pooled, acc_t* h, acc_t* scale, const Launch& launch) {
  gemm(launch, rows_of(pooled, p.N, p.C), rows_of(p.w1, p.S, p.C), p.N, p.S, p.C,
       HiddenOut<acc_t, false>{p.b1, h, nullptr, p.S, p.act});
  gemm(launch, rows_of<acc_t>(h, p.N, p.S), rows_of(p.w2, p.C, p.S), p.N, p.C, p.S,
       ScaleOut<acc_t, false>{p.b2, scale, nullptr, nullptr, p.C, p.scale_act});
}

// The backward's scratch, dense: (N, S) z1, h, dz1; (N, C) scale (also an output: the grad_input
// pass multiplies by it), dz2.
template <typename acc_t>
struct ExciteBwdScratch {
  acc_t *z1, *h, *dz1, *scale, *dz2;
};

// The parameter gradients, dense: (S, C), (S,), (C, S), (C,).
template <typename acc_t>
struct ExciteParamGrads {
  acc_t *w1, *b1, *w2, *b2;
};

// The backward, six launches: the hidden layer and the scale recomputed (z1, h, scale, dz2), dz1,
// dpooled / HW (dp_hw, (N, C)), then the parameter gradients over the images.
template <typename acc_t, typename Launch>
void excite_backward(const ExciteParams<acc_t>& p, const acc_t* pooled, const acc_t* ds, acc_t inv_hw,
                     const ExciteBwdScratch<acc_t>& t, acc_t* dp_hw, const ExciteParamGrads<acc_t>& g,
                     const Launch& launch) {
  const int N = p.N, C = p.C, S = p.S;
  gemm(launch, rows_of(pooled, N, C), rows_of(p.w1, S, C), N, S, C, HiddenOut<acc_t, true>{p.b1, t.h, t.z1, S, p.act});
  gemm(launch, rows_of<acc_t>(t.h, N, S), rows_of(p.w2, C, S), N, C, S,
       ScaleOut<acc_t, true>{p.b2, t.scale, ds, t.dz2, C, p.scale_act});
  // (dz2 W2)[n, j] = sum_c dz2[n, c] W2[c, j]: B(j, c) = W2[c, j].
  gemm(launch, rows_of<acc_t>(t.dz2, N, C), cols_of(p.w2, S), N, S, C, HiddenGrad<acc_t>{t.z1, t.dz1, S, p.act});
  // (dz1 W1)[n, c] = sum_j dz1[n, j] W1[j, c]: B(c, j) = W1[j, c].
  gemm(launch, rows_of<acc_t>(t.dz1, N, S), cols_of(p.w1, C), N, C, S, PooledGrad<acc_t>{dp_hw, C, inv_hw});
  // grad W2[c, j] = sum_n dz2[n, c] h[n, j], grad b2[c] = sum_n dz2[n, c] (the ones row of B).
  gemm(launch, cols_of<acc_t>(t.dz2, C), cols_of<acc_t>(t.h, S, true), C, S + 1, N, ParamGrad<acc_t>{g.w2, g.b2, S});
  // grad W1[j, c] = sum_n dz1[n, j] pooled[n, c], grad b1[j] = sum_n dz1[n, j].
  gemm(launch, cols_of<acc_t>(t.dz1, S), cols_of(pooled, C, true), S, C + 1, N, ParamGrad<acc_t>{g.w1, g.b1, C});
}

}  // namespace se
}  // namespace cuda
}  // namespace mobilenet_kernels
