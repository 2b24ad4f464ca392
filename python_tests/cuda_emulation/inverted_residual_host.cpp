// Host emulation of inverted_residual_eval_kernel (csrc/cuda/inverted_residual_block.cuh), the CUDA
// whole-block kernel of inverted_residual_eval: g++ compiles the very header against cuda_shim/
// (dim3, threadIdx & co., __syncthreads as a block barrier) and runs the kernel on the CPU, so that
// the tests (python_tests/test_cuda_emulation.py) can check its index math against the op-by-op
// reference without a GPU. Same structure as dw_tiled_host.cpp.
//
// A call does what the CUDA entry point (csrc/cuda/inverted_residual.cu) does, on CPU tensors:
// prepare_inverted_residual (checks, dense input in its format, weights in the accumulation dtype),
// check_block_limits, the output allocated in the input's memory format, nco_for, plan_block with
// the given shared-memory limit (the device's sharedMemPerBlockOptin), the W_p / W_d transposes;
// then the launch: one std::thread per CUDA thread (kThreads), which run the grid's blocks one after
// the other, all threads on the same block, with a barrier between blocks. Before each block the
// dynamic shared memory is filled with 0xff bytes (NaN in every dtype), so a read of an entry
// nobody wrote this block shows; the output starts as NaN, so an element the kernel misses shows;
// the input and every weight are copied into NaN buffers with guard zones (an image and more for
// the input), so a read outside them (a missed bounds check) shows as a NaN output rather than a
// crash; guard zones around the output (a sentinel value) and after the shared memory (0xff
// bytes) catch writes outside them.
#include <torch/extension.h>

#include <cuda_runtime.h>  // cuda_shim/cuda_runtime.h

#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "cuda/inverted_residual_block.cuh"

namespace {

namespace mk = mobilenet_kernels;
namespace irb = mobilenet_kernels::cuda::ir_block;

constexpr int64_t kGuardElems = 1024;   // guard elements before and after every buffer, at least
constexpr size_t kSmemGuard = 256;      // bytes after the dynamic shared memory
constexpr float kSentinel = -30720.0f;  // the output's guard zones (exact in every floating dtype)

// The elements a tensor's sizes and strides span (0 for an empty one).
int64_t span_of(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  int64_t span = 1;
  for (int64_t d = 0; d < t.dim(); ++d) span += (t.size(d) - 1) * t.stride(d);
  return span;
}

// t, same sizes and strides, inside a buffer of `fill` with `guard` elements on both sides.
at::Tensor in_guarded_buffer(const at::Tensor& t, int64_t guard, double fill) {
  for (int64_t d = 0; d < t.dim(); ++d) TORCH_CHECK(t.stride(d) >= 0, "emulation: negative strides");
  at::Tensor buf = at::full({span_of(t) + 2 * guard}, fill, t.options());
  at::Tensor g = buf.as_strided(t.sizes(), t.strides(), guard);
  g.copy_(t);
  return g;
}

at::Tensor guarded_nan(const at::Tensor& t) {
  return in_guarded_buffer(t, t.numel() + kGuardElems, std::numeric_limits<double>::quiet_NaN());
}

template <typename scalar_t, int NCO>
std::vector<int64_t> launch(const mk::InvertedResidualArgs& a, at::Tensor& y, const at::Tensor& wd_t,
                            const at::Tensor& wp_t, int64_t smem_limit) {
  using acc_t = at::opmath_type<scalar_t>;
  const irb::BlockPlan plan = irb::plan_block<scalar_t, NCO>(a, y, smem_limit);
  const size_t smem_bytes = static_cast<size_t>(plan.smem_bytes);
  TORCH_CHECK(plan.smem_bytes > 0 && plan.smem_bytes <= smem_limit, "emulation: plan with ", plan.smem_bytes,
              " bytes of shared memory, limit ", smem_limit);

  // Dynamic shared memory: plan.smem_bytes, 16-byte aligned, then a guard zone.
  const size_t bytes = smem_bytes + kSmemGuard;
  std::unique_ptr<unsigned char[], void (*)(unsigned char*)> smem(
      static_cast<unsigned char*>(::operator new[](bytes, std::align_val_t(16))),
      [](unsigned char* p) { ::operator delete[](p, std::align_val_t(16)); });
  std::memset(smem.get(), 0xff, bytes);
  irb::mk_ir_block_smem = smem.get();

  const int nthreads = irb::kThreads;
  blockDim = dim3(nthreads, 1, 1);
  gridDim = dim3(static_cast<unsigned>(plan.blocks), 1, 1);

  const scalar_t* xp = a.input.data_ptr<scalar_t>();
  const acc_t* we = a.has_expand() ? a.expand_weight.data_ptr<acc_t>() : nullptr;
  const acc_t* be = a.has_expand() ? a.expand_bias.data_ptr<acc_t>() : nullptr;
  const acc_t* wd = wd_t.data_ptr<acc_t>();
  const acc_t* bd = a.dw_bias.data_ptr<acc_t>();
  const acc_t* wp = wp_t.data_ptr<acc_t>();
  const acc_t* bp = a.project_bias.data_ptr<acc_t>();
  scalar_t* yp = y.data_ptr<scalar_t>();
  mk_emu::BlockBarrier sync_bar(nthreads, "__syncthreads");    // the kernel's
  mk_emu::BlockBarrier block_bar(nthreads, "block boundary");  // the launcher's, between blocks
  std::mutex err_mu;
  std::string error;

  auto body = [&](int tid) {
    try {
      threadIdx = dim3(static_cast<unsigned>(tid), 0, 0);
      mk_emu::current_barrier = &sync_bar;
      for (int64_t b = 0; b < plan.blocks; ++b) {
        if (tid == 0) std::memset(smem.get(), 0xff, smem_bytes);  // a fresh block's shared memory: garbage
        block_bar.arrive_and_wait();
        blockIdx = dim3(static_cast<unsigned>(b), 0, 0);
        irb::inverted_residual_eval_kernel<scalar_t, NCO>(xp, we, be, wd, bd, wp, bp, yp, plan.g);
        block_bar.arrive_and_wait();  // the block's shared memory is free again
      }
    } catch (const std::exception& e) {
      {
        std::lock_guard<std::mutex> lock(err_mu);
        if (error.empty()) error = e.what();
      }
      sync_bar.break_all();
      block_bar.break_all();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(nthreads);
  for (int tid = 0; tid < nthreads; ++tid) threads.emplace_back(body, tid);
  for (auto& t : threads) t.join();
  irb::mk_ir_block_smem = nullptr;
  TORCH_CHECK(error.empty(), "emulation: ", error);
  for (size_t i = smem_bytes; i < bytes; ++i) {
    TORCH_CHECK(smem[i] == 0xff, "emulation: the kernel wrote past its ", smem_bytes, " bytes of shared memory");
  }
  const irb::BlockGeom& g = plan.g;
  return {g.TH, g.TW, g.halo_w, g.halo_n, g.tiles_h, g.tiles_w, plan.blocks, plan.smem_bytes, NCO};
}

template <typename scalar_t>
std::vector<int64_t> dispatch_nco(const mk::InvertedResidualArgs& a, at::Tensor& y, const at::Tensor& wd_t,
                                  const at::Tensor& wp_t, int64_t smem_limit) {
  switch (irb::nco_for(a.Cout)) {  // as the launcher dispatches
    case 1:
      return launch<scalar_t, 1>(a, y, wd_t, wp_t, smem_limit);
    case 2:
      return launch<scalar_t, 2>(a, y, wd_t, wp_t, smem_limit);
    case 4:
      return launch<scalar_t, 4>(a, y, wd_t, wp_t, smem_limit);
    default:
      return launch<scalar_t, 8>(a, y, wd_t, wp_t, smem_limit);
  }
}

// inverted_residual_eval by the emulated CUDA kernel, with the op's arguments (CPU tensors) and the
// device's per-block shared-memory limit in bytes. Returns (y, plan) with plan = [TH, TW, halo_w,
// halo_n, tiles_h, tiles_w, blocks, smem_bytes, NCO] (empty when the output is).
std::tuple<at::Tensor, std::vector<int64_t>> run(const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
                                                 const c10::optional<at::Tensor>& expand_bias,
                                                 const at::Tensor& dw_weight, const at::Tensor& dw_bias,
                                                 const at::Tensor& project_weight, const at::Tensor& project_bias,
                                                 int64_t stride, int64_t dilation, const std::string& activation,
                                                 bool residual, int64_t smem_limit) {
  TORCH_CHECK(input.device().is_cpu(), "emulation: expected CPU tensors");
  mk::InvertedResidualArgs a = mk::prepare_inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias,
                                                             project_weight, project_bias, stride, dilation,
                                                             activation, residual);
  irb::check_block_limits(a);
  // The output as the launcher allocates it (its strides), as NaN inside sentinel guard zones of an
  // image and more (a tile's overhang).
  const at::Tensor like = at::empty(a.output_sizes(), input.options().memory_format(a.format));
  if (like.numel() == 0) return {like, {}};
  const int64_t yguard = like.numel() / std::max<int64_t>(a.N, 1) + 2 * kGuardElems;
  at::Tensor y = in_guarded_buffer(like.fill_(0), yguard, kSentinel);
  y.fill_(std::numeric_limits<double>::quiet_NaN());
  at::Tensor ybuf = y.as_strided({span_of(y) + 2 * yguard}, {1}, 0);

  // Every operand in a NaN buffer with guard zones: the input with an image and more on both sides.
  a.input = in_guarded_buffer(a.input, a.input.numel() / std::max<int64_t>(a.N, 1) + 2 * kGuardElems,
                              std::numeric_limits<double>::quiet_NaN());
  if (a.has_expand()) {
    a.expand_weight = guarded_nan(a.expand_weight);
    a.expand_bias = guarded_nan(a.expand_bias);
  }
  a.dw_bias = guarded_nan(a.dw_bias);
  a.project_bias = guarded_nan(a.project_bias);
  const at::Tensor wp_t = guarded_nan(a.project_weight.t().contiguous());  // as the launcher: (Chid, Cout)
  const at::Tensor wd_t = guarded_nan(a.dw_weight.t().contiguous());       // as the launcher: (k * k, Chid)

  std::vector<int64_t> info;
  switch (input.scalar_type()) {
    case at::kFloat:
      info = dispatch_nco<float>(a, y, wd_t, wp_t, smem_limit);
      break;
    case at::kDouble:
      info = dispatch_nco<double>(a, y, wd_t, wp_t, smem_limit);
      break;
    case at::kBFloat16:
      info = dispatch_nco<c10::BFloat16>(a, y, wd_t, wp_t, smem_limit);
      break;
    case at::kHalf:
      info = dispatch_nco<c10::Half>(a, y, wd_t, wp_t, smem_limit);
      break;
    default:
      TORCH_CHECK(false, "input: expected a floating dtype, got ", input.scalar_type());
  }
  const int64_t numel = span_of(y);
  TORCH_CHECK(ybuf.narrow(0, 0, yguard).eq(kSentinel).all().item<bool>() &&
                  ybuf.narrow(0, yguard + numel, yguard).eq(kSentinel).all().item<bool>(),
              "emulation: the kernel wrote outside the output");
  return {y, info};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("run", &run, "inverted_residual_eval_kernel emulated on the host", py::arg("input"),
        py::arg("expand_weight"), py::arg("expand_bias"), py::arg("dw_weight"), py::arg("dw_bias"),
        py::arg("project_weight"), py::arg("project_bias"), py::arg("stride"), py::arg("dilation"),
        py::arg("activation"), py::arg("residual"), py::arg("smem_limit"));
}
