// depthwise_conv2d forward, grad_input and weight gradient: the shared-memory tiled kernels for
// channels_last (KERNELS.md §1).
//
// A thread block owns a TH x TW tile of output pixels of one image and cbv 16-byte vectors of
// channels (at most 8: 64 bf16 or 32 fp32 channels). It stages the tile's input
// footprint, ((TH - 1) S + K) x ((TW - 1) S + K) pixels x its channels, once in shared memory
// (positions outside the image stored as zeros: the conv's padding, so the taps need no bounds
// checks), then every thread computes kTiledRW adjacent output columns of one output row for
// kTiledCV = 4 channels (half a vector for 16-bit types: two lanes per vector, which halves the
// accumulators and weights a thread holds, hence its registers): for each kernel row it reads the
// (kTiledRW - 1) S + K input values its columns need once and feeds each to every (column, tap)
// pair that uses it, so shared memory serves ((kTiledRW - 1) S + K) / kTiledRW reads per output
// and kernel row instead of K.
// Threads: threadIdx.x = vector * lanes + lane, threadIdx.y = output row * strips + strip (a strip
// is kTiledRW columns; blockDim.y is a power of two >= TH * strips, the spare threads only stage).
// Each global input vector is read once per tile (plus the halo the neighbouring tiles share,
// from L2), instead of once per kernel row as in depthwise_conv2d_fwd_kernel
// (depthwise_kernels.cuh).
// A block walks R consecutive tiles of the same channels (R > 1 for the statistics and the weight
// gradient, so that a partial covers enough outputs, and for the forward and the stride-2
// grad_input at large batches) with two staging buffers (for_each_staged_tile): tile i + 1's
// cp.async copies are in flight while tile i is computed. GPU run 5's profile (ncu) showed
// one-tile blocks latency-bound, staging and computing in turn. MK_DW_STAGES=1 keeps one buffer
// (stage, wait, compute: the same tiles and blocks), to time the two against each other. The statistics epilogue is
// the one of the other kernels (ShiftedSums + block_merge_write, chan_stats.cuh), one partial per
// block.
// The weight gradient's stage 1 (depthwise_conv2d_bwd_weight_tiled_kernel) stages the same input
// tiles and reads grad_output instead of writing y: each staged value serves all K * K taps' sums.
// grad_input of a stride-2 conv (depthwise_conv2d_bwd_input_s2_tiled_kernel) stages grad_output
// tiles and computes each parity phase of grad_input as a dense conv with its own taps. For
// stride-1 "same" convs, depthwise_conv2d_bwd_fused_s1_tiled_kernel stages grad_output's and the
// input's tiles and computes grad_input and the weight gradient's partials in one pass.
// Compile-time: K (3, 5, 7; depthwise_tiled.cu instantiates 3 and 5), S (1, 2), VEC (16 bytes of
// scalar_t); dilation 1 only. The host side (depthwise_conv2d.cu) sends other convs to the default
// kernels (depthwise_kernels.cuh).
// Indexing: int64 memory offsets, int spatial coordinates (H, W + padding checked below 2^30).
//
// The kernel's only CUDA-specific constructs are threadIdx/blockIdx/blockDim, __syncthreads,
// shared memory and cp.async (copy16_async), so python_tests/cuda_emulation runs it on the host
// (one std::thread per CUDA thread, a barrier for __syncthreads, each cp.async group's copies
// landing at its wait) to check its index math on machines without a GPU.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "chan_stats.cuh"
#include "channel_passes.cuh"  // bn::TrainDxCoef, bn::train_grad_in: the fused BatchNorm backward
#include "mk_cuda.cuh"

namespace mobilenet_kernels {
namespace cuda {

constexpr int kTiledRW = 4;             // output columns per thread
constexpr int kTiledCV = 4;             // channels per thread (at most: VEC for float64)
constexpr int kTiledMaxThreads = 256;   // threads per block, at most
constexpr int kTiledMaxVectors = 8;     // channel vectors per block, at most
constexpr int kTiledSmemBytes = 24 * 1024;  // staged footprints of a block, at most (see TiledWork)

// The geometry of one tiled launch. Strides in elements; the channel stride is 1.
struct TiledGeom {
  int64_t C;
  int H, W, OH, OW;
  int pH, pW;              // padding (may be negative: grad_input as a forward conv)
  int TH, TW, strips;      // output tile (TW == strips * kTiledRW)
  int tiles_h, tiles_w;    // tiles per image
  int64_t tiles;           // N * tiles_h * tiles_w
  int R;                   // consecutive tiles per block
  int stages;              // staging buffers per staged tensor: 2 (double-buffered) when R > 1, else 1
  int64_t xsN, xsH, xsW;   // x strides
  int64_t ysN, ysH, ysW;   // y strides
};

// The dynamic shared memory of the tiled kernel (plan.smem bytes): the staged input tile.
MK_DYNAMIC_SMEM(mk_dw_tiled_smem, 16);

// What a thread of a tiled block does. Staging: vector sv of the tile pixels p0, p0 + step, ...
// Computing: channels c0 .. c0 + CV - 1 (lane `lane` of channel vector `cv`), output row `row` of
// the tile, columns col0 .. col0 + kTiledRW - 1. Threads past C or past the tile's rows still
// stage and synchronize: no early return in the tiled kernels.
struct TiledThread {
  int cbv;           // channel vectors per block
  int64_t cb;        // the block's first channel
  int sv, p0, step;  // staging
  bool stages;       // vector sv holds channels < C
  int cv, lane;      // computing
  int64_t c0;
  bool active;       // c0 < C
  int row, col0;
  bool computes;     // active and row < TH
};

template <int VEC, int CV>
__device__ __forceinline__ TiledThread tiled_thread(const TiledGeom& g) {
  constexpr int kLanes = VEC / CV;
  TiledThread t;
  t.cbv = blockDim.x / kLanes;
  t.cb = static_cast<int64_t>(blockIdx.y) * t.cbv * VEC;
  t.sv = threadIdx.x % t.cbv;
  t.p0 = threadIdx.y * kLanes + threadIdx.x / t.cbv;
  t.step = kLanes * blockDim.y;
  t.stages = t.cb + t.sv * VEC < g.C;
  t.cv = threadIdx.x / kLanes;
  t.lane = threadIdx.x - t.cv * kLanes;
  t.c0 = t.cb + t.cv * VEC + t.lane * CV;
  t.active = t.c0 < g.C;
  t.row = threadIdx.y / g.strips;
  t.col0 = (threadIdx.y - t.row * g.strips) * kTiledRW;
  t.computes = t.active && t.row < g.TH;
  return t;
}

// Stages the IH x IW input pixels from (ih0, iw0) of image n, zeros outside the image (the conv's
// padding), into tile[pixel * cbv + vector]; a pixel's cbv vectors are adjacent in memory, so the
// loads are coalesced. The copies are asynchronous (copy16_async: cp.async, zero-filled outside
// the image), so each thread has all of its share of the tile in flight at once instead of one
// load per loop trip; they are not committed here: for_each_staged_tile commits a tile's copies
// (of every staged tensor) as one group, waits for them and synchronizes.
template <typename scalar_t, int VEC>
__device__ __forceinline__ void stage_tile(Vec<scalar_t, VEC>* tile, const scalar_t* __restrict__ x,
                                           const TiledGeom& g, const TiledThread& t, int64_t n, int ih0, int iw0,
                                           int IH, int IW) {
  const scalar_t* xn = x + n * g.xsN + t.cb + t.sv * VEC;
  for (int p = t.p0; p < IH * IW; p += t.step) {
    const int ph = p / IW;
    const int ih = ih0 + ph;
    const int iw = iw0 + (p - ph * IW);
    const bool inside = t.stages && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
    // Outside the image (or past C) nothing is read; x, the tensor's first element, is named then.
    const scalar_t* src = inside ? xn + static_cast<int64_t>(ih) * g.xsH + static_cast<int64_t>(iw) * g.xsW : x;
    copy16_async(tile + p * t.cbv + t.sv, src, inside);
  }
}

// Tile t of the flattened (image, tile row, tile column): its image and first output row/column.
struct TileOrigin {
  int64_t n;
  int oh0, ow0;
};

__device__ __forceinline__ TileOrigin tile_origin(const TiledGeom& g, int64_t tile) {
  const int64_t per_image = static_cast<int64_t>(g.tiles_h) * g.tiles_w;
  const int64_t n = tile / per_image;
  const int rem = static_cast<int>(tile - n * per_image);
  const int th = rem / g.tiles_w;
  return {n, th * g.TH, (rem - th * g.tiles_w) * g.TW};
}

// The tiles this block walks: [begin, end), g.R consecutive ones (fewer in the last block).
struct TileRange {
  int64_t begin, end;
};

__device__ __forceinline__ TileRange block_tiles(const TiledGeom& g) {
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * g.R;
  return {begin, begin + g.R < g.tiles ? begin + g.R : g.tiles};
}

// The staging pipeline of every tiled kernel: for each tile of the block (block_tiles),
// stage(tile_id, buf) issues its copies (stage_tile, once per staged tensor) into buffer buf, and
// once they have landed for the whole block compute(tile_id, buf) reads them. With g.stages == 2
// the buffers alternate (`buffer` elements apart; tiles i, i + 2, ... in the first): tile i + 1's
// copies are in flight while tile i is computed. Every thread commits one group per tile (an empty
// one after the last), so copy_async_wait<1> leaves exactly the next tile's copies in flight. With
// one stage: stage, wait, compute. Between a thread's wait and the barrier, landed(tile_id, buf)
// may rewrite the values that thread staged (its own copies are visible to it once waited for;
// the others' only after the barrier). Block-uniform: every thread of the block calls it (it has
// __syncthreads), and compute runs between two barriers (a buffer is restaged only after every
// thread's reads of it).
template <typename T, typename Stage, typename Landed, typename Compute>
__device__ __forceinline__ void for_each_staged_tile(const TiledGeom& g, T* smem, int buffer, Stage stage,
                                                     Landed landed, Compute compute) {
  const TileRange tiles = block_tiles(g);
  const bool two = g.stages == 2;
  if (two && tiles.begin < tiles.end) {
    stage(tiles.begin, smem);
    copy_async_commit();
  }
  for (int64_t tile_id = tiles.begin; tile_id < tiles.end; ++tile_id) {  // uniform over the block
    const int parity = two ? static_cast<int>((tile_id - tiles.begin) & 1) : 0;
    if (!two) {
      stage(tile_id, smem);  // its reads of the last tile ended at the last barrier
    } else if (tile_id + 1 < tiles.end) {
      stage(tile_id + 1, smem + (1 - parity) * buffer);  // likewise for the other buffer
    }
    copy_async_commit();
    if (two) {
      copy_async_wait<1>();
    } else {
      copy_async_wait<0>();
    }
    landed(tile_id, smem + parity * buffer);
    __syncthreads();  // every thread's copies of this tile have landed
    compute(tile_id, smem + parity * buffer);
    __syncthreads();  // this tile's reads are done
  }
}

template <typename T, typename Stage, typename Compute>
__device__ __forceinline__ void for_each_staged_tile(const TiledGeom& g, T* smem, int buffer, Stage stage,
                                                     Compute compute) {
  for_each_staged_tile(g, smem, buffer, stage, [](int64_t, T*) {}, compute);
}

// The inner loop of the tiled kernels: reads the kSpan staged values of one tile row that this
// thread's kTiledRW columns need (src: the first; step: VC elements between staged pixels), each
// once, and calls f(j, kw, xv) for every (column j, tap kw) pair that reads value i, with
// kw = kw_of(i, j) (pairs with kw outside [0, K) do not exist). Fully unrolled: i, j and kw are
// compile-time constants in f, so per-column and per-tap accumulators stay in registers.
template <int K, int kSpan, typename acc_t, int CV, typename VC, typename KwOf, typename F>
__device__ __forceinline__ void feed_staged_row(const VC* src, int step, KwOf kw_of, F f) {
#pragma unroll
  for (int i = 0; i < kSpan; ++i) {
    acc_t xv[CV];
    const VC in = src[i * step];
#pragma unroll
    for (int v = 0; v < CV; ++v) xv[v] = static_cast<acc_t>(in.v[v]);
#pragma unroll
    for (int j = 0; j < kTiledRW; ++j) {
      const int kw = kw_of(i, j);
      if (kw >= 0 && kw < K) f(j, kw, xv);
    }
  }
}

// acc[j][v] = init[v] for every column j of the thread (the per-column accumulators' start).
template <typename acc_t, int CV>
__device__ __forceinline__ void fill_columns(acc_t (&acc)[kTiledRW][CV], const acc_t (&init)[CV]) {
#pragma unroll
  for (int j = 0; j < kTiledRW; ++j) {
#pragma unroll
    for (int v = 0; v < CV; ++v) acc[j][v] = init[v];
  }
}

// The K weights of kernel row kh for this thread's channels c0 .. c0 + CV - 1: w is (K * K, C).
template <int K, int CV, typename acc_t>
__device__ __forceinline__ void load_row_weights(const acc_t* __restrict__ w, int kh, int64_t C, int64_t c0,
                                                 acc_t (&wr)[K][CV]) {
#pragma unroll
  for (int kw = 0; kw < K; ++kw) load_vec<CV>(w + static_cast<int64_t>(kh * K + kw) * C + c0, wr[kw]);
}

// The fused dw conv + BatchNorm + activation training backward (depthwise_conv2d_bn_act_train_backward):
// the conv's grad_output is BatchNorm's grad_input, computed from BatchNorm's grad_output gy and
// input z (the conv's output) per element by bn::train_grad_in with the per-channel coefficients
// of a (kTrainDxRows, C) table (batch_norm_act_train_backward_sums), and rounded to scalar_t as
// the unfused backward stores it (so the two give the same bits). z null: off, gy is the conv's
// grad_output itself. The backward kernels that stage grad_output (the stride-1 fused one, the
// stride-2 grad_input) stage z beside it and turn the staged values (bn_dx_staged_tile); the
// weight gradient, which reads grad_output from global memory, turns the values it loads.
template <typename scalar_t, typename acc_t>
struct TiledBnDx {
  const scalar_t* z;   // gy's sizes and strides, or null
  const acc_t* table;  // (bn::kTrainDxRows, C)
  Act act;
};

// The table's coefficients of channels c0 .. c0 + n - 1.
template <int n, typename scalar_t, typename acc_t>
__device__ __forceinline__ void bn_dx_coefficients(const TiledBnDx<scalar_t, acc_t>& bn, int64_t C, int64_t c0,
                                                   bn::TrainDxCoef<acc_t> (&s)[n]) {
#pragma unroll
  for (int v = 0; v < n; ++v) {
    const acc_t* col = bn.table + c0 + v;
    s[v] = {col[0], col[C], col[2 * C], col[3 * C], col[4 * C]};
  }
}

// BatchNorm's grad_input at one element, as stored: rounded to scalar_t.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t bn_dx_value(const TiledBnDx<scalar_t, acc_t>& bn, const bn::TrainDxCoef<acc_t>& s,
                                             acc_t z, acc_t gy) {
  return static_cast<acc_t>(static_cast<scalar_t>(bn::train_grad_in<acc_t>(bn.act, s, z, gy)));
}

// f(i) for the index i = p * cbv + sv of every vector this thread staged (stage_tile's IH x IW
// pixels from (ih0, iw0) of a g.H x g.W tensor: vector sv of pixels p0, p0 + step, ...) that lies
// inside the tensor: what a `landed` hook may rewrite. The others keep their zeros (the padding).
template <typename F>
__device__ __forceinline__ void for_each_staged_vector_inside(const TiledGeom& g, const TiledThread& t, int ih0,
                                                              int iw0, int IH, int IW, F f) {
  if (!t.stages) return;
  for (int p = t.p0; p < IH * IW; p += t.step) {
    const int ph = p / IW;
    const int ih = ih0 + ph;
    const int iw = iw0 + (p - ph * IW);
    if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) f(p * t.cbv + t.sv);
  }
}

// After a tile's copies have landed (for_each_staged_tile's `landed`): each thread turns the
// grad_output vectors it staged into BatchNorm's grad_input, from the staged z at the same place
// (for_each_staged_vector_inside: the conv's padding stays zero). The channel vector's
// coefficients are loaded once per tile.
template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void bn_dx_staged_tile(Vec<scalar_t, VEC>* gtile, const Vec<scalar_t, VEC>* ztile,
                                                  const TiledGeom& g, const TiledThread& t, int ih0, int iw0, int IH,
                                                  int IW, const TiledBnDx<scalar_t, acc_t>& bn) {
  if (!t.stages) return;
  bn::TrainDxCoef<acc_t> s[VEC];
  bn_dx_coefficients(bn, g.C, t.cb + t.sv * VEC, s);
  for_each_staged_vector_inside(g, t, ih0, iw0, IH, IW, [&](int i) {
    Vec<scalar_t, VEC>& gv = gtile[i];
    const Vec<scalar_t, VEC> zv = ztile[i];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      gv.v[v] = static_cast<scalar_t>(bn_dx_value(bn, s[v], static_cast<acc_t>(zv.v[v]), static_cast<acc_t>(gv.v[v])));
    }
  });
}

// The BatchNorm + activation before the conv (pointwise_depthwise_bn_act_train: the expand layer's,
// on batch statistics), applied where a kernel stages the conv's input: x is that BatchNorm's input
// z1, and the conv's input y1 = act(z1 * scale + shift) (bn::apply_value, with bn_scale_shift's
// per-channel scale and shift: the apply pass's own arithmetic), rounded to scalar_t as the apply
// pass stores it, so y1 is neither written nor read back and the values are the same. The
// forward, the weight gradient and the stride-1 fused backward, which stage the conv's input,
// turn the staged values (input_bn_staged_tile). mean null: off.
template <typename acc_t>
struct TiledInputBn {
  const acc_t* mean;    // (C,), or null
  const acc_t* var;     // (C,)
  const acc_t* weight;  // (C,) or null (affine=False)
  const acc_t* bias;    // (C,) or null
  acc_t eps;
  Act act;
};

// After a tile's copies have landed (for_each_staged_tile's `landed`): each thread turns the
// input vectors it staged into the BatchNorm's output (for_each_staged_vector_inside: the conv's
// padding, which is y1's, stays zero). The channel vector's scale and shift once per tile.
template <typename scalar_t, typename acc_t, int VEC>
__device__ __forceinline__ void input_bn_staged_tile(Vec<scalar_t, VEC>* tile, const TiledGeom& g,
                                                     const TiledThread& t, int ih0, int iw0, int IH, int IW,
                                                     const TiledInputBn<acc_t>& xbn) {
  if (!t.stages) return;
  acc_t scale[VEC], shift[VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    acc_t rstd;
    bn_scale_shift<acc_t>(xbn.mean, xbn.var, xbn.weight, xbn.bias, xbn.eps, t.cb + t.sv * VEC + v, rstd, scale[v],
                          shift[v]);
  }
  for_each_staged_vector_inside(g, t, ih0, iw0, IH, IW, [&](int i) {
    Vec<scalar_t, VEC>& xv = tile[i];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      xv.v[v] = static_cast<scalar_t>(bn::apply_value(xbn.act, static_cast<acc_t>(xv.v[v]), scale[v], shift[v]));
    }
  });
}

// __launch_bounds__(256, 2): at most 128 registers, so two full blocks (16 warps) fit an SM.
// ptxas (CUDA 13, sm_90; for_each_staged_tile, one or two buffers): 77-88 registers for 16-bit
// types (103-115 with the statistics and TiledInputBn, 95-107 before it), 85-96 for float
// (106-119; 96-116), no spills.
template <typename scalar_t, typename acc_t, int VEC, int K, int S, bool kStats>
__global__ void __launch_bounds__(kTiledMaxThreads, 2)
    depthwise_conv2d_fwd_tiled_kernel(const scalar_t* __restrict__ x,   // (N, C, H, W), channels_last
                                      scalar_t* __restrict__ y,         // (N, C, OH, OW), channels_last
                                      const acc_t* __restrict__ w,      // (K * K, C)
                                      const acc_t* __restrict__ bias,   // (C,) or null
                                      TiledGeom g, Act act,
                                      acc_t* __restrict__ part_n,       // (gridDim.x, C), kStats only
                                      acc_t* __restrict__ part_mean,    // (gridDim.x, C), kStats only
                                      acc_t* __restrict__ part_m2,      // (gridDim.x, C), kStats only
                                      TiledInputBn<acc_t> xbn) {        // kStats: x is a BatchNorm's input

  static_assert(K == 3 || K == 5 || K == 7, "the tiled kernel is specialized for K in {3, 5, 7}");
  static_assert(S == 1 || S == 2, "the tiled kernel is specialized for stride 1 and 2");
  constexpr int CV = VEC < kTiledCV ? VEC : kTiledCV;  // channels a thread computes
  constexpr int kLanes = VEC / CV;                       // threads per channel vector
  using V = Vec<scalar_t, VEC>;
  using VC = Vec<scalar_t, CV>;
  constexpr int kSpan = (kTiledRW - 1) * S + K;  // input columns one thread's strip reads per row
  V* tile = reinterpret_cast<V*>(mk_dw_tiled_smem);  // [g.stages buffers][(IH * IW) pixels][cbv vectors]
  const TiledThread t = tiled_thread<VEC, CV>(g);
  const int IH = (g.TH - 1) * S + K;
  const int IW = (g.TW - 1) * S + K;
  const int buffer = IH * IW * t.cbv;  // vectors per staged footprint
  ShiftedSums<acc_t, CV> stats;  // kStats: this thread's outputs, as stored

  acc_t b[CV];
#pragma unroll
  for (int v = 0; v < CV; ++v) b[v] = acc_t(0);
  if (bias != nullptr && t.active) load_vec<CV>(bias + t.c0, b);

  const auto stage = [&](int64_t tile_id, V* buf) {
    const TileOrigin o = tile_origin(g, tile_id);
    stage_tile<scalar_t, VEC>(buf, x, g, t, o.n, o.oh0 * S - g.pH, o.ow0 * S - g.pW, IH, IW);
  };
  const auto landed = [&](int64_t tile_id, V* buf) {
    if (!kStats || xbn.mean == nullptr) return;  // the statistics forward only: no code in the plain one
    const TileOrigin o = tile_origin(g, tile_id);
    input_bn_staged_tile<scalar_t, acc_t, VEC>(buf, g, t, o.oh0 * S - g.pH, o.ow0 * S - g.pW, IH, IW, xbn);
  };
  for_each_staged_tile(g, tile, buffer, stage, landed, [&](int64_t tile_id, const V* cur) {
    const TileOrigin o = tile_origin(g, tile_id);
    if (t.computes) {
      acc_t acc[kTiledRW][CV];
      fill_columns(acc, b);
      // Output column col0 + j, tap kw reads tile column (col0 + j) S + kw = col0 S + i, i = j S + kw.
      // Kernel rows not unrolled: one row's K weight vectors live in registers at a time.
#pragma unroll 1
      for (int kh = 0; kh < K; ++kh) {
        acc_t wr[K][CV];
        load_row_weights<K, CV>(w, kh, g.C, t.c0, wr);
        // This thread's part of tile pixel q: VC element (q * cbv + cv) * kLanes + lane.
        const VC* src = reinterpret_cast<const VC*>(cur) +
                        (((t.row * S + kh) * IW + t.col0 * S) * t.cbv + t.cv) * kLanes + t.lane;
        feed_staged_row<K, kSpan, acc_t, CV>(
            src, t.cbv * kLanes, [](int i, int j) { return i - j * S; }, [&](int j, int kw, const acc_t(&xv)[CV]) {
#pragma unroll
              for (int v = 0; v < CV; ++v) acc[j][v] += xv[v] * wr[kw][v];
            });
      }
      const int oh = o.oh0 + t.row;
      if (oh < g.OH) {
        scalar_t* yrow = y + o.n * g.ysN + t.c0 + static_cast<int64_t>(oh) * g.ysH;
#pragma unroll
        for (int j = 0; j < kTiledRW; ++j) {
          const int ow = o.ow0 + t.col0 + j;
          if (ow < g.OW) store_and_count<kStats>(yrow + static_cast<int64_t>(ow) * g.ysW, acc[j], act, stats);
        }
      }
    }
  });
  if constexpr (kStats) {
    block_merge_write<kTiledMaxThreads>(stats, t.active, threadIdx.y, blockDim.y, blockDim.x, blockIdx.x, t.c0, g.C,
                                        part_n, part_mean, part_m2);
  }
}

// Channels a thread of the tiled weight-gradient kernel owns: its K * K * CV accumulators stay
// in registers (36 for k3, 50 for k5). ptxas (CUDA 13, sm_90): 116-128 registers (114-128 before
// TiledInputBn, 106-128 before TiledBnDx), no spills.
constexpr int tiled_wgrad_cv(int K) { return K <= 3 ? 4 : 2; }

// A thread's share of the weight gradient's stage 1: sums of grad_output x input per tap (kh, kw)
// and channel, and of grad_output for the bias, over the thread's outputs; at the end, one partial
// row per tap (then the bias) per block. The arguments called kh below are compile-time constants
// at every call (unrolled loops), so the sums stay in registers.
template <typename acc_t, int K, int CV>
struct TapSums {
  acc_t w[K][K][CV];
  acc_t b[CV];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int v = 0; v < CV; ++v) {
      b[v] = acc_t(0);
#pragma unroll
      for (int kh = 0; kh < K; ++kh) {
#pragma unroll
        for (int kw = 0; kw < K; ++kw) w[kh][kw][v] = acc_t(0);
      }
    }
  }

  // gv[j]: grad_output at the thread's column j of one row, for the columns with ok[j].
  __device__ __forceinline__ void add_bias(const acc_t (&gv)[kTiledRW][CV], const bool (&ok)[kTiledRW]) {
#pragma unroll
    for (int j = 0; j < kTiledRW; ++j) {
      if (ok[j]) {
#pragma unroll
        for (int v = 0; v < CV; ++v) b[v] += gv[j][v];
      }
    }
  }

  // Kernel row kh: src is the staged input row that column 0 reads (column j, tap kw reads
  // staged value i = j S + kw), step the VC elements between staged pixels.
  template <int S, typename VC>
  __device__ __forceinline__ void add_row(int kh, const VC* src, int step, const acc_t (&gv)[kTiledRW][CV],
                                          const bool (&ok)[kTiledRW]) {
    feed_staged_row<K, (kTiledRW - 1) * S + K, acc_t, CV>(
        src, step, [](int i, int j) { return i - j * S; }, [&](int j, int kw, const acc_t(&xv)[CV]) {
          if (ok[j]) {
#pragma unroll
            for (int v = 0; v < CV; ++v) w[kh][kw][v] += gv[j][v] * xv[v];
          }
        });
  }

  // Sums the block's threads per tap over threadIdx.y (block_sum_store, a fixed tree in `red`) and
  // writes part[(blockIdx.x * rows + row) * C + c0], rows = K * K taps then the bias if do_bias.
  // Every thread of the block must call it.
  __device__ __forceinline__ void write(acc_t* red, bool active, bool do_bias, int64_t C, int64_t c0,
                                        acc_t* __restrict__ part) {
    const int rows = K * K + (do_bias ? 1 : 0);
    const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows;
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        block_sum_store<acc_t, CV>(w[kh][kw], red, active, part, (row0 + kh * K + kw) * C + c0);
      }
    }
    if (do_bias) block_sum_store<acc_t, CV>(b, red, active, part, (row0 + K * K) * C + c0);
  }
};

// grad_weight (and grad_bias) stage 1, tiled (KERNELS.md §1 wgrad): the same blocks, tiles and
// staged input footprint as the forward kernel, x = the conv's input and y = grad_output. A thread
// loads its kTiledRW grad_output vectors of a tile once, then for each kernel row reads the
// ((kTiledRW - 1) S + K) staged input values its columns need and adds gy[j] * x[j S + kw] to
// the accumulator of tap (kh, kw), for all K * K taps at once: every staged value serves every tap
// that reads it, instead of one L1 load per (output, tap) as in depthwise_conv2d_bwd_weight_kernel.
// A block walks g.R consecutive tiles, then sums its threads per tap over threadIdx.y
// (TapSums::write: block_sum_store, a fixed tree) and writes part[blockIdx.x][tap][c], then the bias row
// part[blockIdx.x][K * K][c] when `do_bias`. Stage 2 is depthwise_conv2d_bwd_weight_finish_kernel
// (depthwise_kernels.cuh) over gridDim.x tiles. No atomics, a shape-derived tile -> block map:
// bitwise deterministic. With bn.z: gy is BatchNorm's grad_output, turned into the conv's as loaded
// (TiledBnDx; the stride-2 convs of depthwise_conv2d_bn_act_train_backward). With xbn.mean: x is
// the BatchNorm before the conv's input, applied where it is staged (TiledInputBn).
template <typename scalar_t, typename acc_t, int VEC, int K, int S>
__global__ void __launch_bounds__(kTiledMaxThreads, 2)
    depthwise_conv2d_bwd_weight_tiled_kernel(const scalar_t* __restrict__ x,   // (N, C, H, W), channels_last
                                             const scalar_t* __restrict__ gy,  // (N, C, OH, OW), channels_last
                                             TiledGeom g, bool do_bias,
                                             acc_t* __restrict__ part,  // (gridDim.x, K * K + do_bias, C)
                                             TiledBnDx<scalar_t, acc_t> bn, TiledInputBn<acc_t> xbn) {
  static_assert(K == 3 || K == 5 || K == 7, "the tiled kernel is specialized for K in {3, 5, 7}");
  static_assert(S == 1 || S == 2, "the tiled kernel is specialized for stride 1 and 2");
  constexpr int CV = VEC < tiled_wgrad_cv(K) ? VEC : tiled_wgrad_cv(K);
  constexpr int kLanes = VEC / CV;
  using V = Vec<scalar_t, VEC>;
  using VC = Vec<scalar_t, CV>;
  __shared__ acc_t red[kTiledMaxThreads * CV];  // block_sum_store's tree
  V* tile = reinterpret_cast<V*>(mk_dw_tiled_smem);  // [g.stages buffers][(IH * IW) pixels][cbv vectors]
  const TiledThread t = tiled_thread<VEC, CV>(g);
  const int IH = (g.TH - 1) * S + K;
  const int IW = (g.TW - 1) * S + K;
  const int step = t.cbv * kLanes;  // VC elements between staged pixels
  TapSums<acc_t, K, CV> sums;
  sums.zero();

  const auto stage = [&](int64_t tile_id, V* buf) {
    const TileOrigin o = tile_origin(g, tile_id);
    stage_tile<scalar_t, VEC>(buf, x, g, t, o.n, o.oh0 * S - g.pH, o.ow0 * S - g.pW, IH, IW);
  };
  const auto landed = [&](int64_t tile_id, V* buf) {
    if (xbn.mean == nullptr) return;
    const TileOrigin o = tile_origin(g, tile_id);
    input_bn_staged_tile<scalar_t, acc_t, VEC>(buf, g, t, o.oh0 * S - g.pH, o.ow0 * S - g.pW, IH, IW, xbn);
  };
  for_each_staged_tile(g, tile, IH * IW * t.cbv, stage, landed, [&](int64_t tile_id, const V* cur) {
    const TileOrigin o = tile_origin(g, tile_id);
    const VC* src = reinterpret_cast<const VC*>(cur) + t.cv * kLanes + t.lane;  // staged pixel 0, this thread
    const int oh = o.oh0 + t.row;
    if (t.computes && oh < g.OH) {
      // This thread's grad_output: columns past OW are skipped (not zeroed: 0 * inf would be NaN).
      acc_t gv[kTiledRW][CV];
      bool ok[kTiledRW];
      const scalar_t* gyrow = gy + o.n * g.ysN + t.c0 + static_cast<int64_t>(oh) * g.ysH;
#pragma unroll
      for (int j = 0; j < kTiledRW; ++j) {
        const int ow = o.ow0 + t.col0 + j;
        ok[j] = ow < g.OW;
#pragma unroll
        for (int v = 0; v < CV; ++v) gv[j][v] = acc_t(0);
        if (ok[j]) load_vec<CV>(gyrow + static_cast<int64_t>(ow) * g.ysW, gv[j]);
      }
      if (bn.z != nullptr) {  // gy is BatchNorm's grad_output: the conv's is its grad_input
        bn::TrainDxCoef<acc_t> s[CV];
        bn_dx_coefficients(bn, g.C, t.c0, s);
        const scalar_t* zrow = bn.z + (gyrow - gy);
#pragma unroll
        for (int j = 0; j < kTiledRW; ++j) {
          if (ok[j]) {
            acc_t zv[CV];
            load_vec<CV>(zrow + static_cast<int64_t>(o.ow0 + t.col0 + j) * g.ysW, zv);
#pragma unroll
            for (int v = 0; v < CV; ++v) gv[j][v] = bn_dx_value(bn, s[v], zv[v], gv[j][v]);
          }
        }
      }
      if (do_bias) sums.add_bias(gv, ok);
#pragma unroll
      for (int kh = 0; kh < K; ++kh) {
        sums.template add_row<S>(kh, src + ((t.row * S + kh) * IW + t.col0 * S) * step, step, gv, ok);
      }
    }
  });
  sums.write(red, t.active, do_bias, g.C, t.c0, part);
}

// grad_input of a stride-2 conv, tiled and split by parity (KERNELS.md §1 dgrad): grad_in[ih, iw]
// = sum over taps kh = ih + pH (mod 2), kw = iw + pW (mod 2) of gy[(ih + pH - kh) / 2,
// (iw + pW - kw) / 2] * w[kh, kw]: each parity phase of grad_in is a dense conv over grad_output
// with its own taps (4/2/2/1 for k3), with no zero-insertion and no per-tap divisibility test.
// Here x = grad_output (read, g.H x g.W) and y = grad_input (written, g.OH x g.OW). Tiles are
// shifted by the padding's parity (tile rows start at th * TH - (pH & 1), columns likewise), so
// that every tile starts on an even padded coordinate: a thread's kTiledRW columns then have
// compile-time parities (column j takes the taps kw = j mod 2) and its row's parity is r mod 2. A
// block stages the grad_output footprint of its tile, ((TH - 1) / 2 + (K - 1) / 2 + 1) x
// ((TW - 1) / 2 + (K - 1) / 2 + 1) pixels (zeros outside grad_output), and a thread reads
// (K + 3) / 2 staged values per kernel row of its phase, each for the taps of its kTiledRW columns
// that read it. With bn.z: z's footprint staged too, and grad_output turned into BatchNorm's
// grad_input where it was staged (TiledBnDx).
// ptxas (CUDA 13, sm_90): 80-94 registers (70-90 before TiledBnDx), no spills.
template <typename scalar_t, typename acc_t, int VEC, int K>
__global__ void __launch_bounds__(kTiledMaxThreads, 2)
    depthwise_conv2d_bwd_input_s2_tiled_kernel(const scalar_t* __restrict__ gy,  // (N, C, OH, OW), channels_last
                                               scalar_t* __restrict__ gx,        // (N, C, H, W), channels_last
                                               const acc_t* __restrict__ w,      // (K * K, C), not rotated
                                               TiledGeom g, TiledBnDx<scalar_t, acc_t> bn) {
  static_assert(K == 3 || K == 5 || K == 7, "the tiled kernel is specialized for K in {3, 5, 7}");
  constexpr int CV = VEC < kTiledCV ? VEC : kTiledCV;
  constexpr int kLanes = VEC / CV;
  constexpr int kHalf = (K - 1) / 2;
  constexpr int kSpan = kHalf + (kTiledRW - 1) / 2 + 1;  // staged columns one thread reads per row
  using V = Vec<scalar_t, VEC>;
  using VC = Vec<scalar_t, CV>;
  // [g.stages buffers][grad_output's footprint (, z's)][(GH * GW) pixels][cbv vectors]
  V* tile = reinterpret_cast<V*>(mk_dw_tiled_smem);
  const TiledThread t = tiled_thread<VEC, CV>(g);
  const int GH = (g.TH - 1) / 2 + kHalf + 1;
  const int GW = (g.TW - 1) / 2 + kHalf + 1;
  const int shift_h = g.pH & 1, shift_w = g.pW & 1;
  const int footprint = GH * GW * t.cbv;
  // The footprint's first grad_output row and column: (ih0 + pH), (iw0 + pW) are even.
  const auto first_row = [&](const TileOrigin& o) { return (o.oh0 - shift_h + g.pH) / 2 - kHalf; };
  const auto first_col = [&](const TileOrigin& o) { return (o.ow0 - shift_w + g.pW) / 2 - kHalf; };

  const auto stage = [&](int64_t tile_id, V* buf) {
    const TileOrigin o = tile_origin(g, tile_id);
    stage_tile<scalar_t, VEC>(buf, gy, g, t, o.n, first_row(o), first_col(o), GH, GW);
    if (bn.z != nullptr) {
      stage_tile<scalar_t, VEC>(buf + footprint, bn.z, g, t, o.n, first_row(o), first_col(o), GH, GW);
    }
  };
  const auto landed = [&](int64_t tile_id, V* buf) {
    if (bn.z == nullptr) return;
    const TileOrigin o = tile_origin(g, tile_id);
    bn_dx_staged_tile<scalar_t, acc_t, VEC>(buf, buf + footprint, g, t, first_row(o), first_col(o), GH, GW, bn);
  };
  const int tensors = bn.z != nullptr ? 2 : 1;
  for_each_staged_tile(g, tile, tensors * footprint, stage, landed, [&](int64_t tile_id, const V* cur) {
    const TileOrigin o = tile_origin(g, tile_id);
    const int ih0 = o.oh0 - shift_h, iw0 = o.ow0 - shift_w;
    if (t.computes) {
      const acc_t zero[CV] = {};
      acc_t acc[kTiledRW][CV];
      fill_columns(acc, zero);
      // Row r takes the taps kh = r (mod 2), grad_output row (r - kh) / 2 + kHalf of the stage;
      // column j the taps kw = j (mod 2), stage column col0 / 2 + (j - kw) / 2 + kHalf = col0 / 2 + i.
#pragma unroll 1
      for (int kh = t.row & 1; kh < K; kh += 2) {
        acc_t wr[K][CV];
        load_row_weights<K, CV>(w, kh, g.C, t.c0, wr);
        const int srow = (t.row - kh) / 2 + kHalf;  // r - kh is even
        const VC* src = reinterpret_cast<const VC*>(cur) + ((srow * GW + t.col0 / 2) * t.cbv + t.cv) * kLanes + t.lane;
        feed_staged_row<K, kSpan, acc_t, CV>(
            // i = (j - kw) / 2 + kHalf; (K - 1) / 2 spelled out: g++ 12 deduces void for this lambda
            // when it names kHalf from inside for_each_staged_tile's lambda
            src, t.cbv * kLanes, [](int i, int j) { return j - 2 * (i - (K - 1) / 2); },
            [&](int j, int kw, const acc_t(&xv)[CV]) {
#pragma unroll
              for (int v = 0; v < CV; ++v) acc[j][v] += xv[v] * wr[kw][v];
            });
      }
      const int ih = ih0 + t.row;
      if (ih >= 0 && ih < g.OH) {
        scalar_t* yrow = gx + o.n * g.ysN + t.c0 + static_cast<int64_t>(ih) * g.ysH;
#pragma unroll
        for (int j = 0; j < kTiledRW; ++j) {
          const int iw = iw0 + t.col0 + j;
          if (iw >= 0 && iw < g.OW) {
            VC out;
#pragma unroll
            for (int v = 0; v < CV; ++v) out.v[v] = static_cast<scalar_t>(acc[j][v]);
            *reinterpret_cast<VC*>(yrow + static_cast<int64_t>(iw) * g.ysW) = out;
          }
        }
      }
    }
  });
}

// Channels a thread of the fused backward owns: kTiledRW grad_input and K * K weight-gradient
// accumulators per channel.
constexpr int kTiledFusedCV = 2;

// grad_input and stage 1 of grad_weight (and grad_bias) of a stride-1 "same" conv (K odd, padding
// (K - 1) / 2, output size = input size) in one pass (KERNELS.md section 1: "fuse with dgrad"):
// grad_output is read once for both instead of once each. A block stages two footprints of its
// TH x TW tile, both starting P = (K - 1) / 2 rows and columns before it: grad_output's (for
// grad_input, the conv with the filter rotated 180 degrees: staged row r + K - 1 - kh, column
// c + K - 1 - kw) and the input's (for the weight gradient: staged row r + kh, column c + kw
// against grad_output at staged (r + P, c + P)). Threads, tiles (x = the input, y = grad_input,
// both H x W) and partials as in the forward and weight-gradient kernels above; R tiles per
// block. The partials are those of depthwise_conv2d_bwd_weight_tiled_kernel (same rows).
// With bn.z (TiledBnDx): a third footprint, BatchNorm's input z, and grad_output turned into
// BatchNorm's grad_input where it was staged (bn_dx_staged_tile), so that tensor never reaches memory.
// With xbn.mean (TiledInputBn): the input's footprint turned into the BatchNorm before the conv's
// output where it was staged (input_bn_staged_tile).
// ptxas (CUDA 13, sm_90): 96-124 registers for k3 (94-111 before TiledInputBn, 86-92 before
// TiledBnDx), 126-128 for k5, no spills.
template <typename scalar_t, typename acc_t, int VEC, int K>
__global__ void __launch_bounds__(kTiledMaxThreads, 2)
    depthwise_conv2d_bwd_fused_s1_tiled_kernel(const scalar_t* __restrict__ x,   // (N, C, H, W), channels_last
                                               const scalar_t* __restrict__ gy,  // (N, C, H, W), x's strides
                                               scalar_t* __restrict__ gx,        // (N, C, H, W), channels_last
                                               const acc_t* __restrict__ w,      // (K * K, C), not rotated
                                               TiledGeom g, bool do_bias,
                                               acc_t* __restrict__ part,  // (gridDim.x, K * K + do_bias, C)
                                               TiledBnDx<scalar_t, acc_t> bn, TiledInputBn<acc_t> xbn) {
  static_assert(K == 3 || K == 5 || K == 7, "the tiled kernel is specialized for K in {3, 5, 7}");
  constexpr int CV = VEC < kTiledFusedCV ? VEC : kTiledFusedCV;
  constexpr int kLanes = VEC / CV;
  constexpr int P = (K - 1) / 2;
  constexpr int kSpan = kTiledRW - 1 + K;
  using V = Vec<scalar_t, VEC>;
  using VC = Vec<scalar_t, CV>;
  __shared__ acc_t red[kTiledMaxThreads * CV];
  const TiledThread t = tiled_thread<VEC, CV>(g);
  const int IH = g.TH - 1 + K;
  const int IW = g.TW - 1 + K;
  // [g.stages buffers][grad_output's footprint, the input's (, z's)][(IH * IW) pixels][cbv vectors]
  V* tiles = reinterpret_cast<V*>(mk_dw_tiled_smem);
  const int footprint = IH * IW * t.cbv;
  const int step = t.cbv * kLanes;  // VC elements between staged pixels
  TapSums<acc_t, K, CV> sums;
  sums.zero();

  const auto stage = [&](int64_t tile_id, V* buf) {
    const TileOrigin o = tile_origin(g, tile_id);
    stage_tile<scalar_t, VEC>(buf, gy, g, t, o.n, o.oh0 - P, o.ow0 - P, IH, IW);
    stage_tile<scalar_t, VEC>(buf + footprint, x, g, t, o.n, o.oh0 - P, o.ow0 - P, IH, IW);
    if (bn.z != nullptr) stage_tile<scalar_t, VEC>(buf + 2 * footprint, bn.z, g, t, o.n, o.oh0 - P, o.ow0 - P, IH, IW);
  };
  const auto landed = [&](int64_t tile_id, V* buf) {
    const TileOrigin o = tile_origin(g, tile_id);
    if (bn.z != nullptr) {
      bn_dx_staged_tile<scalar_t, acc_t, VEC>(buf, buf + 2 * footprint, g, t, o.oh0 - P, o.ow0 - P, IH, IW, bn);
    }
    if (xbn.mean != nullptr) {
      input_bn_staged_tile<scalar_t, acc_t, VEC>(buf + footprint, g, t, o.oh0 - P, o.ow0 - P, IH, IW, xbn);
    }
  };
  const int tensors = bn.z != nullptr ? 3 : 2;
  for_each_staged_tile(g, tiles, tensors * footprint, stage, landed, [&](int64_t tile_id, const V* cur) {
    const TileOrigin o = tile_origin(g, tile_id);
    const VC* gsrc = reinterpret_cast<const VC*>(cur) + t.cv * kLanes + t.lane;  // staged pixel 0, this thread
    const VC* xsrc = reinterpret_cast<const VC*>(cur + footprint) + t.cv * kLanes + t.lane;
    const int oh = o.oh0 + t.row;
    if (t.computes && oh < g.OH) {
      // grad_output at this thread's pixels (staged row row + P, columns col0 + P + j); columns
      // past the image are skipped.
      acc_t gv[kTiledRW][CV];
      bool ok[kTiledRW];
#pragma unroll
      for (int j = 0; j < kTiledRW; ++j) {
        ok[j] = o.ow0 + t.col0 + j < g.OW;
        const VC in = gsrc[((t.row + P) * IW + t.col0 + P + j) * step];
#pragma unroll
        for (int v = 0; v < CV; ++v) gv[j][v] = static_cast<acc_t>(in.v[v]);
      }
      if (do_bias) sums.add_bias(gv, ok);
      // grad_input: staged grad_output row row + K - 1 - kh; column j, tap kw reads staged column
      // col0 + j + K - 1 - kw = col0 + i. Rows not unrolled: one row's weights in registers at a time.
      const acc_t zero[CV] = {};
      acc_t accd[kTiledRW][CV];
      fill_columns(accd, zero);
#pragma unroll 1
      for (int kh = 0; kh < K; ++kh) {
        acc_t wr[K][CV];
        load_row_weights<K, CV>(w, kh, g.C, t.c0, wr);
        feed_staged_row<K, kSpan, acc_t, CV>(
            gsrc + ((t.row + K - 1 - kh) * IW + t.col0) * step, step,
            [](int i, int j) { return j + K - 1 - i; }, [&](int j, int kw, const acc_t(&gv_in)[CV]) {
#pragma unroll
              for (int v = 0; v < CV; ++v) accd[j][v] += gv_in[v] * wr[kw][v];
            });
      }
      // grad_weight: tap (kh, kw) of column j reads the input at staged row row + kh, column
      // col0 + j + kw (the weight-gradient kernel's rows at stride 1).
#pragma unroll
      for (int kh = 0; kh < K; ++kh) {
        sums.template add_row<1>(kh, xsrc + ((t.row + kh) * IW + t.col0) * step, step, gv, ok);
      }
      scalar_t* gxrow = gx + o.n * g.ysN + t.c0 + static_cast<int64_t>(oh) * g.ysH;
#pragma unroll
      for (int j = 0; j < kTiledRW; ++j) {
        if (ok[j]) {
          VC out;
#pragma unroll
          for (int v = 0; v < CV; ++v) out.v[v] = static_cast<scalar_t>(accd[j][v]);
          *reinterpret_cast<VC*>(gxrow + static_cast<int64_t>(o.ow0 + t.col0 + j) * g.ysW) = out;
        }
      }
    }
  });
  sums.write(red, t.active, do_bias, g.C, t.c0, part);
}

// What a launch asks of plan_tiled: `cv` channels per thread, and how many consecutive tiles a block
// walks: one when min_outputs is 0, else enough for min_outputs outputs per block and at most
// max_blocks blocks along x (the number of partials per channel), and, when min_blocks > 0, not
// so many that fewer than min_blocks blocks remain (a small batch keeps its parallelism).
// Shape-derived only: deterministic.
// `dgrad_s2`: the stride-2 grad_input kernel, whose footprint is ((TH - 1) / 2 + (K - 1) / 2 + 1)
// rows (likewise columns) of the read tensor and whose tiles are shifted by the padding's parity.
// `tensors`: the tensors a tile stages (2 for the fused backward: grad_output's footprint and the
// input's), within `smem` bytes per stage. `stages`: staging buffers (for_each_staged_tile): 2,
// double-buffered, where a block walks several tiles (R > 1), else 1; the tile is the same either
// way, the shared memory twice as much with 2 (48 KB at most, the most a kernel gets without
// opting in; the kernels that also hold static shared memory opt in: depthwise_tiled.cu).
// `multi_tile_max_stride` (0: no limit): a block walks several tiles only at strides up to this;
// above it, one tile per block, one buffer (with either `stages`, so that MK_DW_STAGES=1 changes
// the buffers alone).
struct TiledWork {
  int cv;
  int64_t min_outputs, max_blocks;
  bool dgrad_s2;
  int tensors;
  int smem = kTiledSmemBytes;
  int64_t min_blocks = 0;
  int stages = 2;
  int multi_tile_max_stride = 0;
};
// The forward and the stride-2 grad_input: at least 512 outputs (4 tiles of 16 x 8) per block
// where the grid keeps 1024 blocks. The forward does so at stride 1 only. GPU runs 6 and 7 (H200,
// batch 256, benchmarks/results/diag_depthwise_h200.json and its git history) timed the same kernels
// with blocks of several double-buffered tiles (run 6) and, where the double buffer passed 32 KB,
// of one tile (run 7): one tile took 12.5 % less time at stride 2 (144 x 56², k3) and 6-8 % more
// at k5 (120 x 28², 960 x 7²), the two at 34-37 KB of buffers; at stride 1, k3 several tiles were
// 3-9 % faster than run 5's single ones. The statistics and the weight gradient: a partial per
// block covering at least 256 (512) outputs, at most 2048 (1024) partials per channel.
constexpr TiledWork kTiledForward{kTiledCV, 512, int64_t(1) << 40, false, 1, kTiledSmemBytes, 1024, 2, 1};
constexpr TiledWork kTiledStats{kTiledCV, 256, 2048, false, 1};
constexpr TiledWork kTiledDgradS2{kTiledCV, 512, int64_t(1) << 40, true, 1, kTiledSmemBytes, 1024};
constexpr TiledWork kTiledDgradS2Bn{kTiledCV, 512, int64_t(1) << 40, true, 2, kTiledSmemBytes, 1024};  // + z
constexpr TiledWork kTiledBwdFused{kTiledFusedCV, 512, 1024, false, 2};
constexpr TiledWork kTiledBwdFusedBn{kTiledFusedCV, 512, 1024, false, 3};  // + BatchNorm's z (TiledBnDx)
inline TiledWork tiled_wgrad_work(int K) { return {tiled_wgrad_cv(K), 512, 1024, false, 1}; }

// The launch of a tiled kernel for one conv, or false when it does not apply (a tile's footprint
// over the shared-memory budget even at one output row, or too many blocks). Host code, shared by
// the launchers (depthwise_tiled.cu) and the host emulation. `vec` channels per 16-byte vector,
// C % vec == 0.
// Tile: up to 8 channel vectors (spread evenly over the channel blocks; vec / cv threads each; fewer
// where that gives more threads), 2 strips (8 columns) and as many rows as 256 threads allow,
// halved until one stage's footprints fit work.smem; rows and strips clipped to the output.
struct TiledPlan {
  TiledGeom g;
  unsigned cbv;                // channel vectors per block
  unsigned tx, ty;             // block (tx = cbv * lanes, ty)
  int64_t blocks_x, blocks_y;  // grid
  size_t smem;                 // dynamic shared memory, bytes
};

inline bool plan_tiled(int64_t N, int64_t C, int H, int W, int OH, int OW, int K, int S, int pH, int pW, int vec,
                       TiledWork work, TiledPlan& plan) {
  const int64_t cvecs = C / vec;
  if (N < 1 || cvecs < 1 || OH < 1 || OW < 1 || work.cv < 1 || work.tensors < 1) return false;
  if (work.stages != 1 && work.stages != 2) return false;
  if (work.dgrad_s2 && (S != 2 || pH < 0 || pW < 0)) return false;
  const int64_t lanes = vec / std::min(vec, work.cv);
  // The written extent the tiles cover: the dgrad_s2 tiles start one row/column early for an odd
  // padding. Their footprint in the read tensor: extent(rows) rows, extent(TW) columns.
  const int OHc = OH + (work.dgrad_s2 ? (pH & 1) : 0), OWc = OW + (work.dgrad_s2 ? (pW & 1) : 0);
  const int strips = OWc > kTiledRW ? 2 : 1;
  const int TW = strips * kTiledRW;
  const auto extent = [&](int outputs) {
    return work.dgrad_s2 ? (outputs - 1) / 2 + (K - 1) / 2 + 1 : (outputs - 1) * S + K;
  };
  const auto bytes = [&](int th, int64_t cbv) {  // one stage's footprints
    return static_cast<size_t>(extent(th)) * extent(TW) * cbv * 16 * work.tensors;
  };
  // Candidates: at most 8, 4, 2, 1 channel vectors per block; the one with the most threads wins
  // (ties: the most channels). A large footprint (stride 2, k5) makes the rows shrink at 8 vectors;
  // fewer vectors keep more rows, hence less halo per output and more threads per SM.
  int64_t cbv = 0;
  int TH = 0;
  unsigned ty = 0;
  for (int64_t cap = kTiledMaxVectors; cap >= 1; cap /= 2) {
    const int64_t c = even_lanes(cvecs, cap);
    const int ty_max = static_cast<int>(pow2_beside(c * lanes, kTiledMaxThreads));
    int th = std::min(OHc, std::max(1, ty_max / strips));
    while (th > 1 && bytes(th, c) > static_cast<size_t>(work.smem)) th = (th + 1) / 2;
    if (bytes(th, c) > static_cast<size_t>(work.smem)) continue;
    unsigned t = 1;
    while (t < static_cast<unsigned>(th * strips)) t *= 2;
    if (cbv == 0 || c * lanes * t > cbv * lanes * ty) {
      cbv = c;
      TH = th;
      ty = t;
    }
  }
  if (cbv == 0) return false;

  TiledGeom& g = plan.g;
  g.C = C;
  g.H = H;
  g.W = W;
  g.OH = OH;
  g.OW = OW;
  g.pH = pH;
  g.pW = pW;
  g.TH = TH;
  g.TW = TW;
  g.strips = strips;
  g.tiles_h = static_cast<int>(ceil_div(OHc, TH));
  g.tiles_w = static_cast<int>(ceil_div(OWc, TW));
  g.tiles = N * g.tiles_h * g.tiles_w;
  const int64_t blocks_y = ceil_div(cvecs, cbv);
  int64_t R = 1;
  if (work.min_outputs > 0) {
    R = std::min(g.tiles, std::max(ceil_div(g.tiles, work.max_blocks),
                                   ceil_div(work.min_outputs, static_cast<int64_t>(TH) * TW)));
  }
  if (work.min_blocks > 0) R = std::max<int64_t>(1, std::min(R, g.tiles * blocks_y / work.min_blocks));
  if (work.multi_tile_max_stride > 0 && S > work.multi_tile_max_stride) R = 1;
  if (R > (int64_t(1) << 30)) return false;
  g.R = static_cast<int>(R);
  g.stages = R > 1 ? work.stages : 1;
  plan.cbv = static_cast<unsigned>(cbv);
  plan.tx = static_cast<unsigned>(cbv * lanes);
  plan.ty = ty;
  plan.blocks_x = ceil_div(g.tiles, R);
  plan.blocks_y = blocks_y;
  plan.smem = bytes(TH, cbv) * g.stages;
  return plan.blocks_x <= 2147483647 && plan.blocks_y <= 65535;
}

// A plan's launch shape: <<<tiled_grid(p), tiled_block(p), p.smem>>>.
inline dim3 tiled_grid(const TiledPlan& p) {
  return dim3(static_cast<unsigned>(p.blocks_x), static_cast<unsigned>(p.blocks_y));
}
inline dim3 tiled_block(const TiledPlan& p) { return dim3(p.tx, p.ty); }

// The sizes of one tiled launch: x (N, C, H, W) is read, y (N, C, OH, OW) written; a K x K
// conv with stride S and padding (pH, pW).
struct TiledShape {
  int64_t N, C;
  int H, W, OH, OW, K, S, pH, pW;
};

// The strides of x (read) and y (written), dense channels_last: into a plan's geometry.
inline void set_tiled_strides(TiledGeom& g, const at::Tensor& x, const at::Tensor& y) {
  g.xsN = x.stride(0);
  g.xsH = x.stride(2);
  g.xsW = x.stride(3);
  g.ysN = y.stride(0);
  g.ysH = y.stride(2);
  g.ysW = y.stride(3);
}

// plan_tiled for the tiled launch x -> y of shape s, with the strides of the two tensors (dense
// channels_last) in the plan's geometry; false when plan_tiled rejects it. Shared by the launchers
// (depthwise_tiled.cu) and the host emulation.
inline bool plan_tiled_for(const at::Tensor& x, const at::Tensor& y, const TiledShape& s, int vec, TiledWork work,
                           TiledPlan& p) {
  if (!plan_tiled(s.N, s.C, s.H, s.W, s.OH, s.OW, s.K, s.S, s.pH, s.pW, vec, work, p)) return false;
  set_tiled_strides(p.g, x, y);
  return true;
}

// The BatchNorm before the conv for the launchers (TiledInputBn): its mean and var (C,), weight
// and bias (C,) or null, contiguous in the accumulation dtype; eps and activation.
struct InputBn {
  const at::Tensor* mean;
  const at::Tensor* var;
  const at::Tensor* weight;
  const at::Tensor* bias;
  double eps;
  Act act;
};

// One conv for run_tiled_conv (depthwise_tiled.cu): y = act(conv(x, w) + bias), x and y dense
// channels_last with 16-byte aligned vectors (can_vectorize), w_taps (K * K, C) and bias (C,) or
// undefined in the accumulation dtype; part receives the (3, blocks, C) statistics partials.
// For run_tiled_bwd_input_s2, optionally: z (BatchNorm's input, x's sizes and strides) and
// bn_table ((bn::kTrainDxRows, C), accumulation dtype): x is then BatchNorm's grad_output
// (TiledBnDx), bn_act its activation. For run_tiled_conv, optionally xbn: x is the input of that
// BatchNorm + activation, whose output is the conv's input (TiledInputBn).
struct TiledConv {
  const at::Tensor* x;
  at::Tensor* y;
  const at::Tensor* w_taps;
  const at::Tensor* bias;
  at::Tensor* part;  // kStats only
  Act act;
  TiledShape shape;
  const at::Tensor* z = nullptr;
  const at::Tensor* bn_table = nullptr;
  Act bn_act = Act::kIdentity;
  const InputBn* xbn = nullptr;
};

// One weight gradient for run_tiled_bwd_weight: x (the conv's input) and gy (grad_output) dense
// channels_last with 16-byte aligned vectors; part receives the (blocks, K * K + bias, C) stage-1
// partials that depthwise_conv2d_bwd_weight_finish_kernel sums.
// Optionally z (BatchNorm's input, gy's sizes and strides), bn_table and act: gy is then
// BatchNorm's grad_output (TiledBnDx).
struct TiledWgrad {
  const at::Tensor* x;
  const at::Tensor* gy;
  at::Tensor* part;
  bool bias;
  TiledShape shape;  // of the conv: x -> gy
  const at::Tensor* z = nullptr;
  const at::Tensor* bn_table = nullptr;
  Act act = Act::kIdentity;
  const InputBn* xbn = nullptr;  // as TiledConv's
};

// grad_input and the weight gradient's stage 1 of a stride-1 "same" conv in one pass, for
// run_tiled_bwd_fused_s1: x (the conv's input), gy (grad_output, x's sizes and strides) and gx
// (grad_input) dense channels_last with 16-byte aligned vectors, w_taps the conv's (K * K, C) taps
// in the accumulation dtype; part receives the (blocks, K * K + bias, C) partials.
// With z (BatchNorm's input, x's sizes and strides) and bn_table (the (bn::kTrainDxRows, C)
// coefficients of batch_norm_act_train_backward_sums, accumulation dtype): gy is BatchNorm's
// grad_output, turned into the conv's in the staged tiles (TiledBnDx).
struct TiledBwd {
  const at::Tensor* x;
  const at::Tensor* gy;
  at::Tensor* gx;
  const at::Tensor* w_taps;
  at::Tensor* part;
  bool bias;
  TiledShape shape;  // of the conv: x -> gy
  const at::Tensor* z = nullptr;
  const at::Tensor* bn_table = nullptr;
  Act act = Act::kIdentity;
  const InputBn* xbn = nullptr;  // as TiledConv's
};

// The staging buffers of the tiled kernels, from MK_DW_STAGES (read once per process): 2
// (double-buffered where a block walks several tiles), or 1 with MK_DW_STAGES=1 (stage, wait,
// compute), to time the two against each other (benchmarks/diag_depthwise.py).
int tiled_stages();

// The largest stride the tiled kernels take, from MK_DW_TILED (read once per process): 2 (every
// stride they have), unless MK_DW_TILED=0: 0, never. With their cp.async staging they beat the
// default kernels on every layer timed, stride 2 included (GPU run 5, H200: forward 20-43 %,
// weight gradient 23-53 %, backward 12-58 % less time; benchmarks/results/diag_depthwise_h200.json;
// in run 4, before cp.async, they lost at stride 2). benchmarks/diag_depthwise.py compares them.
int tiled_max_stride();

// Runs the conv through the tiled kernel and returns true, or returns false (nothing launched) when
// it does not apply: float64, K not in {3, 5}, S not in {1, 2}, or no plan (plan_tiled).
template <typename scalar_t, bool kStats>
bool run_tiled_conv(const TiledConv& c);

// Runs grad_input of a stride-2 conv through the parity-split tiled kernel and returns true, or
// returns false (nothing launched) when it does not apply (as run_tiled_conv, or S != 2). c.x is
// grad_output (shape H x W), c.y grad_input (shape OH x OW), c.w_taps the conv's (K * K, C) taps
// (not rotated), the shape's pH/pW the conv's padding; no bias, no activation.
template <typename scalar_t>
bool run_tiled_bwd_input_s2(const TiledConv& c);

// Its plan alone (nothing launched): whether run_tiled_bwd_input_s2 would apply.
template <typename scalar_t>
bool plan_tiled_bwd_input_s2(const TiledConv& c, TiledPlan& p);

// Runs the fused stride-1 backward (depthwise_conv2d_bwd_fused_s1_tiled_kernel) and returns true,
// or returns false (nothing launched) when it does not apply: as run_tiled_conv, or not a stride-1
// conv with K odd, padding (K - 1) / 2 on both axes, and gy (and z) with x's strides.
template <typename scalar_t>
bool run_tiled_bwd_fused_s1(const TiledBwd& c);

// Its plan alone (nothing launched): whether run_tiled_bwd_fused_s1 would apply.
template <typename scalar_t>
bool plan_tiled_bwd_fused_s1(const TiledBwd& c, TiledPlan& p);

// Runs stage 1 of the weight gradient through the tiled kernel and returns true (*c.part set), or
// returns false (nothing launched) when it does not apply, for the same reasons as run_tiled_conv.
template <typename scalar_t>
bool run_tiled_bwd_weight(const TiledWgrad& c);

// Its plan alone (nothing launched): whether run_tiled_bwd_weight would apply.
template <typename scalar_t>
bool plan_tiled_bwd_weight(const TiledWgrad& c, TiledPlan& p);

}  // namespace cuda
}  // namespace mobilenet_kernels
