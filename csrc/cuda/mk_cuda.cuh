// Device helpers shared by the CUDA kernels (csrc/cuda/*.cu): asynchronous 16-byte copies to shared
// memory, 16-byte vectors, division by a fixed divisor without a division instruction, and the
// activations as a runtime switch written without IEEE division.
#pragma once

#include <c10/util/Exception.h>
#ifndef MK_CUDA_EMULATION
#include <c10/cuda/CUDAException.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#include "mk_common.h"

namespace mobilenet_kernels {
namespace cuda {

// Declares `name`, the dynamic shared memory of a kernel header's kernel: under nvcc the extern
// __shared__ array, `align`-byte aligned; under the host emulation (python_tests/cuda_emulation) a
// pointer that the emulated launch points at a fresh 128-byte aligned buffer of the launch's bytes.
#ifndef MK_CUDA_EMULATION
#define MK_DYNAMIC_SMEM(name, align) extern __shared__ __align__(align) unsigned char name[]
#else
#define MK_DYNAMIC_SMEM(name, align) inline unsigned char* name = nullptr
#endif

// 16 bytes global -> shared, asynchronous (cp.async.cg, sm_80+: L2 only, no registers held while
// in flight, so a thread can have all its copies of a tile in flight at once), or 16 zero bytes
// when !valid (src-size 0: nothing is read from src, which must still be a valid address). Both
// addresses 16-byte aligned. Complete for this thread after copy_async_commit() and
// copy_async_wait<N>(); for the block after a __syncthreads() that follows. The host emulation
// (cuda_shim) defers each group's copies to the copy_async_wait that completes it, so a read
// before the wait sees its poisoned shared memory; before sm_80 (no cp.async) a plain copy.
#if !defined(MK_CUDA_EMULATION) && (!defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800)
#define MK_CP_ASYNC 1
#else
#define MK_CP_ASYNC 0
#endif

__device__ __forceinline__ void copy16_async(void* dst, const void* src, bool valid) {
#if defined(MK_CUDA_EMULATION)
  mk_emu::cp_async16(dst, src, valid);
#elif MK_CP_ASYNC
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
#else
  *static_cast<uint4*>(dst) = valid ? *static_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
#endif
}

__device__ __forceinline__ void copy_async_commit() {
#if defined(MK_CUDA_EMULATION)
  mk_emu::cp_async_commit();
#elif MK_CP_ASYNC
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void copy_async_wait() {
#if defined(MK_CUDA_EMULATION)
  mk_emu::cp_async_wait(N);
#elif MK_CP_ASYNC
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Lanes a block gives n items (n >= 1), at most `cap`: the items spread evenly over the fewest
// blocks (60 channel vectors, at most 32 a block: two blocks of 30), so that no more lanes idle
// than the uneven split leaves.
inline int64_t even_lanes(int64_t n, int64_t cap) { return ceil_div(n, ceil_div(n, cap)); }

// The largest power of two p with p * lanes <= threads (1 if none): a block's second dimension
// beside `lanes`, halvable by a fixed reduction tree.
inline int64_t pow2_beside(int64_t lanes, int64_t threads) {
  int64_t p = 1;
  while (2 * p * lanes <= threads) p *= 2;
  return p;
}

// Plane i of a contiguous buffer of planes (partial sums: (planes, tiles, C)). Not `t[i]`: that is an
// aten::select (and an as_strided), a dispatched op that costs host time at every launch (GPU run 7:
// 319 selects per V3-Large training step).
template <typename T>
inline T* plane(const at::Tensor& t, int64_t i) {
  return t.data_ptr<T>() + i * t.stride(0);
}

// Whether the environment variable `name` is set to `value` (the kernels' switches, MK_DW_TILED
// and the like; each caller reads it once per process).
inline bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

// Whether p may be read or written as 16-byte vectors.
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Elements per 16-byte vector of scalar_t for dense tensors whose innermost extent is `inner`
// (C in channels_last, HW in NCHW): 16 / sizeof(scalar_t) where `inner` is a multiple of it and
// every non-null pointer is 16-byte aligned, else 1.
template <typename scalar_t>
inline int vector_width(int64_t inner, std::initializer_list<const void*> pointers) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  if (kVec <= 1 || inner % kVec != 0) return 1;
  for (const void* p : pointers) {
    if (p != nullptr && !aligned16(p)) return 1;
  }
  return kVec;
}

// The entry check of every CUDA kernel: the dispatcher routes by the first tensor's device, so a
// call reaching a CUDA kernel with a CPU input is a bad argument, not a crash.
inline void check_cuda(const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.is_cuda(), "input: expected a CUDA tensor, got device ", input.device());
}

// Division of 0 <= n < 2^63 by a fixed d >= 1 as a multiply-high and a shift (Granlund and
// Montgomery, the 64-bit twin of ATen's IntDivider): no division instruction, hence no call to a
// division subroutine, in the kernels. With s = ceil(log2 d) and m = floor(2^64 (2^s - d) / d) + 1,
// the multiplier 2^64 + m is floor(2^(64+s) / d) + 1 and n / d = (umulhi(n, m) + n) >> s; the sum
// stays below 2^64 because umulhi(n, m) <= n < 2^63.
struct Divider {
  int64_t d;
  uint64_t m;
  int s;
  __device__ __forceinline__ int64_t div(int64_t n) const {
    return static_cast<int64_t>((__umul64hi(static_cast<uint64_t>(n), m) + static_cast<uint64_t>(n)) >> s);
  }
};

inline Divider make_divider(int64_t d) {
  TORCH_INTERNAL_ASSERT(d >= 1);
  int s = 0;
  while ((uint64_t(1) << s) < static_cast<uint64_t>(d)) ++s;
  using u128 = unsigned __int128;
  const u128 num = (u128(1) << 64) * ((u128(1) << s) - static_cast<u128>(d));  // < 2^127: 2^s - d < d
  return Divider{d, static_cast<uint64_t>(num / static_cast<u128>(d) + 1), s};
}

// A thread's walk over rows m, m + step, ... < end that keeps R rows' loads in flight: load(i)
// issues row i's loads and returns them, use(i, loaded) consumes them; R rows are loaded before
// any of them is used, then used in row order (the remainder one at a time), so the arithmetic
// and its order are those of a plain loop over the rows. A loop that loads and uses one row a trip
// has one row's loads in flight a thread: GPU run 7 timed such passes (batch_norm_act's backward)
// at 39-58 us a launch at batch 128 against 30-33 us for ATen's, which keep four rows in flight.
template <int R, typename Load, typename Use>
__device__ __forceinline__ void for_rows_in_flight(int64_t m, int64_t end, int64_t step, const Load& load,
                                                   const Use& use) {
  using Loaded = decltype(load(m));
  for (; m + (R - 1) * step < end; m += R * step) {
    Loaded in[R];
#pragma unroll
    for (int r = 0; r < R; ++r) in[r] = load(m + r * step);
#pragma unroll
    for (int r = 0; r < R; ++r) use(m + r * step, in[r]);
  }
  for (; m < end; m += step) use(m, load(m));
}

template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> load_raw_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, VEC>*>(p);
}

template <int VEC, typename T, typename acc_t>
__device__ __forceinline__ void load_vec(const T* p, acc_t (&out)[VEC]) {
  const Vec<T, VEC> v = load_raw_vec<T, VEC>(p);
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = static_cast<acc_t>(v.v[i]);
}

// Sums `val` over threadIdx.y (blockDim.y a power of two) with a fixed tree in `buf` (blockDim.x *
// blockDim.y * VEC elements); y == 0 threads with `store` write the sum times `mul` to
// out[offset + v], v < VEC. Every thread of the block must call it (it synchronizes). Used by the
// weight-gradient kernels, batch_norm_act's reductions and squeeze_excite's.
template <typename acc_t, int VEC>
__device__ void block_sum_store(const acc_t (&val)[VEC], acc_t* buf, bool store, acc_t* __restrict__ out,
                                int64_t offset, acc_t mul = acc_t(1)) {
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
#pragma unroll
  for (int v = 0; v < VEC; ++v) buf[tid * VEC + v] = val[v];
  __syncthreads();
  for (int s = blockDim.y / 2; s > 0; s /= 2) {
    if (threadIdx.y < s) {
      const int o = tid + s * blockDim.x;
#pragma unroll
      for (int v = 0; v < VEC; ++v) buf[tid * VEC + v] += buf[o * VEC + v];
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && store) {
#pragma unroll
    for (int v = 0; v < VEC; ++v) out[offset + v] = buf[tid * VEC + v] * mul;
  }
  __syncthreads();  // buf is rewritten by the next call
}

// The kernels use no IEEE division or reciprocal: those compile to a call into a slow-path
// subroutine, and its register save/restore shows up as stack frame and spills in ptxas' report.
// recip_ge1(y) = 1 / y for y >= 1 (or +inf, or NaN): float: __fdividef (within 2 ulp); double: the
// hardware approximation refined by three Newton steps (each squares the relative error; within
// an ulp), with 1 / inf = 0 explicit (a Newton step would turn inf * 0 into NaN).
__device__ __forceinline__ float recip_ge1(float y) { return __fdividef(1.0f, y); }

__device__ __forceinline__ double recip_ge1(double y) {
  if (isinf(y)) return 0.0;
  double r;
#ifndef MK_CUDA_EMULATION
  asm("rcp.approx.ftz.f64 %0, %1;" : "=d"(r) : "d"(y));
#else
  r = mk_emu::rcp_approx_ftz_f64(y);  // the host emulation's model of the instruction (cuda_shim)
#endif
#pragma unroll
  for (int i = 0; i < 3; ++i) r = fma(r, fma(-y, r, 1.0), r);
  return r;
}

__device__ __forceinline__ float exp_of(float z) { return ::expf(z); }
__device__ __forceinline__ double exp_of(double z) { return ::exp(z); }

template <typename T>
__device__ __forceinline__ T clamp_0_6(T t) {
  return t < T(0) ? T(0) : (t > T(6) ? T(6) : t);  // NaN passes through, as in act_forward
}

// act(z), a uniform runtime switch (not a template parameter: fewer kernel instantiations). Same
// formulas as act_forward (mk_common.h), written without division: x / 6 as x * (1/6) (as ATen's
// CUDA hardswish/hardsigmoid do), and sigmoid / silu through recip_ge1(1 + exp(-z)), so they may
// differ from it by an ulp or two.
template <typename T>
__device__ __forceinline__ T apply_activation(Act act, T z) {
  const T one_sixth = T(1) / T(6);
  switch (act) {
    case Act::kRelu:
      return act_forward<Act::kRelu>(z);
    case Act::kRelu6:
      return act_forward<Act::kRelu6>(z);
    case Act::kHardswish:
      return z * clamp_0_6(z + T(3)) * one_sixth;
    case Act::kHardsigmoid:
      return clamp_0_6(z + T(3)) * one_sixth;
    case Act::kSigmoid:
      return recip_ge1(T(1) + exp_of(-z));
    case Act::kSilu:
      return z * recip_ge1(T(1) + exp_of(-z));
    default:
      return z;
  }
}

// act'(z): act_derivative (mk_common.h, the same conventions at the kinks) as a runtime switch.
template <typename T>
__device__ __forceinline__ T activation_grad(Act act, T z) {
  const T one = T(1);
  switch (act) {
    case Act::kRelu:
      return act_derivative<Act::kRelu>(z);
    case Act::kRelu6:
      return act_derivative<Act::kRelu6>(z);
    case Act::kHardswish:
      return z <= T(-3) ? T(0) : (z >= T(3) ? one : z * (one / T(3)) + T(0.5));
    case Act::kHardsigmoid:
      return act_derivative<Act::kHardsigmoid>(z);
    case Act::kSigmoid: {
      const T s = recip_ge1(one + exp_of(-z));
      return s * (one - s);
    }
    case Act::kSilu: {
      const T s = recip_ge1(one + exp_of(-z));
      return s * (one + z * (one - s));
    }
    default:
      return one;
  }
}

#ifndef MK_CUDA_EMULATION  // a kernel launch: nvcc only (the host emulation runs kernels itself)
// The `launch(kernel, grid, block, dynamic_smem_bytes, args...)` of the kernel headers' launch
// sequences (squeeze_excite.cuh, excite_gemm.cuh, pointwise_stats.cuh) on a stream; the host
// emulation passes its own (python_tests/cuda_emulation) to run the same sequence on the CPU.
struct StreamLaunch {
  cudaStream_t stream;
  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, const Args&... args) const {
    kernel<<<grid, block, smem, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};
#endif  // MK_CUDA_EMULATION

}  // namespace cuda
}  // namespace mobilenet_kernels
