// Host emulation (see cuda_runtime.h) of the nvcuda::wmma calls of csrc/cuda/pointwise_gemm.cuh,
// 16x16x16 shapes only. On the GPU a fragment is spread over the 32 lanes of a warp in a layout the
// API hides; here every thread holds its fragment's whole 16x16 tile, so a warp-collective call
// computes the same tile in each of the warp's threads: load_matrix_sync reads the tile, mma_sync
// multiplies in float (each 16-bit product is exact in float; the sum runs over k in order, where
// the hardware's order within an MMA is its own), and store_matrix_sync has lane 0 of the warp
// write the tile, so that a read of it before the barrier that the kernel owes shows as a race.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "emulated wmma: 16x16x16 only");
  static constexpr int num_elements = 256;
  T x[256];  // element (r, c) of the fragment's tile at x[r * 16 + c]
};

template <typename Use, typename T, typename Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, const T& v) {
  for (auto& e : f.x) e = v;
}

// A (rows m, columns k) or B (rows k, columns n) from memory with leading dimension ldm.
template <typename Use, typename T, typename Layout>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  constexpr bool row = std::is_same_v<Layout, row_major>;
  static_assert(row || std::is_same_v<Layout, col_major>, "emulated wmma: a layout is needed");
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    throw std::runtime_error("wmma::load_matrix_sync: pointer not 32-byte aligned");
  }
  if (ldm % (16 / sizeof(T)) != 0) throw std::runtime_error("wmma::load_matrix_sync: ldm not a multiple of 16 bytes");
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = row ? p[r * ldm + c] : p[c * ldm + r];
  }
}

template <typename TA, typename TB, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, TB, LB>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[256];
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i * 16 + j];
      for (int k = 0; k < 16; ++k) s += static_cast<float>(a.x[i * 16 + k]) * static_cast<float>(b.x[k * 16 + j]);
      out[i * 16 + j] = s;
    }
  }
  for (int e = 0; e < 256; ++e) d.x[e] = out[e];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    throw std::runtime_error("wmma::store_matrix_sync: pointer not 32-byte aligned");
  }
  if (ldm % 4 != 0) throw std::runtime_error("wmma::store_matrix_sync: ldm not a multiple of 16 bytes");
  const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  if (tid % 32 != 0) return;
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 16; ++c) {
      (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[r * 16 + c];
    }
  }
}

}  // namespace wmma
}  // namespace nvcuda
