// batch_norm_act, C++ CPU kernels.
//
// Eval: BatchNorm with running statistics (folded to one per-channel scale/shift) + activation,
//       forward; backward: grad_input plus the per-channel sums that give grad_weight, grad_bias and
//       the running statistics' grads, in one pass over grad_output and input.
// Train: forward = one statistics pass (shifted sums, see batch_stats) + the eval apply pass on the
//        batch statistics; backward = one reduction pass (sum g, sum g * x_hat) + one dx pass.
// Layouts: NCHW (any rank >= 2, spatial dims flattened) and channels_last, both native; other
//          strides are made dense in the input's suggested format first. Output keeps that format.
// dtypes: float64, float32, float16, bfloat16; arithmetic in float (double for float64).
// Reductions: fixed chunking that depends only on the shape, merged in a fixed order in double, so
//             results are bitwise identical for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "batch_norm_act.h"

namespace mobilenet_kernels {
namespace {

constexpr int64_t kGrainElements = 32768;

// Reductions over channels_last rows use chunks fixed by the shape (never by the thread count).
int64_t channels_last_rows_per_chunk(int64_t M) { return std::max<int64_t>(256, (M + 1023) / 1024); }

// Inner loops carry `#pragma omp simd`: it lets the compiler vectorize the per-channel sums (a
// floating-point reduction it would otherwise keep scalar without -ffast-math) and if-convert the
// activations' branches. The lane order is fixed by the compiled code, so results are still
// bitwise identical from run to run and for any thread count.
template <typename acc_t>
struct ScaleShift {
  std::vector<acc_t> rstd, scale, shift;
};

template <typename acc_t>
ScaleShift<acc_t> fold_batch_norm(const BatchNormEvalArgs& a) {
  const int64_t C = a.layout.C;
  ScaleShift<acc_t> s{std::vector<acc_t>(C), std::vector<acc_t>(C), std::vector<acc_t>(C)};
  for (int64_t c = 0; c < C; ++c) {
    bn_scale_shift<acc_t>(a.mean.data_ptr<acc_t>(), a.var.data_ptr<acc_t>(), data_or_null<acc_t>(a.weight),
                          data_or_null<acc_t>(a.bias), static_cast<acc_t>(a.eps), c, s.rstd[c], s.scale[c],
                          s.shift[c]);
  }
  return s;
}

template <typename scalar_t, Act A>
void batch_norm_act_eval_fwd_kernel(const BatchNormEvalArgs& a, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const ChannelLayout& L = a.layout;
  const auto ss = fold_batch_norm<acc_t>(a);
  const acc_t* scale = ss.scale.data();
  const acc_t* shift = ss.shift.data();
  const scalar_t* x = a.input.data_ptr<scalar_t>();
  scalar_t* y = out.data_ptr<scalar_t>();
  const int64_t C = L.C, HW = L.HW;

  if (L.channels_last) {
    at::parallel_for(0, L.rows(), std::max<int64_t>(1, kGrainElements / std::max<int64_t>(C, 1)),
                     [&](int64_t begin, int64_t end) {
                       const acc_t* __restrict__ sc = scale;
                       const acc_t* __restrict__ sh = shift;
                       for (int64_t m = begin; m < end; ++m) {
                         const scalar_t* __restrict__ xr = x + m * C;
                         scalar_t* __restrict__ yr = y + m * C;
#pragma omp simd
                         for (int64_t c = 0; c < C; ++c) {
                           yr[c] = static_cast<scalar_t>(act_forward<A>(static_cast<acc_t>(xr[c]) * sc[c] + sh[c]));
                         }
                       }
                     });
  } else {
    at::parallel_for(0, L.N * C, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(HW, 1)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t plane = begin; plane < end; ++plane) {
                         const acc_t s = scale[plane % C], t = shift[plane % C];
                         const scalar_t* __restrict__ xp = x + plane * HW;
                         scalar_t* __restrict__ yp = y + plane * HW;
#pragma omp simd
                         for (int64_t i = 0; i < HW; ++i) {
                           yp[i] = static_cast<scalar_t>(act_forward<A>(static_cast<acc_t>(xp[i]) * s + t));
                         }
                       }
                     });
  }
}

// g = grad_out * act'(z); sum_gxhat[c] = sum g * x_hat; sum_g[c] = sum g; and, in eval mode
// (kWriteGradInput), grad_in = g * scale in the same pass.
template <typename scalar_t, Act A, bool kWriteGradInput>
void batch_norm_act_bwd_reduce_kernel(const BatchNormEvalArgs& a, const at::Tensor& grad_out, at::Tensor& grad_in,
                                    at::Tensor& sum_gxhat, at::Tensor& sum_g) {
  using acc_t = at::opmath_type<scalar_t>;
  const ChannelLayout& L = a.layout;
  const auto ss = fold_batch_norm<acc_t>(a);
  const acc_t* mean = a.mean.data_ptr<acc_t>();
  const scalar_t* x = a.input.data_ptr<scalar_t>();
  const scalar_t* gy = grad_out.data_ptr<scalar_t>();
  scalar_t* gx = kWriteGradInput ? grad_in.data_ptr<scalar_t>() : nullptr;
  acc_t* out_gxhat = sum_gxhat.data_ptr<acc_t>();
  acc_t* out_g = sum_g.data_ptr<acc_t>();
  const int64_t C = L.C, HW = L.HW;

  if (!L.channels_last) {
    // One task per channel: it walks its N planes in order, so the sums are fixed-order.
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const acc_t s = ss.scale[c], t = ss.shift[c], mu = mean[c], rstd = ss.rstd[c];
        double total_gxhat = 0, total_g = 0;
        for (int64_t n = 0; n < L.N; ++n) {
          const int64_t base = (n * C + c) * HW;
          const scalar_t* __restrict__ xp = x + base;
          const scalar_t* __restrict__ gyp = gy + base;
          scalar_t* __restrict__ gxp = kWriteGradInput ? gx + base : nullptr;
          acc_t part_gxhat = 0, part_g = 0;
#pragma omp simd reduction(+ : part_gxhat, part_g)
          for (int64_t i = 0; i < HW; ++i) {
            const acc_t xv = static_cast<acc_t>(xp[i]);
            const acc_t g = static_cast<acc_t>(gyp[i]) * act_derivative<A>(xv * s + t);
            if constexpr (kWriteGradInput) gxp[i] = static_cast<scalar_t>(g * s);
            part_g += g;
            part_gxhat += g * (xv - mu) * rstd;
          }
          total_gxhat += part_gxhat;
          total_g += part_g;
        }
        out_gxhat[c] = static_cast<acc_t>(total_gxhat);
        out_g[c] = static_cast<acc_t>(total_g);
      }
    });
    return;
  }

  // channels_last: rows are cut into chunks by shape alone; each chunk writes its own partial row.
  const int64_t M = L.rows();
  const int64_t rows_per_chunk = channels_last_rows_per_chunk(M);
  const int64_t chunks = (M + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<acc_t> partial(static_cast<size_t>(chunks * 2 * C), acc_t(0));
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      acc_t* __restrict__ p_gxhat = partial.data() + k * 2 * C;
      acc_t* __restrict__ p_g = p_gxhat + C;
      const acc_t* __restrict__ sc = ss.scale.data();
      const acc_t* __restrict__ sh = ss.shift.data();
      const acc_t* __restrict__ rs = ss.rstd.data();
      const acc_t* __restrict__ mu = mean;
      const int64_t m_end = std::min(M, (k + 1) * rows_per_chunk);
      for (int64_t m = k * rows_per_chunk; m < m_end; ++m) {
        const scalar_t* __restrict__ xr = x + m * C;
        const scalar_t* __restrict__ gyr = gy + m * C;
        scalar_t* __restrict__ gxr = kWriteGradInput ? gx + m * C : nullptr;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const acc_t xv = static_cast<acc_t>(xr[c]);
          const acc_t g = static_cast<acc_t>(gyr[c]) * act_derivative<A>(xv * sc[c] + sh[c]);
          if constexpr (kWriteGradInput) gxr[c] = static_cast<scalar_t>(g * sc[c]);
          p_g[c] += g;
          p_gxhat[c] += g * (xv - mu[c]) * rs[c];
        }
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double total_gxhat = 0, total_g = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      total_gxhat += partial[k * 2 * C + c];
      total_g += partial[k * 2 * C + C + c];
    }
    out_gxhat[c] = static_cast<acc_t>(total_gxhat);
    out_g[c] = static_cast<acc_t>(total_g);
  }
}

// Batch mean and biased variance per channel. Shifted sums: every term is x - K_c with K_c the
// channel's first element (0 when that is not finite, so an Inf there does not make every term NaN),
// so sum (x-K)^2 - (sum (x-K))^2 / M loses no digits to a large mean (a channel with mean 1e4 and
// std 1 keeps its variance); chunk sums in acc_t, merged in double. A NaN variance stays NaN.
template <typename scalar_t>
void batch_stats_kernel(const at::Tensor& x_dense, const ChannelLayout& L, at::Tensor& mean, at::Tensor& var) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x = x_dense.data_ptr<scalar_t>();
  acc_t* out_mean = mean.data_ptr<acc_t>();
  acc_t* out_var = var.data_ptr<acc_t>();
  const int64_t C = L.C, HW = L.HW, M = L.rows();
  auto finish = [&](int64_t c, double K, double s1, double s2) {
    out_mean[c] = static_cast<acc_t>(K + s1 / M);
    const double v = (s2 - s1 * s1 / M) / M;
    out_var[c] = static_cast<acc_t>(v < 0 ? 0.0 : v);
  };
  if (!L.channels_last) {
    at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const acc_t K = finite_or_zero(static_cast<acc_t>(x[c * HW]));
        double s1 = 0, s2 = 0;
        for (int64_t n = 0; n < L.N; ++n) {
          const scalar_t* __restrict__ xp = x + (n * C + c) * HW;
          acc_t p1 = 0, p2 = 0;
#pragma omp simd reduction(+ : p1, p2)
          for (int64_t i = 0; i < HW; ++i) {
            const acc_t d = static_cast<acc_t>(xp[i]) - K;
            p1 += d;
            p2 += d * d;
          }
          s1 += p1;
          s2 += p2;
        }
        finish(c, K, s1, s2);
      }
    });
    return;
  }
  const int64_t rows_per_chunk = channels_last_rows_per_chunk(M);
  const int64_t chunks = (M + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<acc_t> partial(static_cast<size_t>(chunks * 2 * C), acc_t(0));
  std::vector<acc_t> first(static_cast<size_t>(C));  // K_c: row 0
  for (int64_t c = 0; c < C; ++c) first[c] = finite_or_zero(static_cast<acc_t>(x[c]));
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      acc_t* __restrict__ p1 = partial.data() + k * 2 * C;
      acc_t* __restrict__ p2 = p1 + C;
      const acc_t* __restrict__ shift = first.data();
      const int64_t m_end = std::min(M, (k + 1) * rows_per_chunk);
      for (int64_t m = k * rows_per_chunk; m < m_end; ++m) {
        const scalar_t* __restrict__ xr = x + m * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const acc_t d = static_cast<acc_t>(xr[c]) - shift[c];
          p1[c] += d;
          p2[c] += d * d;
        }
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double s1 = 0, s2 = 0;
    for (int64_t k = 0; k < chunks; ++k) {
      s1 += partial[k * 2 * C + c];
      s2 += partial[k * 2 * C + C + c];
    }
    finish(c, first[c], s1, s2);
  }
}

// Training backward, pass 2: grad_in = w * rstd * (g - sum_g / M - x_hat * sum_gxhat / M).
template <typename scalar_t, Act A>
void batch_norm_act_train_dx_kernel(const BatchNormEvalArgs& a, const at::Tensor& grad_out, at::Tensor& grad_in,
                                    const at::Tensor& sum_gxhat, const at::Tensor& sum_g) {
  using acc_t = at::opmath_type<scalar_t>;
  const ChannelLayout& L = a.layout;
  const auto ss = fold_batch_norm<acc_t>(a);
  const int64_t C = L.C, HW = L.HW;
  const acc_t inv_m = acc_t(1) / static_cast<acc_t>(L.rows());
  std::vector<acc_t> mean_g(C), mean_gxhat(C);
  for (int64_t c = 0; c < C; ++c) {
    mean_g[c] = sum_g.data_ptr<acc_t>()[c] * inv_m;
    mean_gxhat[c] = sum_gxhat.data_ptr<acc_t>()[c] * inv_m;
  }
  const acc_t* __restrict__ mean = a.mean.data_ptr<acc_t>();
  const acc_t* __restrict__ sc = ss.scale.data();
  const acc_t* __restrict__ sh = ss.shift.data();
  const acc_t* __restrict__ rs = ss.rstd.data();
  const acc_t* __restrict__ mg = mean_g.data();
  const acc_t* __restrict__ mgx = mean_gxhat.data();
  const scalar_t* __restrict__ x = a.input.data_ptr<scalar_t>();
  const scalar_t* __restrict__ gy = grad_out.data_ptr<scalar_t>();
  scalar_t* __restrict__ gx = grad_in.data_ptr<scalar_t>();
  auto dx = [&](int64_t i, int64_t c) {
    const acc_t xv = static_cast<acc_t>(x[i]);
    const acc_t g = static_cast<acc_t>(gy[i]) * act_derivative<A>(xv * sc[c] + sh[c]);
    const acc_t x_hat = (xv - mean[c]) * rs[c];
    gx[i] = static_cast<scalar_t>(sc[c] * (g - mg[c] - x_hat * mgx[c]));
  };
  if (L.channels_last) {
    at::parallel_for(0, L.rows(), std::max<int64_t>(1, kGrainElements / std::max<int64_t>(C, 1)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t m = begin; m < end; ++m) {
#pragma omp simd
                         for (int64_t c = 0; c < C; ++c) dx(m * C + c, c);
                       }
                     });
  } else {
    at::parallel_for(0, L.N * C, std::max<int64_t>(1, kGrainElements / std::max<int64_t>(HW, 1)),
                     [&](int64_t begin, int64_t end) {
                       for (int64_t plane = begin; plane < end; ++plane) {
                         const int64_t c = plane % C;
#pragma omp simd
                         for (int64_t i = 0; i < HW; ++i) dx(plane * HW + i, c);
                       }
                     });
  }
}

at::Tensor batch_norm_act_eval_cpu(const at::Tensor& input, const at::Tensor& running_mean,
                                   const at::Tensor& running_var, const c10::optional<at::Tensor>& weight,
                                   const c10::optional<at::Tensor>& bias, double eps, c10::string_view activation) {
  const auto a = prepare_batch_norm_eval(input, running_mean, running_var, weight, bias, eps, std::string(activation));
  at::Tensor out = at::empty(input.sizes(), input.options().memory_format(a.format));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "batch_norm_act_eval_cpu", [&] {
    MK_DISPATCH_ACTIVATION(a.act, [&] { batch_norm_act_eval_fwd_kernel<scalar_t, kAct>(a, out); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_eval_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& running_mean,
    const at::Tensor& running_var, const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
    double eps, c10::string_view activation) {
  const auto a = prepare_batch_norm_eval(input, running_mean, running_var, weight, bias, eps, std::string(activation));
  BackwardBuffers buf = prepare_backward(grad_output, input, a);
  const at::Tensor& gy = buf.grad_out;
  at::Tensor &grad_in = buf.grad_in, &sum_gxhat = buf.sum_gxhat, &sum_g = buf.sum_g;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "batch_norm_act_eval_backward_cpu", [&] {
    MK_DISPATCH_ACTIVATION(a.act, [&] {
      batch_norm_act_bwd_reduce_kernel<scalar_t, kAct, true>(a, gy, grad_in, sum_gxhat, sum_g);
    });
  });
  return {grad_in, sum_gxhat, sum_g};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_train_cpu(const at::Tensor& input,
                                                                        const c10::optional<at::Tensor>& weight,
                                                                        const c10::optional<at::Tensor>& bias,
                                                                        double eps, c10::string_view activation) {
  check_batch_norm_train(input, weight, bias, eps, std::string(activation));
  const auto fmt = output_memory_format(input);
  const at::Tensor x = input.contiguous(fmt);
  const auto acc_opts = input.options().dtype(acc_type_for(input.scalar_type()));
  at::Tensor mean = at::zeros({input.size(1)}, acc_opts);
  at::Tensor var = at::zeros({input.size(1)}, acc_opts);
  if (input.numel() == 0) return {at::empty(input.sizes(), input.options().memory_format(fmt)), mean, var};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "batch_norm_stats_cpu", [&] {
    batch_stats_kernel<scalar_t>(x, channel_layout(x, fmt), mean, var);
  });
  return {batch_norm_act_eval_cpu(x, mean, var, weight, bias, eps, activation), mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_act_train_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mean, const at::Tensor& var, double eps,
    c10::string_view activation) {
  const auto a = prepare_batch_norm_eval(input, mean, var, weight, bias, eps, std::string(activation));
  BackwardBuffers buf = prepare_backward(grad_output, input, a);
  const at::Tensor& gy = buf.grad_out;
  at::Tensor &grad_in = buf.grad_in, &sum_gxhat = buf.sum_gxhat, &sum_g = buf.sum_g;
  if (input.numel() == 0) return {grad_in, sum_gxhat, sum_g};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "batch_norm_act_train_backward_cpu", [&] {
    MK_DISPATCH_ACTIVATION(a.act, [&] {
      batch_norm_act_bwd_reduce_kernel<scalar_t, kAct, false>(a, gy, grad_in, sum_gxhat, sum_g);
      batch_norm_act_train_dx_kernel<scalar_t, kAct>(a, gy, grad_in, sum_gxhat, sum_g);
    });
  });
  return {grad_in, sum_gxhat, sum_g};
}

}  // namespace

TORCH_LIBRARY_IMPL(mobilenet_kernels, CPU, m) {
  m.impl("batch_norm_act_eval", &batch_norm_act_eval_cpu);
  m.impl("batch_norm_act_eval_backward", &batch_norm_act_eval_backward_cpu);
  m.impl("batch_norm_act_train", &batch_norm_act_train_cpu);
  m.impl("batch_norm_act_train_backward", &batch_norm_act_train_backward_cpu);
}

}  // namespace mobilenet_kernels
