// Autograd for the kernel ops, in C++: one torch::autograd::Function per op, registered to the
// Autograd dispatch key for the C++-backed op and for its `_triton` twin (the template argument
// kTriton picks the twin's ops), so an eager call runs no Python between the op call and the
// kernel, whichever the backend; also the two training composites conv + BatchNorm + activation
// (kernel and autograd). (A Python register_autograd formula costs tens of microseconds per call,
// grad or no grad, which dominated small layers and batch-1 inference.)
//
// Each forward runs the op below autograd (it redispatches to the CPU/CUDA kernel, or to the Python
// fake under torch.compile), saves what its backward needs, and marks statistics outputs
// non-differentiable; each backward calls the matching *_backward op and returns the gradients of
// the inputs that need one. The Functions with such outputs turn off set_materialize_grads: by
// default autograd hands the backward a zero tensor for every output without a gradient, which for
// the training composites' conv_out is a fill of the conv output's size per layer and step; their
// backward gets undefined tensors instead and, when the main output's gradient is undefined too
// (it did not reach the loss), returns none.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

#include "depthwise_conv2d.h"  // check_depthwise, check_stats_count
#include "mk_common.h"
#include "pointwise_conv2d.h"  // check_pointwise, check_pointwise_stats_count

namespace mobilenet_kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensor = at::Tensor;
using OptTensor = c10::optional<at::Tensor>;

// The op mobilenet_kernels::`name` of the C++-backed ops, or with kTriton its `_triton` twin. The
// twins share the Functions below, each over its own ops: the same formulas, and no Python per call
// for either (the twins' kernels: mobilenet_kernels/ops/*.py and triton/*.py).
template <typename Sig, bool kTriton>
c10::TypedOperatorHandle<Sig> find_twin(const char* name) {
  const std::string qualified = std::string("mobilenet_kernels::") + name + (kTriton ? "_triton" : "");
  return c10::Dispatcher::singleton().findSchemaOrThrow(qualified.c_str(), "").typed<Sig>();
}

OptTensor optional(const Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }

Tensor defined_or_empty(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

// ctx->needs_input_grad(i) numbers only the tensors that were passed: an absent optional has no
// edge. The gradient of the optional at argument `arg`, the k-th tensor argument counting absent
// ones (k = arg here: every argument before the optionals is a tensor), is needed when its edge,
// k minus the absent optionals before it, is.
bool optional_needs_grad(AutogradContext* ctx, const Tensor& t, int64_t arg, int64_t absent_before) {
  return t.defined() && ctx->needs_input_grad(arg - absent_before);
}

// d act / dz with the kernels' conventions at the kinks (mobilenet_kernels.activations.activation_derivative).
Tensor activation_derivative(const Tensor& z, Act act) {
  switch (act) {
    case Act::kIdentity:
      return at::ones_like(z);
    case Act::kRelu:
      return (z > 0).to(z.scalar_type());
    case Act::kRelu6:
      return ((z > 0) & (z < 6)).to(z.scalar_type());
    case Act::kHardswish:
      return at::where(z <= -3, at::zeros_like(z), at::where(z >= 3, at::ones_like(z), z / 3 + 0.5));
    case Act::kHardsigmoid:  // ATen's float 1/6, even for double
      return at::where((z > -3) & (z < 3), at::full_like(z, static_cast<double>(1.0f / 6.0f)), at::zeros_like(z));
    case Act::kSigmoid: {
      const Tensor s = at::sigmoid(z);
      return s * (1 - s);
    }
    case Act::kSilu: {
      const Tensor s = at::sigmoid(z);
      return s * (1 + z * (1 - s));
    }
  }
  TORCH_CHECK(false, "unreachable activation");
}

// ----------------------------------------------------------------------------- batch_norm_act

using BnEvalSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, double,
                         c10::string_view);
using BnEvalBackwardSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                             const Tensor&, const OptTensor&, const OptTensor&,
                                                             double, c10::string_view);

template <bool kTriton>
struct BatchNormActEval : public torch::autograd::Function<BatchNormActEval<kTriton>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& running_mean,
                        const Tensor& running_var, const OptTensor& weight, const OptTensor& bias, double eps,
                        const std::string& activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = find_twin<BnEvalSig, kTriton>("batch_norm_act_eval");
    Tensor out = op.call(input, running_mean, running_var, weight, bias, eps, activation);
    ctx->save_for_backward({input, running_mean, running_var, defined_or_empty(weight), defined_or_empty(bias)});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["activation"] = activation;
    return out;
  }

  // y = act(w * x_hat + b), x_hat = (x - mean) * rstd, rstd = (var + eps)^-1/2.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_twin<BnEvalBackwardSig, kTriton>("batch_norm_act_eval_backward");
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &mean = saved[1], &var = saved[2], &weight = saved[3], &bias = saved[4];
    const double eps = ctx->saved_data["eps"].toDouble();
    const auto [grad_input, sum_g_xhat, sum_g] =
        op.call(grads[0], input, mean, var, optional(weight), optional(bias), eps,
                ctx->saved_data["activation"].toStringRef());
    const Tensor rstd = (var.to(sum_g.scalar_type()) + eps).rsqrt();
    const Tensor w_rstd = weight.defined() ? weight.to(sum_g.scalar_type()) * rstd : rstd;
    return {
        ctx->needs_input_grad(0) ? grad_input : Tensor(),
        ctx->needs_input_grad(1) ? (-sum_g * w_rstd).to(mean.scalar_type()) : Tensor(),
        ctx->needs_input_grad(2) ? (-0.5 * sum_g_xhat * w_rstd * rstd).to(var.scalar_type()) : Tensor(),
        optional_needs_grad(ctx, weight, 3, 0) ? sum_g_xhat.to(weight.scalar_type()) : Tensor(),
        optional_needs_grad(ctx, bias, 4, !weight.defined()) ? sum_g.to(bias.scalar_type()) : Tensor(),
        Tensor(),
        Tensor(),
    };
  }
};

using BnTrainSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const OptTensor&, const OptTensor&, double,
                                                      c10::string_view);
using BnTrainBackwardSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const OptTensor&,
                                                              const OptTensor&, const Tensor&, const Tensor&, double,
                                                              c10::string_view);

template <bool kTriton>
struct BatchNormActTrain : public torch::autograd::Function<BatchNormActTrain<kTriton>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const OptTensor& weight,
                               const OptTensor& bias, double eps, const std::string& activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = find_twin<BnTrainSig, kTriton>("batch_norm_act_train");
    auto [out, mean, var] = op.call(input, weight, bias, eps, activation);
    ctx->mark_non_differentiable({mean, var});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({input, defined_or_empty(weight), defined_or_empty(bias), mean, var});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["activation"] = activation;
    return {out, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_twin<BnTrainBackwardSig, kTriton>("batch_norm_act_train_backward");
    if (!grads[0].defined()) return variable_list(5);
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &weight = saved[1], &bias = saved[2], &mean = saved[3], &var = saved[4];
    const auto [grad_input, sum_g_xhat, sum_g] =
        op.call(grads[0], input, optional(weight), optional(bias), mean, var, ctx->saved_data["eps"].toDouble(),
                ctx->saved_data["activation"].toStringRef());
    return {
        ctx->needs_input_grad(0) ? grad_input : Tensor(),
        optional_needs_grad(ctx, weight, 1, 0) ? sum_g_xhat.to(weight.scalar_type()) : Tensor(),
        optional_needs_grad(ctx, bias, 2, !weight.defined()) ? sum_g.to(bias.scalar_type()) : Tensor(),
        Tensor(),
        Tensor(),
    };
  }
};

// ----------------------------------------------------------------------------- depthwise_conv2d

using DwSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, at::IntArrayRef, at::IntArrayRef,
                     at::IntArrayRef, c10::string_view);
using DwBackwardSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                                         std::array<bool, 3>);
using DwStatsSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, at::IntArrayRef,
                                                      at::IntArrayRef, at::IntArrayRef);

using ConvBnActOut = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using DwTrainBackwardSig = ConvBnActOut(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                        const OptTensor&, const Tensor&, const Tensor&, const Tensor&, at::IntArrayRef,
                                        at::IntArrayRef, at::IntArrayRef, double, c10::string_view,
                                        std::array<bool, 2>);

// A depthwise conv's geometry, saved in and loaded from ctx, and the ops that take it: the conv's
// backward (the Functions below) and, as the conv of the training composite (ConvBnActTrain,
// further down), its checks, statistics op and the composite's backward op.
template <bool kTriton>
struct DepthwiseConvT {
  static constexpr bool kIsTriton = kTriton;
  std::vector<int64_t> stride, padding, dilation;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
  }
  static DepthwiseConvT load(AutogradContext* ctx) {
    return {ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
            ctx->saved_data["dilation"].toIntVector()};
  }

  std::vector<int64_t> check(const Tensor& input, const Tensor& conv_weight, const OptTensor& weight,
                             const OptTensor& bias, const std::string& activation) const {
    const DepthwiseArgs a = check_depthwise(input, conv_weight, c10::nullopt, stride, padding, dilation, activation);
    check_stats_count(a);
    check_per_channel(weight, "weight", input);
    check_per_channel(bias, "bias", input);
    return a.output_sizes();
  }
  std::tuple<Tensor, Tensor, Tensor> stats(const Tensor& input, const Tensor& conv_weight) const {
    static const auto op = find_twin<DwStatsSig, kTriton>("depthwise_conv2d_stats");
    return op.call(input, conv_weight, stride, padding, dilation);
  }
  std::tuple<Tensor, Tensor, Tensor> backward(const Tensor& grad, const Tensor& input, const Tensor& conv_weight,
                                              std::array<bool, 3> mask) const {
    static const auto op = find_twin<DwBackwardSig, kTriton>("depthwise_conv2d_backward");
    return op.call(grad.contiguous(output_memory_format(input)), input, conv_weight, stride, padding, dilation, mask);
  }
  ConvBnActOut train_backward(const Tensor& grad, const Tensor& input, const Tensor& conv_weight,
                              const OptTensor& weight, const OptTensor& bias, const Tensor& conv_out,
                              const Tensor& mean, const Tensor& var, double eps, const std::string& activation,
                              std::array<bool, 2> mask) const {
    static const auto op = find_twin<DwTrainBackwardSig, kTriton>("depthwise_conv2d_bn_act_train_backward");
    return op.call(grad, input, conv_weight, weight, bias, conv_out, mean, var, stride, padding, dilation, eps,
                   activation, mask);
  }
};

template <bool kTriton>
DepthwiseConvT<kTriton> depthwise_conv(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  return {stride.vec(), padding.vec(), dilation.vec()};
}

template <bool kTriton>
struct DepthwiseConv2d : public torch::autograd::Function<DepthwiseConv2d<kTriton>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight, const OptTensor& bias,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        const std::string& activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = find_twin<DwSig, kTriton>("depthwise_conv2d");
    Tensor out = op.call(input, weight, bias, stride, padding, dilation, activation);
    // act' from the output where it tells (relu: y > 0; relu6: 0 < y < 6, exactly where z is);
    // else the backward recomputes the pre-activation.
    const Act act = parse_activation(activation);
    const bool from_output = act == Act::kRelu || act == Act::kRelu6;
    ctx->save_for_backward({input, weight, defined_or_empty(bias), from_output ? out : Tensor()});
    depthwise_conv<kTriton>(stride, padding, dilation).save(ctx);
    ctx->saved_data["activation"] = activation;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &weight = saved[1], &bias = saved[2], &out = saved[3];
    const Act act = parse_activation(ctx->saved_data["activation"].toStringRef());
    const auto conv = DepthwiseConvT<kTriton>::load(ctx);
    Tensor g = grads[0];
    if (act == Act::kRelu) {
      g = g * (out > 0);
    } else if (act == Act::kRelu6) {
      g = g * ((out > 0) & (out < 6));
    } else if (act != Act::kIdentity) {  // training through a frozen, folded BatchNorm
      static const auto op = find_twin<DwSig, kTriton>("depthwise_conv2d");
      const Tensor z = op.call(input, weight, optional(bias), conv.stride, conv.padding, conv.dilation, "identity");
      const auto acc = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      g = (g.to(acc) * activation_derivative(z.to(acc), act)).to(z.scalar_type());
    }
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   optional_needs_grad(ctx, bias, 2, 0)};
    const auto [grad_input, grad_weight, grad_bias] = conv.backward(g, input, weight, mask);
    return {mask[0] ? grad_input : Tensor(), mask[1] ? grad_weight : Tensor(), mask[2] ? grad_bias : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// The statistics are non-differentiable outputs (they feed BatchNorm, whose own backward accounts
// for them): only the conv output carries a gradient.
template <bool kTriton>
struct DepthwiseConv2dStats : public torch::autograd::Function<DepthwiseConv2dStats<kTriton>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = find_twin<DwStatsSig, kTriton>("depthwise_conv2d_stats");
    auto [out, mean, var] = op.call(input, weight, stride, padding, dilation);
    ctx->mark_non_differentiable({mean, var});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({input, weight});
    depthwise_conv<kTriton>(stride, padding, dilation).save(ctx);
    return {out, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(5);
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), false};
    const auto conv = DepthwiseConvT<kTriton>::load(ctx);
    const auto [grad_input, grad_weight, unused] = conv.backward(grads[0], saved[0], saved[1], mask);
    return {mask[0] ? grad_input : Tensor(), mask[1] ? grad_weight : Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// ----------------------------------------------------------------------------- pointwise_conv2d

using PwSig = Tensor(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, c10::string_view);
using PwBackwardSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                         std::array<bool, 3>);
using PwStatsSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&);

template <bool kTriton>
std::tuple<Tensor, Tensor, Tensor> call_pointwise_backward(const Tensor& grad_output, const Tensor& input,
                                                           const Tensor& weight, std::array<bool, 3> mask) {
  static const auto op = find_twin<PwBackwardSig, kTriton>("pointwise_conv2d_backward");
  return op.call(grad_output.contiguous(output_memory_format(input)), input, weight, mask);
}

// y = act(conv1x1(x, w) + b) + residual. Arguments: input 0, weight 1, bias 2, residual 3 (both
// optional), activation 4.
template <bool kTriton>
struct PointwiseConv2d : public torch::autograd::Function<PointwiseConv2d<kTriton>> {
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight, const OptTensor& bias,
                        const OptTensor& residual, const std::string& activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = find_twin<PwSig, kTriton>("pointwise_conv2d");
    Tensor out = op.call(input, weight, bias, residual, activation);
    // act' from the output where it tells (relu: y > 0; relu6: 0 < y < 6, exactly where z is), which
    // only holds without a residual (y = act(z) + r); else the backward recomputes the pre-activation.
    const Act act = parse_activation(activation);
    const bool has_residual = residual.has_value();
    const bool from_output = (act == Act::kRelu || act == Act::kRelu6) && !has_residual;
    ctx->save_for_backward({input, weight, defined_or_empty(bias), from_output ? out : Tensor()});
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["has_residual"] = has_residual;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &weight = saved[1], &bias = saved[2], &out = saved[3];
    const Act act = parse_activation(ctx->saved_data["activation"].toStringRef());
    const bool has_residual = ctx->saved_data["has_residual"].toBool();
    const bool residual_needs_grad = has_residual && ctx->needs_input_grad(3 - (bias.defined() ? 0 : 1));
    Tensor g = grads[0];
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   optional_needs_grad(ctx, bias, 2, 0)};
    Tensor grad_input, grad_weight, grad_bias;
    if (mask[0] || mask[1] || mask[2]) {
      Tensor ga = g;
      if (act == Act::kRelu && out.defined()) {
        ga = g * (out > 0);
      } else if (act == Act::kRelu6 && out.defined()) {
        ga = g * ((out > 0) & (out < 6));
      } else if (act != Act::kIdentity) {  // a residual, or an activation the output does not tell
        static const auto op = find_twin<PwSig, kTriton>("pointwise_conv2d");
        const Tensor z = op.call(input, weight, optional(bias), c10::nullopt, "identity");
        const auto acc = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
        ga = (g.to(acc) * activation_derivative(z.to(acc), act)).to(z.scalar_type());
      }
      std::tie(grad_input, grad_weight, grad_bias) = call_pointwise_backward<kTriton>(ga, input, weight, mask);
    }
    return {mask[0] ? grad_input : Tensor(), mask[1] ? grad_weight : Tensor(), mask[2] ? grad_bias : Tensor(),
            residual_needs_grad ? g : Tensor(), Tensor()};
  }
};

// The statistics are non-differentiable outputs (they feed BatchNorm, whose own backward accounts
// for them): only the conv output carries a gradient.
template <bool kTriton>
struct PointwiseConv2dStats : public torch::autograd::Function<PointwiseConv2dStats<kTriton>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = find_twin<PwStatsSig, kTriton>("pointwise_conv2d_stats");
    auto [out, mean, var] = op.call(input, weight);
    ctx->mark_non_differentiable({mean, var});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({input, weight});
    return {out, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1), false};
    if ((!mask[0] && !mask[1]) || !grads[0].defined()) return {Tensor(), Tensor()};
    const auto [grad_input, grad_weight, unused] = call_pointwise_backward<kTriton>(grads[0], saved[0], saved[1], mask);
    return {mask[0] ? grad_input : Tensor(), mask[1] ? grad_weight : Tensor()};
  }
};

// ----------------------------------------------------------------------------- squeeze_excite

using SeSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                         c10::string_view, c10::string_view);
using SeBackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    c10::string_view, c10::string_view);

// pooled (the input's per-channel mean) is a non-differentiable output saved for the backward,
// which recomputes the excite step from it.
template <bool kTriton>
struct SqueezeExcite : public torch::autograd::Function<SqueezeExcite<kTriton>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& fc1_weight,
                               const Tensor& fc1_bias, const Tensor& fc2_weight, const Tensor& fc2_bias,
                               const std::string& activation, const std::string& scale_activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = find_twin<SeSig, kTriton>("squeeze_excite");
    auto [out, pooled] = op.call(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation);
    ctx->mark_non_differentiable({pooled});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({input, pooled, fc1_weight, fc1_bias, fc2_weight, fc2_bias});
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["scale_activation"] = scale_activation;
    return {out, pooled};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_twin<SeBackwardSig, kTriton>("squeeze_excite_backward");
    if (!grads[0].defined()) return variable_list(7);
    const auto s = ctx->get_saved_variables();
    const auto r = op.call(grads[0].contiguous(output_memory_format(s[0])), s[0], s[1], s[2], s[3], s[4], s[5],
                           ctx->saved_data["activation"].toStringRef(),
                           ctx->saved_data["scale_activation"].toStringRef());
    const std::array<Tensor, 5> all{std::get<0>(r), std::get<1>(r), std::get<2>(r), std::get<3>(r), std::get<4>(r)};
    variable_list out(7);
    for (size_t i = 0; i < all.size(); ++i) {
      if (ctx->needs_input_grad(i)) out[i] = all[i];
    }
    return out;
  }
};

// ----------------------------------------------------------------------------- registration

template <bool kTriton>
Tensor batch_norm_act_eval_autograd(const Tensor& input, const Tensor& running_mean, const Tensor& running_var,
                                    const OptTensor& weight, const OptTensor& bias, double eps,
                                    c10::string_view activation) {
  return BatchNormActEval<kTriton>::apply(input, running_mean, running_var, weight, bias, eps, std::string(activation));
}

template <bool kTriton>
std::tuple<Tensor, Tensor, Tensor> batch_norm_act_train_autograd(const Tensor& input, const OptTensor& weight,
                                                                 const OptTensor& bias, double eps,
                                                                 c10::string_view activation) {
  const auto r = BatchNormActTrain<kTriton>::apply(input, weight, bias, eps, std::string(activation));
  return {r[0], r[1], r[2]};
}

template <bool kTriton>
Tensor depthwise_conv2d_autograd(const Tensor& input, const Tensor& weight, const OptTensor& bias,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 c10::string_view activation) {
  return DepthwiseConv2d<kTriton>::apply(input, weight, bias, stride, padding, dilation, std::string(activation));
}

template <bool kTriton>
std::tuple<Tensor, Tensor, Tensor> depthwise_conv2d_stats_autograd(const Tensor& input, const Tensor& weight,
                                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                                   at::IntArrayRef dilation) {
  const auto r = DepthwiseConv2dStats<kTriton>::apply(input, weight, stride, padding, dilation);
  return {r[0], r[1], r[2]};
}

template <bool kTriton>
Tensor pointwise_conv2d_autograd(const Tensor& input, const Tensor& weight, const OptTensor& bias,
                                 const OptTensor& residual, c10::string_view activation) {
  return PointwiseConv2d<kTriton>::apply(input, weight, bias, residual, std::string(activation));
}

template <bool kTriton>
std::tuple<Tensor, Tensor, Tensor> pointwise_conv2d_stats_autograd(const Tensor& input, const Tensor& weight) {
  const auto r = PointwiseConv2dStats<kTriton>::apply(input, weight);
  return {r[0], r[1], r[2]};
}

template <bool kTriton>
std::tuple<Tensor, Tensor> squeeze_excite_autograd(const Tensor& input, const Tensor& fc1_weight,
                                                   const Tensor& fc1_bias, const Tensor& fc2_weight,
                                                   const Tensor& fc2_bias, c10::string_view activation,
                                                   c10::string_view scale_activation) {
  const auto r = SqueezeExcite<kTriton>::apply(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias,
                                               std::string(activation), std::string(scale_activation));
  return {r[0], r[1]};
}

// ----------------------------------------------------------------------------- conv + BN + act, training
// depthwise_conv2d_bn_act_train and pointwise_conv2d_bn_act_train and their `_triton` twins: the
// conv's statistics op (the batch statistics from the conv's epilogue), then the BatchNorm apply
// kernel with them; backward: one op, {conv}_bn_act_train_backward, whose composite here runs
// batch_norm_act_train_backward, then the conv's backward op (the CUDA kernel of depthwise's fuses
// the two where its tiled kernel applies: csrc/cuda/depthwise_conv2d.cu; the Triton twins' backward
// ops are Python, mobilenet_kernels/ops/_common.py::register_conv_bn_act_train, with their fused
// kernels).
// conv_out, mean and var are non-differentiable outputs kept for the backward and the running
// statistics. All checks run before the first kernel. In C++ rather than Python: a Python
// composite with a register_autograd formula cost ~150 us more per training call (forward and
// backward) than its four kernel ops on a CPU box, once per BatchNorm layer and step.

// The conv of one composite: DepthwiseConvT (above, shared with the depthwise ops' Functions) or
// PointwiseConvT, over the C++-backed ops or (kTriton) their `_triton` twins: its geometry (saved in
// and loaded from ctx), its checks (with BatchNorm's weight and bias, per output channel; returning
// the output's sizes), its statistics op, its backward op and the composite's backward op.
using PwTrainBackwardSig = ConvBnActOut(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                        const OptTensor&, const Tensor&, const Tensor&, const Tensor&, double,
                                        c10::string_view, std::array<bool, 2>);

template <bool kTriton>
struct PointwiseConvT {
  static constexpr bool kIsTriton = kTriton;
  void save(AutogradContext*) const {}
  static PointwiseConvT load(AutogradContext*) { return {}; }

  std::vector<int64_t> check(const Tensor& input, const Tensor& conv_weight, const OptTensor& weight,
                             const OptTensor& bias, const std::string& activation) const {
    const PointwiseArgs a = check_pointwise(input, conv_weight, c10::nullopt, c10::nullopt, activation);
    check_pointwise_stats_count(a);
    check_per_output_channel(weight, "weight", input, a.Cout);
    check_per_output_channel(bias, "bias", input, a.Cout);
    return a.output_sizes();
  }
  std::tuple<Tensor, Tensor, Tensor> stats(const Tensor& input, const Tensor& conv_weight) const {
    static const auto op = find_twin<PwStatsSig, kTriton>("pointwise_conv2d_stats");
    return op.call(input, conv_weight);
  }
  std::tuple<Tensor, Tensor, Tensor> backward(const Tensor& grad, const Tensor& input, const Tensor& conv_weight,
                                              std::array<bool, 3> mask) const {
    return call_pointwise_backward<kTriton>(grad, input, conv_weight, mask);
  }
  ConvBnActOut train_backward(const Tensor& grad, const Tensor& input, const Tensor& conv_weight,
                              const OptTensor& weight, const OptTensor& bias, const Tensor& conv_out,
                              const Tensor& mean, const Tensor& var, double eps, const std::string& activation,
                              std::array<bool, 2> mask) const {
    static const auto op = find_twin<PwTrainBackwardSig, kTriton>("pointwise_conv2d_bn_act_train_backward");
    return op.call(grad, input, conv_weight, weight, bias, conv_out, mean, var, eps, activation, mask);
  }
};

// The composite's forward below autograd: (out, conv_out, mean, var).
template <typename Conv>
ConvBnActOut conv_bn_act_train(const Conv& conv, const Tensor& input, const Tensor& conv_weight, const OptTensor& weight,
                               const OptTensor& bias, double eps, const std::string& activation) {
  conv.check(input, conv_weight, weight, bias, activation);
  TORCH_CHECK_VALUE(eps >= 0, "eps: expected a non-negative value, got ", eps);
  static const auto apply_op = find_twin<BnEvalSig, Conv::kIsTriton>("batch_norm_act_eval");
  auto [conv_out, mean, var] = conv.stats(input, conv_weight);
  Tensor out = apply_op.call(conv_out, mean, var, weight, bias, eps, activation);
  return {out, conv_out, mean, var};
}

// Its backward op, composed (every device; CUDA overrides depthwise's): (grad_input,
// grad_conv_weight, sum(g * x_hat), sum(g)); a masked gradient comes back empty.
template <typename Conv>
ConvBnActOut conv_bn_act_train_backward(const Conv& conv, const Tensor& grad_output, const Tensor& input,
                                        const Tensor& conv_weight, const OptTensor& weight, const OptTensor& bias,
                                        const Tensor& conv_out, const Tensor& mean, const Tensor& var, double eps,
                                        const std::string& activation, std::array<bool, 2> mask) {
  const std::vector<int64_t> out_sizes = conv.check(input, conv_weight, weight, bias, activation);
  check_conv_bn_backward_operands(input, out_sizes, grad_output, conv_out, weight, bias, mean, var, eps, activation);
  static const auto bn_backward = find_twin<BnTrainBackwardSig, Conv::kIsTriton>("batch_norm_act_train_backward");
  const auto [grad_conv_out, sum_g_xhat, sum_g] = bn_backward.call(
      grad_output.contiguous(output_memory_format(input)), conv_out, weight, bias, mean, var, eps, activation);
  Tensor grad_input = at::empty({0}, input.options()), grad_conv_weight = at::empty({0}, input.options());
  if (mask[0] || mask[1]) {
    std::tie(grad_input, grad_conv_weight, std::ignore) =
        conv.backward(grad_conv_out, input, conv_weight, {mask[0], mask[1], false});
  }
  return {grad_input, grad_conv_weight, sum_g_xhat, sum_g};
}

// Arguments: input 0, conv_weight 1, weight 2 and bias 3 (both optional), then the conv's geometry
// (in Conv), eps and activation.
template <typename Conv>
struct ConvBnActTrain : public torch::autograd::Function<ConvBnActTrain<Conv>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& conv_weight,
                               const OptTensor& weight, const OptTensor& bias, const Conv& conv, double eps,
                               const std::string& activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, conv_out, mean, var] = conv_bn_act_train(conv, input, conv_weight, weight, bias, eps, activation);
    ctx->mark_non_differentiable({conv_out, mean, var});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward(
        {input, conv_weight, defined_or_empty(weight), defined_or_empty(bias), conv_out, mean, var});
    conv.save(ctx);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["activation"] = activation;
    return {out, conv_out, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(7);
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &conv_weight = saved[1], &weight = saved[2], &bias = saved[3];
    const Tensor &conv_out = saved[4], &mean = saved[5], &var = saved[6];
    const std::array<bool, 2> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    const auto [grad_input, grad_conv_weight, sum_g_xhat, sum_g] = Conv::load(ctx).train_backward(
        grads[0], input, conv_weight, optional(weight), optional(bias), conv_out, mean, var,
        ctx->saved_data["eps"].toDouble(), ctx->saved_data["activation"].toStringRef(), mask);
    return {
        mask[0] ? grad_input : Tensor(),
        mask[1] ? grad_conv_weight : Tensor(),
        optional_needs_grad(ctx, weight, 2, 0) ? sum_g_xhat.to(weight.scalar_type()) : Tensor(),
        optional_needs_grad(ctx, bias, 3, !weight.defined()) ? sum_g.to(bias.scalar_type()) : Tensor(),
        Tensor(),
        Tensor(),
        Tensor(),
    };
  }
};

template <bool kTriton>
ConvBnActOut depthwise_conv2d_bn_act_train(const Tensor& input, const Tensor& conv_weight, const OptTensor& weight,
                                           const OptTensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                                           at::IntArrayRef dilation, double eps, c10::string_view activation) {
  return conv_bn_act_train(depthwise_conv<kTriton>(stride, padding, dilation), input, conv_weight, weight, bias, eps,
                           std::string(activation));
}

template <bool kTriton>
ConvBnActOut depthwise_conv2d_bn_act_train_autograd(const Tensor& input, const Tensor& conv_weight,
                                                    const OptTensor& weight, const OptTensor& bias,
                                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                                    at::IntArrayRef dilation, double eps,
                                                    c10::string_view activation) {
  const auto r = ConvBnActTrain<DepthwiseConvT<kTriton>>::apply(input, conv_weight, weight, bias,
                                                                depthwise_conv<kTriton>(stride, padding, dilation),
                                                                eps, std::string(activation));
  return {r[0], r[1], r[2], r[3]};
}

ConvBnActOut depthwise_conv2d_bn_act_train_backward(const Tensor& grad_output, const Tensor& input,
                                                    const Tensor& conv_weight, const OptTensor& weight,
                                                    const OptTensor& bias, const Tensor& conv_out, const Tensor& mean,
                                                    const Tensor& var, at::IntArrayRef stride, at::IntArrayRef padding,
                                                    at::IntArrayRef dilation, double eps,
                                                    c10::string_view activation, std::array<bool, 2> mask) {
  return conv_bn_act_train_backward(depthwise_conv<false>(stride, padding, dilation), grad_output, input, conv_weight,
                                    weight, bias, conv_out, mean, var, eps, std::string(activation), mask);
}

template <bool kTriton>
ConvBnActOut pointwise_conv2d_bn_act_train(const Tensor& input, const Tensor& conv_weight, const OptTensor& weight,
                                           const OptTensor& bias, double eps, c10::string_view activation) {
  return conv_bn_act_train(PointwiseConvT<kTriton>{}, input, conv_weight, weight, bias, eps, std::string(activation));
}

template <bool kTriton>
ConvBnActOut pointwise_conv2d_bn_act_train_autograd(const Tensor& input, const Tensor& conv_weight,
                                                    const OptTensor& weight, const OptTensor& bias, double eps,
                                                    c10::string_view activation) {
  const auto r = ConvBnActTrain<PointwiseConvT<kTriton>>::apply(input, conv_weight, weight, bias,
                                                                PointwiseConvT<kTriton>{}, eps,
                                                                std::string(activation));
  return {r[0], r[1], r[2], r[3]};
}

ConvBnActOut pointwise_conv2d_bn_act_train_backward(const Tensor& grad_output, const Tensor& input,
                                                    const Tensor& conv_weight, const OptTensor& weight,
                                                    const OptTensor& bias, const Tensor& conv_out, const Tensor& mean,
                                                    const Tensor& var, double eps, c10::string_view activation,
                                                    std::array<bool, 2> mask) {
  return conv_bn_act_train_backward(PointwiseConvT<false>{}, grad_output, input, conv_weight, weight, bias, conv_out,
                                    mean, var, eps, std::string(activation), mask);
}

// ----------------------------------------------------------------------------- pointwise_depthwise_bn_act_train
// An inverted residual's expand + depthwise layers in training as one op (csrc/library.cpp; kernels:
// csrc/cuda/depthwise_conv2d.cu on CUDA tensors, mobilenet_kernels/ops/pointwise_depthwise.py on
// CPU tensors and for the `_triton` twin). Every model block with an expand conv runs it once per
// training step on a GPU: in C++ its autograd runs no Python between the call and the kernels (the
// Python formula's forward + backward took ~70 µs more per call on a 2-core CPU box, 265 against
// 195 µs for a small block's op, kernels included; a V3-Large training step on CPU tensors through
// this path, batch 2 at 32², ~0.9 ms less).
// Arguments: input 0, expand_weight 1, expand_bn_weight 2 and expand_bn_bias 3 (optional),
// dw_weight 4, dw_bn_weight 5 and dw_bn_bias 6 (optional), stride, padding, dilation, eps, activation.
// The convs' outputs and the batch statistics are non-differentiable outputs kept for the backward
// (and, the statistics, for the running statistics).

using Tensors7 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using PwDwTrainSig = Tensors7(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const Tensor&,
                              const OptTensor&, const OptTensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                              double, c10::string_view);
using PwDwTrainBackwardSig = Tensors7(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                                      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                      const OptTensor&, const Tensor&, const Tensor&, const Tensor&, at::IntArrayRef,
                                      at::IntArrayRef, at::IntArrayRef, double, c10::string_view,
                                      std::array<bool, 3>);

template <bool kTriton>
struct PointwiseDepthwiseTrain : public torch::autograd::Function<PointwiseDepthwiseTrain<kTriton>> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& expand_weight,
                               const OptTensor& expand_bn_weight, const OptTensor& expand_bn_bias,
                               const Tensor& dw_weight, const OptTensor& dw_bn_weight, const OptTensor& dw_bn_bias,
                               const DepthwiseConvT<kTriton>& conv, double eps, const std::string& activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = find_twin<PwDwTrainSig, kTriton>("pointwise_depthwise_bn_act_train");
    auto [out, z1, mean1, var1, z2, mean2, var2] =
        op.call(input, expand_weight, expand_bn_weight, expand_bn_bias, dw_weight, dw_bn_weight, dw_bn_bias,
                conv.stride, conv.padding, conv.dilation, eps, activation);
    ctx->mark_non_differentiable({z1, mean1, var1, z2, mean2, var2});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({input, expand_weight, defined_or_empty(expand_bn_weight), defined_or_empty(expand_bn_bias),
                            z1, mean1, var1, dw_weight, defined_or_empty(dw_bn_weight), defined_or_empty(dw_bn_bias),
                            z2, mean2, var2});
    conv.save(ctx);
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["activation"] = activation;
    return {out, z1, mean1, var1, z2, mean2, var2};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_twin<PwDwTrainBackwardSig, kTriton>("pointwise_depthwise_bn_act_train_backward");
    if (!grads[0].defined()) return variable_list(12);
    const auto s = ctx->get_saved_variables();
    const Tensor &input = s[0], &expand_bn_weight = s[2], &expand_bn_bias = s[3];
    const Tensor &dw_bn_weight = s[8], &dw_bn_bias = s[9];
    // The edges of the arguments after the expand BatchNorm's optionals: one fewer per absent one.
    const int64_t absent = !expand_bn_weight.defined() + !expand_bn_bias.defined();
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   ctx->needs_input_grad(4 - absent)};
    const auto conv = DepthwiseConvT<kTriton>::load(ctx);
    const auto [grad_input, grad_expand_weight, expand_sum_gxhat, expand_sum_g, grad_dw_weight, dw_sum_gxhat,
                dw_sum_g] =
        op.call(grads[0].contiguous(output_memory_format(input)), input, s[1], optional(expand_bn_weight),
                optional(expand_bn_bias), s[4], s[5], s[6], s[7], optional(dw_bn_weight), optional(dw_bn_bias), s[10],
                s[11], s[12], conv.stride, conv.padding, conv.dilation, ctx->saved_data["eps"].toDouble(),
                ctx->saved_data["activation"].toStringRef(), mask);
    variable_list out(12);
    if (mask[0]) out[0] = grad_input;
    if (mask[1]) out[1] = grad_expand_weight;
    if (optional_needs_grad(ctx, expand_bn_weight, 2, 0)) out[2] = expand_sum_gxhat.to(expand_bn_weight.scalar_type());
    if (optional_needs_grad(ctx, expand_bn_bias, 3, !expand_bn_weight.defined())) {
      out[3] = expand_sum_g.to(expand_bn_bias.scalar_type());
    }
    if (mask[2]) out[4] = grad_dw_weight;
    if (optional_needs_grad(ctx, dw_bn_weight, 5, absent)) out[5] = dw_sum_gxhat.to(dw_bn_weight.scalar_type());
    if (optional_needs_grad(ctx, dw_bn_bias, 6, absent + !dw_bn_weight.defined())) {
      out[6] = dw_sum_g.to(dw_bn_bias.scalar_type());
    }
    return out;
  }
};

template <bool kTriton>
Tensors7 pointwise_depthwise_bn_act_train_autograd(const Tensor& input, const Tensor& expand_weight,
                                                   const OptTensor& expand_bn_weight, const OptTensor& expand_bn_bias,
                                                   const Tensor& dw_weight, const OptTensor& dw_bn_weight,
                                                   const OptTensor& dw_bn_bias, at::IntArrayRef stride,
                                                   at::IntArrayRef padding, at::IntArrayRef dilation, double eps,
                                                   c10::string_view activation) {
  const auto r = PointwiseDepthwiseTrain<kTriton>::apply(input, expand_weight, expand_bn_weight, expand_bn_bias,
                                                         dw_weight, dw_bn_weight, dw_bn_bias,
                                                         depthwise_conv<kTriton>(stride, padding, dilation), eps,
                                                         std::string(activation));
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6]};
}

}  // namespace

// The composites below autograd (torch.compile's graphs, inference mode) and their backward ops:
// device-generic (CUDA registers its own depthwise_conv2d_bn_act_train_backward). The `_triton`
// twins' forward composites are these over their ops; their backward ops are Python
// (mobilenet_kernels/ops/_common.py::register_conv_bn_act_train: the fused Triton backward).
TORCH_LIBRARY_IMPL(mobilenet_kernels, CompositeExplicitAutograd, m) {
  m.impl("depthwise_conv2d_bn_act_train", &depthwise_conv2d_bn_act_train<false>);
  m.impl("depthwise_conv2d_bn_act_train_triton", &depthwise_conv2d_bn_act_train<true>);
  m.impl("depthwise_conv2d_bn_act_train_backward", &depthwise_conv2d_bn_act_train_backward);
  m.impl("pointwise_conv2d_bn_act_train", &pointwise_conv2d_bn_act_train<false>);
  m.impl("pointwise_conv2d_bn_act_train_triton", &pointwise_conv2d_bn_act_train<true>);
  m.impl("pointwise_conv2d_bn_act_train_backward", &pointwise_conv2d_bn_act_train_backward);
}

// Every op with a gradient, and its `_triton` twin: one Function for both.
#define MK_AUTOGRAD_TWINS(op)                \
  m.impl(#op, &op##_autograd<false>);        \
  m.impl(#op "_triton", &op##_autograd<true>)

TORCH_LIBRARY_IMPL(mobilenet_kernels, Autograd, m) {
  MK_AUTOGRAD_TWINS(depthwise_conv2d_bn_act_train);
  MK_AUTOGRAD_TWINS(pointwise_conv2d_bn_act_train);
  MK_AUTOGRAD_TWINS(pointwise_depthwise_bn_act_train);
  MK_AUTOGRAD_TWINS(batch_norm_act_eval);
  MK_AUTOGRAD_TWINS(batch_norm_act_train);
  MK_AUTOGRAD_TWINS(depthwise_conv2d);
  MK_AUTOGRAD_TWINS(depthwise_conv2d_stats);
  MK_AUTOGRAD_TWINS(squeeze_excite);
  MK_AUTOGRAD_TWINS(pointwise_conv2d);
  MK_AUTOGRAD_TWINS(pointwise_conv2d_stats);
}
#undef MK_AUTOGRAD_TWINS

}  // namespace mobilenet_kernels
