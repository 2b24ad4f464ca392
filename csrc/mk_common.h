// Shared by every mobilenet_kernels kernel (C++ and CUDA): activations, layouts, argument checks.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <string>

namespace mobilenet_kernels {

// One activation set for every op; the integer values are shared with the Triton kernels
// (mobilenet_kernels/activations.py). Keep the two in step.
enum class Act : int {
  kIdentity = 0,
  kRelu = 1,
  kRelu6 = 2,
  kHardswish = 3,
  kHardsigmoid = 4,
  kSigmoid = 5,
  kSilu = 6,
};

inline Act parse_activation(const std::string& name, const char* arg = "activation") {
  if (name == "identity") return Act::kIdentity;
  if (name == "relu") return Act::kRelu;
  if (name == "relu6") return Act::kRelu6;
  if (name == "hardswish") return Act::kHardswish;
  if (name == "hardsigmoid") return Act::kHardsigmoid;
  if (name == "sigmoid") return Act::kSigmoid;
  if (name == "silu") return Act::kSilu;
  TORCH_CHECK_VALUE(false, arg, ": unknown activation '", name,
                    "'; expected one of identity, relu, relu6, hardswish, hardsigmoid, sigmoid, silu");
}

// Runs BODY with a constexpr `kAct` bound to the runtime activation, so the per-element
// activation compiles to straight-line code.
#define MK_DISPATCH_ACTIVATION(ACT, ...)                                                         \
  [&] {                                                                                          \
    switch (ACT) {                                                                               \
      case ::mobilenet_kernels::Act::kIdentity: {                                                \
        constexpr auto kAct = ::mobilenet_kernels::Act::kIdentity;                               \
        return __VA_ARGS__();                                                                    \
      }                                                                                          \
      case ::mobilenet_kernels::Act::kRelu: {                                                    \
        constexpr auto kAct = ::mobilenet_kernels::Act::kRelu;                                   \
        return __VA_ARGS__();                                                                    \
      }                                                                                          \
      case ::mobilenet_kernels::Act::kRelu6: {                                                   \
        constexpr auto kAct = ::mobilenet_kernels::Act::kRelu6;                                  \
        return __VA_ARGS__();                                                                    \
      }                                                                                          \
      case ::mobilenet_kernels::Act::kHardswish: {                                               \
        constexpr auto kAct = ::mobilenet_kernels::Act::kHardswish;                              \
        return __VA_ARGS__();                                                                    \
      }                                                                                          \
      case ::mobilenet_kernels::Act::kHardsigmoid: {                                             \
        constexpr auto kAct = ::mobilenet_kernels::Act::kHardsigmoid;                            \
        return __VA_ARGS__();                                                                    \
      }                                                                                          \
      case ::mobilenet_kernels::Act::kSigmoid: {                                                 \
        constexpr auto kAct = ::mobilenet_kernels::Act::kSigmoid;                                \
        return __VA_ARGS__();                                                                    \
      }                                                                                          \
      case ::mobilenet_kernels::Act::kSilu: {                                                    \
        constexpr auto kAct = ::mobilenet_kernels::Act::kSilu;                                   \
        return __VA_ARGS__();                                                                    \
      }                                                                                          \
    }                                                                                            \
    TORCH_CHECK(false, "unreachable activation");                                               \
  }()

// act(z). Comparisons are written so that NaN propagates as it does in PyTorch.
// The K of shifted sums (sum of x - K): the channel's first value, or 0 when that is +-Inf or NaN,
// where every x - K would be NaN and an Inf mean could not come out. (v - v is 0 only for finite v.)
template <typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T finite_or_zero(T v) {
  return v - v == T(0) ? v : T(0);
}

template <Act A, typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T act_forward(T z) {
  const T zero = T(0), three = T(3), six = T(6), one = T(1);
  if constexpr (A == Act::kIdentity) {
    return z;
  } else if constexpr (A == Act::kRelu) {
    return z < zero ? zero : z;
  } else if constexpr (A == Act::kRelu6) {
    return z < zero ? zero : (z > six ? six : z);
  } else if constexpr (A == Act::kHardswish) {
    const T t = z + three;
    return z * (t < zero ? zero : (t > six ? six : t)) / six;
  } else if constexpr (A == Act::kHardsigmoid) {
    const T t = z + three;
    return (t < zero ? zero : (t > six ? six : t)) / six;
  } else if constexpr (A == Act::kSigmoid) {
    return one / (one + ::exp(-z));
  } else {
    return z / (one + ::exp(-z));
  }
}

// d act / dz, with PyTorch's conventions at the kinks: relu' = 0 at 0; relu6' = 0 at 0 and 6;
// hardswish' = 0 for z <= -3 and 1 for z >= 3; hardsigmoid' = 1/6 (rounded to float) only on (-3, 3).
template <Act A, typename T>
C10_HOST_DEVICE C10_ALWAYS_INLINE T act_derivative(T z) {
  const T zero = T(0), three = T(3), six = T(6), one = T(1);
  if constexpr (A == Act::kIdentity) {
    return one;
  } else if constexpr (A == Act::kRelu) {
    return z > zero ? one : zero;
  } else if constexpr (A == Act::kRelu6) {
    return (z > zero && z < six) ? one : zero;
  } else if constexpr (A == Act::kHardswish) {
    return z <= -three ? zero : (z >= three ? one : z / three + T(0.5));
  } else if constexpr (A == Act::kHardsigmoid) {
    // ATen multiplies by a float 1/6 even for double tensors; so do we, to match it bit for bit.
    return (z > -three && z < three) ? static_cast<T>(1.0f / 6.0f) : zero;
  } else if constexpr (A == Act::kSigmoid) {
    const T s = one / (one + ::exp(-z));
    return s * (one - s);
  } else {
    const T s = one / (one + ::exp(-z));
    return s * (one + z * (one - s));
  }
}

// The memory format an op writes its output in: channels_last when the input is channels_last
// (and not also plain contiguous), else contiguous. The Python fakes use the same rule
// (mobilenet_kernels/ops/_common.py::output_memory_format).
inline at::MemoryFormat output_memory_format(const at::Tensor& t) {
  if (t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

// A view of an (N, C, *) tensor as M = N*HW rows of C channels, dense in one of two layouts.
struct ChannelLayout {
  int64_t N, C, HW;
  bool channels_last;  // element (m, c) at m*C + c; else at (m / HW)*C*HW + c*HW + m % HW
  int64_t rows() const { return N * HW; }
};

inline ChannelLayout channel_layout(const at::Tensor& dense, at::MemoryFormat fmt) {
  ChannelLayout l;
  l.N = dense.size(0);
  l.C = dense.size(1);
  l.HW = dense.numel() / std::max<int64_t>(1, l.N * l.C);
  if (l.N * l.C == 0) l.HW = 0;
  l.channels_last = fmt == at::MemoryFormat::ChannelsLast;
  return l;
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name,
                   ": expected a floating-point tensor (float32, float64, float16 or bfloat16), got ",
                   t.scalar_type());
}

// A backward's grad_output, checked against the forward's output (shape `sizes`, the input's dtype
// and device) and made dense in `format` (the layout the kernels read).
inline at::Tensor dense_grad_output(const at::Tensor& grad_output, at::IntArrayRef sizes, const at::Tensor& input,
                                    at::MemoryFormat format) {
  TORCH_CHECK_VALUE(grad_output.sizes() == sizes, "grad_output: expected shape ", sizes, ", got ",
                    grad_output.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), "grad_output: expected dtype ",
                   input.scalar_type(), ", got ", grad_output.scalar_type());
  TORCH_CHECK_VALUE(grad_output.device() == input.device(), "grad_output: expected device ", input.device(),
                    ", got ", grad_output.device());
  return grad_output.contiguous(format);
}

inline void check_per_channel(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& input) {
  if (!t.has_value()) return;
  check_floating(*t, name);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == input.size(1), name, ": expected shape (", input.size(1),
                    ",) to match input channels, got ", t->sizes());
  TORCH_CHECK_VALUE(t->device() == input.device(), name, ": expected device ", input.device(), ", got ",
                    t->device());
}

}  // namespace mobilenet_kernels
