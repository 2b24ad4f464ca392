// Host emulation of the few CUDA constructs the kernels of csrc/cuda/*.cuh use, so g++ (no nvcc)
// can compile a kernel and run it on the CPU: python_tests/cuda_emulation/emulation.h (launch_grid)
// starts one std::thread per CUDA thread of a block and runs the blocks one at a time.
// This directory goes first on the include path (it shadows <cuda_runtime.h> and
// <c10/cuda/CUDAException.h>). Under MK_CUDA_EMULATION, which the emulation build defines, the
// headers leave out their kernel launches (<<<...>>>, chan_stats.cuh) and declare the dynamic
// shared memory as a pointer the launcher sets (depthwise_tiled.cuh, inverted_residual_block.cuh).
// Inline PTX cannot run here: the rcp.approx.ftz.f64 of recip_ge1(double) (mk_cuda.cuh) calls
// mk_emu::rcp_approx_ftz_f64 below under MK_CUDA_EMULATION, and the cp.async copies of
// mk_cuda.cuh (copy16_async) land at their wait (mk_emu::cp_async_wait below); __shfl_down_sync
// exchanges through per-warp slots and a barrier of the warp's lanes. Tensor cores: mma.h
// (nvcuda::wmma); fp16/bf16 types: cuda_fp16.h / cuda_bf16.h (ATen's types, the same bits).
// Include this header after the PyTorch headers (its macros must not reach them).
#pragma once

#ifndef MK_CUDA_EMULATION
#error "cuda_shim/cuda_runtime.h is the host emulation's; build with -DMK_CUDA_EMULATION"
#endif

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3() = default;
  constexpr dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using cudaStream_t = void*;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// Blocks run one at a time, so a function-local static is the block's shared memory. (A
// namespace-scope `extern __shared__` array is declared differently under MK_CUDA_EMULATION.)
#define __shared__ static
#define __align__(n) alignas(n)
#define __launch_bounds__(...)

// The thread's coordinates; blockIdx is set by each thread of the block to the same value.
inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

namespace mk_emu {

// A reusable barrier for the threads of one block (a generation counter and a futex), with a
// timeout: a __syncthreads that not every thread of the block reaches (divergent control flow, an
// early return) would hang a std::barrier; this one throws in every waiting thread instead, and the
// launcher reports the error. Its acquire/release pairs order the block's shared-memory accesses
// as __syncthreads does.
class BlockBarrier {
 public:
  BlockBarrier(int count, const char* what) : count_(count), what_(what) {}
  void arrive_and_wait() {
    check_broken();
    const uint32_t gen = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      futex(FUTEX_WAKE_PRIVATE, INT_MAX, nullptr);
      return;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(kTimeoutS);
    while (generation_.load(std::memory_order_acquire) == gen) {
      check_broken();
      timespec ts{0, 100 * 1000 * 1000};  // re-check every 100 ms
      futex(FUTEX_WAIT_PRIVATE, gen, &ts);
      if (generation_.load(std::memory_order_acquire) == gen && std::chrono::steady_clock::now() > deadline) {
        break_all();
        throw std::runtime_error(std::string("emulated ") + what_ +
                                 ": not every thread of the block arrived (divergent or missing barrier)");
      }
    }
  }
  // Wakes every waiting thread with an error (another thread of the block failed).
  void break_all() {
    broken_.store(true);
    futex(FUTEX_WAKE_PRIVATE, INT_MAX, nullptr);
  }

 private:
  static constexpr int kTimeoutS = 30;
  void check_broken() const {
    if (broken_.load()) throw std::runtime_error(std::string("emulated ") + what_ + ": barrier broken");
  }
  void futex(int op, uint32_t val, const timespec* ts) {
    static_assert(sizeof(generation_) == sizeof(uint32_t) && std::atomic<uint32_t>::is_always_lock_free);
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&generation_), op, val, ts, nullptr, 0);
  }
  std::atomic<int> arrived_{0};
  std::atomic<uint32_t> generation_{0};
  std::atomic<bool> broken_{false};
  const int count_;
  const char* what_;
};

// The __syncthreads barrier of the block the calling thread belongs to (set by the launcher).
inline thread_local BlockBarrier* current_barrier = nullptr;

// A warp of the block (32 consecutive threads, the last one possibly fewer): the lanes' exchange
// slots of a shuffle and a barrier of its lanes (set by the launcher, as the thread's lane).
struct Warp {
  explicit Warp(int lanes_) : lanes(lanes_), bar(lanes_, "warp shuffle") {}
  int lanes;
  BlockBarrier bar;
  uint64_t slot[32] = {};
};
inline thread_local Warp* current_warp = nullptr;
inline thread_local int lane_id = 0;

}  // namespace mk_emu

inline void __syncthreads() {
  mk_emu::current_barrier->arrive_and_wait();
}

// __shfl_down_sync with every lane of the warp taking part (the full masks our kernels pass): the
// value of lane + delta, or the caller's own where that lane is past the warp (or its width-wide
// segment). Each lane publishes its value, the warp meets, reads, and meets again before the slots
// are reused; a lane that does not take part leaves the others waiting: the barrier's timeout
// reports it.
template <typename T>
inline T __shfl_down_sync(unsigned /*mask*/, T v, unsigned delta, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "a shuffle moves at most 8 bytes");
  mk_emu::Warp& w = *mk_emu::current_warp;
  const int lane = mk_emu::lane_id;
  std::memcpy(&w.slot[lane], &v, sizeof(T));
  w.bar.arrive_and_wait();
  const int src = lane + static_cast<int>(delta);
  T r = v;
  if (src < (lane / width + 1) * width && src < w.lanes) std::memcpy(&r, &w.slot[src], sizeof(T));
  w.bar.arrive_and_wait();
  return r;
}

inline float __fdividef(float a, float b) { return a / b; }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
using std::fma;
using std::isfinite;
using std::isinf;
using std::isnan;
// CUDA's integer min / max overloads (device code calls them unqualified).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace mk_emu {
// rcp.approx.ftz.f64 (recip_ge1(double) in mk_cuda.cuh calls this under MK_CUDA_EMULATION instead
// of its inline PTX): the hardware gives about 20 correct bits of 1 / y (MUFU.RCP64H: the high word
// of the reciprocal), modelled as 1 / y with its low 32 bits cleared, so that recip_ge1's Newton
// steps have the same work to do as on the GPU (+-0 -> +-inf, inf -> 0, NaN -> NaN; inputs below
// the normal range are flushed to zero).
inline double rcp_approx_ftz_f64(double y) {
  if (std::fpclassify(y) == FP_SUBNORMAL) y = std::copysign(0.0, y);
  double q = 1.0 / y;
  if (std::isfinite(q) && q != 0.0) {
    uint64_t bits;
    std::memcpy(&bits, &q, sizeof bits);
    bits &= ~uint64_t(0xffffffff);
    std::memcpy(&q, &bits, sizeof bits);
  }
  return q;
}

// cp.async (copy16_async and friends, mk_cuda.cuh): every emulated CUDA thread is a std::thread
// with its own queue of copies, grouped by commit; copy_async_wait<N> lands all but the newest N
// committed groups. A copy's destination holds NaN from its issue to its wait (undefined on a GPU
// while the copy is in flight): a kernel that reads staged shared memory before waiting, or that
// issues a copy into a buffer still being read (double buffering), reads NaN; a block's copies
// never waited for are lost with its threads, as on a GPU.
struct AsyncCopy {
  void* dst;
  const void* src;
  bool valid;  // false: 16 zero bytes, src not read
};
inline thread_local std::vector<std::vector<AsyncCopy>> async_groups(1);  // the last is still open

inline void cp_async16(void* dst, const void* src, bool valid) {
  std::memset(dst, 0xff, 16);  // NaN in every floating type until the wait lands the copy
  async_groups.back().push_back({dst, src, valid});
}

inline void cp_async_commit() { async_groups.emplace_back(); }

inline void cp_async_wait(int n) {
  while (async_groups.size() - 1 > static_cast<size_t>(n)) {  // committed groups beyond the newest n
    for (const AsyncCopy& c : async_groups.front()) {
      if (c.valid) {
        std::memcpy(c.dst, c.src, 16);
      } else {
        std::memset(c.dst, 0, 16);
      }
    }
    async_groups.erase(async_groups.begin());
  }
}
}  // namespace mk_emu
