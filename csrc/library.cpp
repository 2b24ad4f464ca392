// Every mobilenet_kernels schema, in one block. Backends register implementations elsewhere:
// csrc/cpu/*.cpp (CPU), csrc/cuda/*.cu (CUDA); the C++-backed ops' autograd (and the two training
// composites) in csrc/autograd.cpp; the `_triton` twins are implemented in Python
// (mobilenet_kernels/ops/*.py, torch.library.register_kernel, with their autograd), and every fake
// is registered in Python next to its op.
#include <Python.h>
#include <torch/library.h>

// Importing mobilenet_kernels._C runs the static TORCH_LIBRARY initializers; the module itself is empty.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(mobilenet_kernels, m) {
  // batch_norm_act, eval mode: act(BatchNorm(input)) with the running statistics, as one
  // per-channel affine map + activation. Output in the input's memory format.
  // Backward returns (grad_input, sum(g * x_hat), sum(g)) per channel, g = grad_output * act'(z):
  // the last two are grad_weight and grad_bias, and give the running stats' grads in Python.
  m.def(
      "batch_norm_act_eval(Tensor input, Tensor running_mean, Tensor running_var, Tensor? weight, "
      "Tensor? bias, float eps, str activation) -> Tensor");
  m.def(
      "batch_norm_act_eval_backward(Tensor grad_output, Tensor input, Tensor running_mean, "
      "Tensor running_var, Tensor? weight, Tensor? bias, float eps, str activation) -> (Tensor, Tensor, Tensor)");
  // batch_norm_act, training mode: act(BatchNorm(input)) with the batch statistics. Returns
  // (output, batch mean, biased batch variance); the statistics (accumulation dtype) feed the
  // backward and batch_norm_update_stats. Backward returns (grad_input, sum(g * x_hat), sum(g)).
  m.def(
      "batch_norm_act_train(Tensor input, Tensor? weight, Tensor? bias, float eps, str activation) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_act_train_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor mean, Tensor var, float eps, str activation) -> (Tensor, Tensor, Tensor)");
  // running = (1 - momentum) * running + momentum * batch (variance made unbiased with count),
  // in place. A separate op because autograd formulas cannot be registered on mutating ops.
  m.def(
      "batch_norm_update_stats(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, Tensor var, "
      "int count, float momentum) -> ()");
  // depthwise_conv2d: act(conv2d(input, weight, bias, groups=C)), weight (C, 1, kH, kW), in the
  // input's memory format; input/weight/bias share one dtype. Backward returns (grad_input,
  // grad_weight, grad_bias) of the identity-activation conv (the autograd formula applies act'
  // first); an output whose output_mask entry is false comes back as an empty tensor.
  m.def(
      "depthwise_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, str activation) -> Tensor");
  m.def(
      "depthwise_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // depthwise_conv2d_stats: the conv (no bias, no activation) and, from its epilogue, the output's
  // per-channel batch mean and biased variance (accumulation dtype), for a BatchNorm in training.
  // Deterministic: per-tile partial statistics combined in a fixed order, no float atomics.
  m.def(
      "depthwise_conv2d_stats(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] dilation) "
      "-> (Tensor, Tensor, Tensor)");
  // depthwise_conv2d_bn_act_train: act(BatchNorm(depthwise_conv2d(input, conv_weight))) with batch
  // statistics, as depthwise_conv2d_stats + the BatchNorm apply kernel (the statistics come from the
  // conv's epilogue). Returns (output, conv output, batch mean, biased batch variance); the last three
  // feed the backward and batch_norm_update_stats. A device-generic composite over the kernel ops
  // with its autograd, in C++ (csrc/autograd.cpp); the _triton twin's in Python
  // (mobilenet_kernels/ops/_common.py::register_conv_bn_act_train).
  m.def(
      "depthwise_conv2d_bn_act_train(Tensor input, Tensor conv_weight, Tensor? weight, Tensor? bias, int[2] stride, "
      "int[2] padding, int[2] dilation, float eps, str activation) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "depthwise_conv2d_bn_act_train_triton(Tensor input, Tensor conv_weight, Tensor? weight, Tensor? bias, "
      "int[2] stride, int[2] padding, int[2] dilation, float eps, str activation) -> (Tensor, Tensor, Tensor, Tensor)");
  // Its backward, one op: (grad_input, grad_conv_weight, sum(g * x_hat), sum(g)), the last two
  // BatchNorm's weight and bias gradients in the accumulation dtype, g = grad_output * act'(z). It
  // runs BatchNorm's reduction over (grad_output, conv_out), then the conv's backward with the
  // BatchNorm's grad_input as its grad_output. The CUDA kernel (and the _triton twin) compute that
  // grad_input inside the conv backward's loads instead of writing it to memory and reading it back
  // (csrc/cuda/depthwise_tiled.cuh, mobilenet_kernels/triton/depthwise_conv2d.py), rounded to the
  // input's dtype as the unfused path stores it: the same values. Elsewhere, a composite of
  // batch_norm_act_train_backward and depthwise_conv2d_backward (csrc/autograd.cpp).
  // output_mask: (grad_input, grad_conv_weight); a masked one comes back as an empty tensor.
  m.def(
      "depthwise_conv2d_bn_act_train_backward(Tensor grad_output, Tensor input, Tensor conv_weight, Tensor? weight, "
      "Tensor? bias, Tensor conv_out, Tensor mean, Tensor var, int[2] stride, int[2] padding, int[2] dilation, "
      "float eps, str activation, bool[2] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "depthwise_conv2d_bn_act_train_backward_triton(Tensor grad_output, Tensor input, Tensor conv_weight, "
      "Tensor? weight, Tensor? bias, Tensor conv_out, Tensor mean, Tensor var, int[2] stride, int[2] padding, "
      "int[2] dilation, float eps, str activation, bool[2] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // squeeze_excite: input * scale_act(fc2(act(fc1(mean_hw(input))))), torchvision's
  // SqueezeExcitation, as three passes: a per-(image, channel) pool, one small excite step per image
  // (both 1x1 "convs" on the pooled vector, in the accumulation dtype) and a scale pass. fc1_weight
  // (S, C, 1, 1), fc2_weight (C, S, 1, 1), biases (S,) and (C,); parameters in the input's dtype or
  // its accumulation dtype (float32 parameters with half inputs, as under AMP). Returns (output in
  // the input's memory format, pooled (N, C) in the accumulation dtype, saved for the backward).
  // Backward: a reduction pass sum_hw(grad_output * input), the excite backward per image, and one
  // grad_input pass grad_output * scale + grad_pooled / HW; parameter grads (in the parameters'
  // dtypes) sum the per-image terms in a fixed order. No float atomics: bitwise deterministic.
  m.def(
      "squeeze_excite(Tensor input, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, Tensor fc2_bias, "
      "str activation, str scale_activation) -> (Tensor, Tensor)");
  m.def(
      "squeeze_excite_backward(Tensor grad_output, Tensor input, Tensor pooled, Tensor fc1_weight, Tensor fc1_bias, "
      "Tensor fc2_weight, Tensor fc2_bias, str activation, str scale_activation) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "squeeze_excite_triton(Tensor input, Tensor fc1_weight, Tensor fc1_bias, Tensor fc2_weight, Tensor fc2_bias, "
      "str activation, str scale_activation) -> (Tensor, Tensor)");
  m.def(
      "squeeze_excite_backward_triton(Tensor grad_output, Tensor input, Tensor pooled, Tensor fc1_weight, "
      "Tensor fc1_bias, Tensor fc2_weight, Tensor fc2_bias, str activation, str scale_activation) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // pointwise_conv2d: act(conv2d(input, weight, bias)) + residual for a 1x1 conv (weight (Cout, Cin,
  // 1, 1), stride 1, one group), as one GEMM over the N*H*W pixels with the bias, the activation and
  // the residual add in its epilogue: the expand and project convs of an inverted-residual block with
  // BatchNorm folded in. residual (N, Cout, H, W) in the input's dtype is added after the activation.
  // input/weight/bias share one dtype; accumulation in float32 (float64 for float64); output in the
  // input's memory format. Backward returns (grad_input, grad_weight, grad_bias) of the identity-
  // activation conv (the autograd formula applies act' first; residual's gradient is grad_output);
  // an output whose output_mask entry is false comes back as an empty tensor. grad_weight and
  // grad_bias are reductions over N*H*W in a fixed order: bitwise deterministic.
  m.def("pointwise_conv2d(Tensor input, Tensor weight, Tensor? bias, Tensor? residual, str activation) -> Tensor");
  m.def(
      "pointwise_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  // pointwise_conv2d_stats: the 1x1 conv (no bias, no activation) and, from the GEMM's epilogue, the
  // output's per-channel batch mean and biased variance (accumulation dtype) of the values as stored,
  // for a BatchNorm in training; as depthwise_conv2d_stats (per-tile centred partials, Chan's merge in
  // a fixed order, no float atomics).
  m.def("pointwise_conv2d_stats(Tensor input, Tensor weight) -> (Tensor, Tensor, Tensor)");
  // pointwise_conv2d_bn_act_train: act(BatchNorm(pointwise_conv2d(input, conv_weight))) with batch
  // statistics; a composite as depthwise_conv2d_bn_act_train is.
  m.def(
      "pointwise_conv2d_bn_act_train(Tensor input, Tensor conv_weight, Tensor? weight, Tensor? bias, float eps, "
      "str activation) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "pointwise_conv2d_bn_act_train_triton(Tensor input, Tensor conv_weight, Tensor? weight, Tensor? bias, "
      "float eps, str activation) -> (Tensor, Tensor, Tensor, Tensor)");
  // Its backward, as depthwise_conv2d_bn_act_train_backward's; a composite on every backend (the
  // conv's backward is two GEMMs, which take BatchNorm's grad_input from memory).
  m.def(
      "pointwise_conv2d_bn_act_train_backward(Tensor grad_output, Tensor input, Tensor conv_weight, Tensor? weight, "
      "Tensor? bias, Tensor conv_out, Tensor mean, Tensor var, float eps, str activation, bool[2] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "pointwise_conv2d_bn_act_train_backward_triton(Tensor grad_output, Tensor input, Tensor conv_weight, "
      "Tensor? weight, Tensor? bias, Tensor conv_out, Tensor mean, Tensor var, float eps, str activation, "
      "bool[2] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // pointwise_depthwise_bn_act_train: the expanded side of an inverted-residual block in training,
  // act(BN2(dw(act(BN1(expand(input)))))), both BatchNorms on batch statistics, one eps and one
  // activation (the blocks' own). expand_weight (Chid, Cin, 1, 1), dw_weight (Chid, 1, kH, kW), no
  // conv biases. Returns (output, expand_out, expand_mean, expand_var, dw_out, dw_mean, dw_var): the
  // convs' outputs and their biased batch statistics, for the backward and batch_norm_update_stats.
  // BN1's output y1 = act(BN1(expand_out)) is not kept for the backward, which recomputes it where
  // the depthwise weight gradient reads it: one expanded tensor less of activation memory per block.
  // The _triton twin never writes y1 at all: the depthwise kernels apply BN1 + act where they load
  // their input (mobilenet_kernels/triton/depthwise_conv2d.py, X_BN), rounded to the input's dtype as
  // the apply kernel stores it, so the values are those of the unfused sequence; so do the CUDA
  // kernel's tiled depthwise kernels (csrc/cuda/depthwise_conv2d.cu, TiledInputBn) where they apply.
  // Elsewhere (and on CPU) the sequence of pointwise_conv2d_stats, batch_norm_act_eval,
  // depthwise_conv2d_stats, batch_norm_act_eval and, in backward, their backward ops
  // (mobilenet_kernels/ops/pointwise_depthwise.py; the autograd of both twins: csrc/autograd.cpp).
  m.def(
      "pointwise_depthwise_bn_act_train(Tensor input, Tensor expand_weight, Tensor? expand_bn_weight, "
      "Tensor? expand_bn_bias, Tensor dw_weight, Tensor? dw_bn_weight, Tensor? dw_bn_bias, int[2] stride, "
      "int[2] padding, int[2] dilation, float eps, str activation) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "pointwise_depthwise_bn_act_train_triton(Tensor input, Tensor expand_weight, Tensor? expand_bn_weight, "
      "Tensor? expand_bn_bias, Tensor dw_weight, Tensor? dw_bn_weight, Tensor? dw_bn_bias, int[2] stride, "
      "int[2] padding, int[2] dilation, float eps, str activation) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Its backward: (grad_input, grad_expand_weight, BN1's sum(g * x_hat), BN1's sum(g),
  // grad_dw_weight, BN2's sum(g * x_hat), BN2's sum(g)), the sums BatchNorm's weight and bias
  // gradients in the accumulation dtype. output_mask: (grad_input, grad_expand_weight,
  // grad_dw_weight); a masked one comes back as an empty tensor.
  m.def(
      "pointwise_depthwise_bn_act_train_backward(Tensor grad_output, Tensor input, Tensor expand_weight, "
      "Tensor? expand_bn_weight, Tensor? expand_bn_bias, Tensor expand_out, Tensor expand_mean, Tensor expand_var, "
      "Tensor dw_weight, Tensor? dw_bn_weight, Tensor? dw_bn_bias, Tensor dw_out, Tensor dw_mean, Tensor dw_var, "
      "int[2] stride, int[2] padding, int[2] dilation, float eps, str activation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "pointwise_depthwise_bn_act_train_backward_triton(Tensor grad_output, Tensor input, Tensor expand_weight, "
      "Tensor? expand_bn_weight, Tensor? expand_bn_bias, Tensor expand_out, Tensor expand_mean, Tensor expand_var, "
      "Tensor dw_weight, Tensor? dw_bn_weight, Tensor? dw_bn_bias, Tensor dw_out, Tensor dw_mean, Tensor dw_var, "
      "int[2] stride, int[2] padding, int[2] dilation, float eps, str activation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // inverted_residual_eval: a whole inverted-residual block in eval mode with every BatchNorm folded
  // in: project(act(dw(act(expand(x) + expand_bias)) + dw_bias)) + project_bias [+ x], the expanded
  // tensor kept on chip (tiles of output pixels x all hidden channels). expand_weight (Chid, Cin, 1, 1)
  // or None (no expand conv: Chid = Cin), dw_weight (Chid, 1, k, k) with odd k, padding (k - 1) / 2 *
  // dilation, project_weight (Cout, Chid, 1, 1); weights and biases in the input's dtype; residual
  // needs stride 1 and Cout = Cin. With se_fc1_weight (S, Chid, 1, 1), se_fc1_bias (S,), se_fc2_weight
  // (Chid, S, 1, 1) and se_fc2_bias (Chid,) (all four or none; the input's dtype or its accumulation
  // dtype), a squeeze-excite sits between the depthwise conv and the projection (V3's blocks): two
  // passes, the first recomputing the expanded tensor to emit only its per-channel means, the excite
  // step, then the whole block with the depthwise output scaled per (image, channel). Inference only:
  // no autograd formula. Output in the input's memory format.
  m.def(
      "inverted_residual_eval(Tensor input, Tensor? expand_weight, Tensor? expand_bias, Tensor dw_weight, "
      "Tensor dw_bias, Tensor project_weight, Tensor project_bias, int stride, int dilation, str activation, "
      "bool residual, Tensor? se_fc1_weight=None, Tensor? se_fc1_bias=None, Tensor? se_fc2_weight=None, "
      "Tensor? se_fc2_bias=None, str se_activation=\"relu\", str se_scale_activation=\"hardsigmoid\") -> Tensor");
  m.def(
      "depthwise_conv2d_triton(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, str activation) -> Tensor");
  m.def(
      "depthwise_conv2d_backward_triton(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "depthwise_conv2d_stats_triton(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] dilation) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_act_train_triton(Tensor input, Tensor? weight, Tensor? bias, float eps, str activation) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_act_train_backward_triton(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor mean, Tensor var, float eps, str activation) -> (Tensor, Tensor, Tensor)");
  m.def(
      "batch_norm_act_eval_triton(Tensor input, Tensor running_mean, Tensor running_var, Tensor? weight, "
      "Tensor? bias, float eps, str activation) -> Tensor");
  m.def(
      "batch_norm_act_eval_backward_triton(Tensor grad_output, Tensor input, Tensor running_mean, "
      "Tensor running_var, Tensor? weight, Tensor? bias, float eps, str activation) -> (Tensor, Tensor, Tensor)");
  m.def(
      "pointwise_conv2d_triton(Tensor input, Tensor weight, Tensor? bias, Tensor? residual, str activation) "
      "-> Tensor");
  m.def(
      "pointwise_conv2d_backward_triton(Tensor grad_output, Tensor input, Tensor weight, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("pointwise_conv2d_stats_triton(Tensor input, Tensor weight) -> (Tensor, Tensor, Tensor)");
  m.def(
      "inverted_residual_eval_triton(Tensor input, Tensor? expand_weight, Tensor? expand_bias, Tensor dw_weight, "
      "Tensor dw_bias, Tensor project_weight, Tensor project_bias, int stride, int dilation, str activation, "
      "bool residual, Tensor? se_fc1_weight=None, Tensor? se_fc1_bias=None, Tensor? se_fc2_weight=None, "
      "Tensor? se_fc2_bias=None, str se_activation=\"relu\", str se_scale_activation=\"hardsigmoid\") -> Tensor");
}
