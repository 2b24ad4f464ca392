// What the host emulations of our CUDA kernels (dw_tiled_host.cpp, inverted_residual_host.cpp)
// share: the emulated launch and the guarded buffers that make a kernel's mistakes visible.
//
// launch_grid runs a kernel the way the GPU would, on the CPU: one std::thread per CUDA thread of
// a block (32 consecutive ones a warp, for __shfl_down_sync), running the grid's blocks one after
// the other (x fastest), all threads on the same block, with a barrier between blocks
// (function-local __shared__ arrays are statics under the shim: one block at a time). Before each
// block the dynamic shared memory is filled with 0xff bytes (NaN in every floating dtype), so a
// read of an entry nobody wrote this block shows; a guard zone after it catches writes past its
// end. Buffers: in_guarded_buffer puts a tensor, same sizes and
// strides, inside a buffer of a fill value with guard zones on both sides: NaN around inputs (a
// read outside them shows as a NaN output rather than a crash), a sentinel around the output (a
// write outside it shows), whose own elements start as NaN (an element the kernel misses shows).
#pragma once

#include <torch/extension.h>

#include <cuda_runtime.h>  // cuda_shim/cuda_runtime.h

#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace mk_emu {

constexpr int64_t kGuardElems = 1024;   // guard elements before and after every buffer, at least
constexpr size_t kSmemGuard = 256;      // bytes after the dynamic shared memory
constexpr float kSentinel = -30720.0f;  // the output's guard zones (exact in every floating dtype)
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The elements a tensor's sizes and strides span (0 for an empty one).
inline int64_t span_of(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  int64_t span = 1;
  for (int64_t d = 0; d < t.dim(); ++d) span += (t.size(d) - 1) * t.stride(d);
  return span;
}

// t, same sizes and strides, inside a buffer of `fill` with `guard` elements on both sides.
inline at::Tensor in_guarded_buffer(const at::Tensor& t, int64_t guard, double fill) {
  for (int64_t d = 0; d < t.dim(); ++d) TORCH_CHECK(t.stride(d) >= 0, "emulation: negative strides");
  at::Tensor buf = at::full({span_of(t) + 2 * guard}, fill, t.options());
  at::Tensor g = buf.as_strided(t.sizes(), t.strides(), guard);
  g.copy_(t);
  return g;
}

// t inside a NaN buffer with guard zones of its own size and more on both sides (a small operand:
// weights, biases).
inline at::Tensor guarded_nan(const at::Tensor& t) { return in_guarded_buffer(t, t.numel() + kGuardElems, kNaN); }

// A kernel's output: `like`'s sizes and strides, NaN, inside sentinel guard zones of `guard`
// elements; check() raises if the kernel wrote into them.
struct GuardedOutput {
  at::Tensor y, buffer;
  int64_t guard;
  GuardedOutput(const at::Tensor& like, int64_t guard_) : guard(guard_) {
    y = in_guarded_buffer(like, guard, kSentinel);
    y.fill_(kNaN);
    buffer = y.as_strided({span_of(y) + 2 * guard}, {1}, 0);
  }
  void check() const {
    const int64_t n = span_of(y);
    TORCH_CHECK(buffer.narrow(0, 0, guard).eq(kSentinel).all().item<bool>() &&
                    buffer.narrow(0, guard + n, guard).eq(kSentinel).all().item<bool>(),
                "emulation: the kernel wrote outside the output");
  }
};

// Guard elements for t: its span and more, a multiple of 16 elements, so that the buffer's 64-byte
// alignment carries over to t (16-byte vectors).
inline int64_t guard_for(const at::Tensor& t) { return (span_of(t) + kGuardElems + 15) / 16 * 16; }

// An input (NaN guard zones) and an output (sentinel guard zones) with guard_for's zones.
inline at::Tensor guarded_in(const at::Tensor& t) { return in_guarded_buffer(t, guard_for(t), kNaN); }
inline GuardedOutput guarded_out(const at::Tensor& like) { return GuardedOutput(like, guard_for(like)); }

// kernel<<<grid, block, smem_bytes>>>, emulated: `smem` (the kernel header's dynamic shared-memory
// pointer under MK_CUDA_EMULATION) points at a fresh 128-byte aligned buffer (the
// largest alignment a kernel declares for it: pointwise_gemm.cuh's wmma tiles need 32) while `kernel()` (a
// callable that calls the kernel with its arguments) runs for every thread of every block. Raises
// the first error a thread raised (a broken barrier included), or when the kernel wrote past its
// shared memory. `smem_alias`, when given, is pointed at the same buffer: on a GPU every header's
// `extern __shared__` name is the same dynamic shared memory.
template <typename Kernel>
void launch_grid(dim3 grid, dim3 block, size_t smem_bytes, unsigned char*& smem, const Kernel& kernel,
                 unsigned char** smem_alias = nullptr) {
  const int nthreads = static_cast<int>(block.x * block.y * block.z);
  TORCH_CHECK(nthreads >= 1 && nthreads <= 1024, "emulation: a block of ", nthreads, " threads");
  const size_t bytes = smem_bytes + kSmemGuard;
  std::unique_ptr<unsigned char[], void (*)(unsigned char*)> buf(
      static_cast<unsigned char*>(::operator new[](bytes, std::align_val_t(128))),
      [](unsigned char* p) { ::operator delete[](p, std::align_val_t(128)); });
  std::memset(buf.get(), 0xff, bytes);
  smem = buf.get();
  if (smem_alias != nullptr) *smem_alias = buf.get();  // a second header's name for the same memory
  blockDim = block;
  gridDim = grid;
  BlockBarrier sync_bar(nthreads, "__syncthreads");    // the kernel's
  BlockBarrier block_bar(nthreads, "block boundary");  // the launcher's, between blocks
  std::vector<std::unique_ptr<Warp>> warps;            // __shfl_down_sync's
  for (int t = 0; t < nthreads; t += 32) warps.push_back(std::make_unique<Warp>(std::min(32, nthreads - t)));
  std::mutex err_mu;
  std::string error;
  auto body = [&](int tid) {
    try {
      threadIdx = dim3(tid % block.x, tid / block.x % block.y, tid / (block.x * block.y));
      current_barrier = &sync_bar;
      current_warp = warps[tid / 32].get();
      lane_id = tid % 32;
      for (unsigned bz = 0; bz < grid.z; ++bz) {
        for (unsigned by = 0; by < grid.y; ++by) {
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            if (tid == 0) std::memset(buf.get(), 0xff, smem_bytes);  // a fresh block's shared memory: garbage
            block_bar.arrive_and_wait();
            blockIdx = dim3(bx, by, bz);
            kernel();
            block_bar.arrive_and_wait();  // the block's statics and shared memory are free again
          }
        }
      }
    } catch (const std::exception& e) {
      {
        std::lock_guard<std::mutex> lock(err_mu);
        if (error.empty()) error = e.what();
      }
      sync_bar.break_all();
      block_bar.break_all();
      for (auto& w : warps) w->bar.break_all();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (int tid = 0; tid < nthreads; ++tid) threads.emplace_back(body, tid);
  for (auto& t : threads) t.join();
  smem = nullptr;
  if (smem_alias != nullptr) *smem_alias = nullptr;
  TORCH_CHECK(error.empty(), "emulation: ", error);
  for (size_t i = smem_bytes; i < bytes; ++i) {
    TORCH_CHECK(buf[i] == 0xff, "emulation: the kernel wrote past its ", smem_bytes, " bytes of shared memory");
  }
}

// The `launch(kernel, grid, block, dynamic_smem_bytes, args...)` that the kernel headers' launch
// sequences take (cuda::StreamLaunch on a GPU, mk_cuda.cuh), emulated with launch_grid: `smem`
// points at the header's dynamic shared-memory pointer (none: the kernels have none), smem_alias at
// a second header's, for a sequence that launches kernels of both; each launch is counted in
// *launches when given.
struct HostLaunch {
  unsigned char** smem = nullptr;
  int* launches = nullptr;
  unsigned char** smem_alias = nullptr;
  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, const Args&... args) const {
    unsigned char* no_smem = nullptr;
    launch_grid(grid, block, smem_bytes, smem != nullptr ? *smem : no_smem, [&] { kernel(args...); }, smem_alias);
    if (launches != nullptr) ++*launches;
  }
};

}  // namespace mk_emu
