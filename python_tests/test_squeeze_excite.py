"""squeeze_excite: parity with torchvision's SqueezeExcitation, gradients, low-precision error bounds,
determinism, opcheck, compile, autocast, the module, convert(), bad input."""

import pytest
import torch
from torch import nn
from torchvision.ops import SqueezeExcitation as TVSqueezeExcitation

import mobilenet_kernels as mk
import mobilenet_kernels.functional as MF
from mobilenet_kernels.nn import SqueezeExcitation
from mobilenet_kernels.reference import squeeze_excite_ref

from conftest import BACKENDS, skip_unless_usable
from op_helpers import (assert_bad_arguments_name_the_argument, assert_bitwise_repeatable, assert_within_2x_torch,
                        make_input)

KERNEL_BACKENDS = ["cuda", "triton"]
GRADCHECK_BACKENDS = ["torch", "cuda"]  # Triton: too slow under the interpreter (see test_depthwise_conv2d)
# (N, C, H, W, S): MobileNetV3 SE layers scaled down, plus H = W = 1, odd sizes, C not a multiple of 8, S = 1.
SHAPES = [(2, 16, 7, 7, 8), (1, 13, 13, 13, 4), (2, 8, 1, 1, 8), (3, 72, 5, 3, 24), (1, 5, 2, 2, 1)]
ACTIVATIONS = [("relu", "hardsigmoid"), ("hardswish", "sigmoid"), ("silu", "hardsigmoid")]
LAYOUTS = ["nchw", "channels_last", "strided"]
_ACT_MODULES = {"relu": nn.ReLU, "silu": nn.SiLU, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
                "sigmoid": nn.Sigmoid}
ns = torch.ops.mobilenet_kernels
SUFFIX = {"cuda": "", "triton": "_triton"}


def op(name, backend):
    return getattr(ns, name + SUFFIX[backend])


def make_params(C, S, device, dtype=torch.float32):
    """fc1/fc2 weights and biases, scaled so that the activations see values on both sides of their kinks."""
    return (torch.randn(S, C, 1, 1, device=device, dtype=dtype) / C**0.5, torch.randn(S, device=device, dtype=dtype),
            torch.randn(C, S, 1, 1, device=device, dtype=dtype) * 2 / S**0.5, torch.randn(C, device=device, dtype=dtype))


def torchvision_se(params, act, sact):
    w1, b1, w2, b2 = params
    se = TVSqueezeExcitation(w1.shape[1], w1.shape[0], activation=_ACT_MODULES[act], scale_activation=_ACT_MODULES[sact])
    se = se.to(device=w1.device, dtype=w1.dtype)
    with torch.no_grad():
        for p, v in zip((se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias), params):
            p.copy_(v)
    return se


def assert_layout_kept(y, x):
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last) and y.shape[2] * y.shape[3] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()


def reference_grads(x, params, grad, act, sact):
    """Output and gradients (input, fc1 weight/bias, fc2 weight/bias) of the float64 reference."""
    x64, *p64 = (t.detach().double().requires_grad_() for t in (x, *params))
    y = squeeze_excite_ref(x64, *p64, act, sact)
    return (y.detach(), *torch.autograd.grad(y, (x64, *p64), grad.double()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("acts", ACTIVATIONS)
def test_forward_fp32_matches_torchvision(backend, layout, acts, device):
    skip_unless_usable(backend, device)
    for N, C, H, W, S in SHAPES:
        x = make_input((N, C, H, W), layout, torch.float32, device)
        params = make_params(C, S, device)
        y = MF.squeeze_excite(x, *params, activation=acts[0], scale_activation=acts[1], backend=backend)
        torch.testing.assert_close(y, torchvision_se(params, *acts)(x), rtol=1e-5, atol=1e-5)
        assert y.dtype == x.dtype
        assert_layout_kept(y, x)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("acts", ACTIVATIONS)
def test_backward_fp32_matches_reference(backend, layout, acts, device):
    skip_unless_usable(backend, device)
    for N, C, H, W, S in SHAPES:
        x = make_input((N, C, H, W), layout, torch.float32, device).requires_grad_()
        params = tuple(p.requires_grad_() for p in make_params(C, S, device))
        y = MF.squeeze_excite(x, *params, activation=acts[0], scale_activation=acts[1], backend=backend)
        grad = make_input(tuple(y.shape), layout, torch.float32, device)
        got = torch.autograd.grad(y, (x, *params), grad)
        want = reference_grads(x, params, grad, *acts)[1:]
        for g, r, p in zip(got, want, (x, *params)):
            assert g.shape == p.shape and g.dtype == p.dtype
            torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4)
        assert_layout_kept(got[0], x)


@pytest.mark.parametrize("backend", GRADCHECK_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("acts", [("relu", "hardsigmoid"), ("silu", "sigmoid"), ("hardswish", "hardsigmoid")])
def test_gradcheck_fp64_every_input(backend, layout, acts, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 5, 3, 4), layout, torch.float64, device).requires_grad_()
    params = tuple(p.requires_grad_() for p in make_params(5, 3, device, torch.float64))
    fn = lambda *a: MF.squeeze_excite(*a, activation=acts[0], scale_activation=acts[1], backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, *params))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_low_precision_error_within_2x_torch(backend, dtype, layout, device):
    """Our fp16/bf16 error against float64 stays within 2x torchvision's own (its module in that dtype
    on the same inputs and parameters), for the output and every gradient."""
    skip_unless_usable(backend, device)
    if dtype == torch.float16 and device == "cpu":
        pytest.skip("PyTorch has no float16 conv2d on CPU to compare with")
    for N, C, H, W, S in SHAPES[:4]:
        x = make_input((N, C, H, W), layout, dtype, device).requires_grad_()
        params = tuple(p.requires_grad_() for p in make_params(C, S, device, dtype))
        y = MF.squeeze_excite(x, *params, backend=backend)
        grad = make_input(tuple(y.shape), layout, dtype, device)
        ours = (y, *torch.autograd.grad(y, (x, *params), grad))
        se = torchvision_se(tuple(p.detach() for p in params), "relu", "hardsigmoid")
        xt = x.detach().requires_grad_()
        yt = se(xt)
        torchs = (yt, *torch.autograd.grad(yt, (xt, se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias), grad))
        refs = reference_grads(x, params, grad, "relu", "hardsigmoid")
        assert all(t.dtype == dtype for t in ours)
        names = ("output", "grad_input", "grad_fc1_weight", "grad_fc1_bias", "grad_fc2_weight", "grad_fc2_bias")
        assert_within_2x_torch(ours, torchs, refs, names, f"for {(N, C, H, W, S)}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_forward_and_backward_are_bitwise_deterministic(backend, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((3, 24, 9, 9), layout, torch.float32, device)
    params = make_params(24, 8, device)
    grad = make_input((3, 24, 9, 9), layout, torch.float32, device)
    y, pooled = op("squeeze_excite", backend)(x, *params, "hardswish", "hardsigmoid")
    assert_bitwise_repeatable(lambda: op("squeeze_excite", backend)(x, *params, "hardswish", "hardsigmoid"))
    assert_bitwise_repeatable(
        lambda: op("squeeze_excite_backward", backend)(grad, x, pooled, *params, "hardswish", "hardsigmoid"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_empty_batch(backend, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((0, 6, 5, 5), layout, torch.float32, device).requires_grad_()
    params = tuple(p.requires_grad_() for p in make_params(6, 2, device))
    y = MF.squeeze_excite(x, *params, backend=backend)
    assert y.shape == x.shape
    grads = torch.autograd.grad(y.sum(), (x, *params))
    assert grads[0].shape == x.shape
    assert all(torch.equal(g, torch.zeros_like(p)) for g, p in zip(grads[1:], params))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(backend, layout, device):
    skip_unless_usable(backend, device)
    x = make_input((2, 10, 5, 4), layout, torch.float32, device)
    params = make_params(10, 3, device)
    for requires_grad in (False, True):
        args = (x.requires_grad_(requires_grad), *(p.requires_grad_(requires_grad) for p in params))
        torch.library.opcheck(op("squeeze_excite", backend), (*args, "relu", "hardsigmoid"))
    x, params = x.detach(), tuple(p.detach() for p in params)
    _, pooled = op("squeeze_excite", backend)(x, *params, "silu", "sigmoid")
    grad = make_input(tuple(x.shape), layout, torch.float32, device)
    torch.library.opcheck(op("squeeze_excite_backward", backend), (grad, x, pooled, *params, "silu", "sigmoid"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    skip_unless_usable(backend, device)
    torch._dynamo.reset()
    x = make_input((2, 16, 5, 5), "channels_last", torch.float32, device).requires_grad_()
    params = tuple(p.requires_grad_() for p in make_params(16, 8, device))

    def fn(x, *params):
        return MF.squeeze_excite(x, *params, activation="relu", scale_activation="hardsigmoid", backend=backend) * 2

    compiled = torch.compile(fn, fullgraph=True)
    y, y_ref = compiled(x, *params), fn(x, *params)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), (x, *params)), torch.autograd.grad(y_ref.sum(), (x, *params)))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_autocast_keeps_float32_parameters(backend, device):
    """Under autocast the input is cast to bf16 and the excite step runs on the float32 parameters;
    the parameters' gradients come back in float32."""
    skip_unless_usable(backend, device)
    x = torch.randn(2, 16, 5, 5, device=device).requires_grad_()
    params = tuple(p.requires_grad_() for p in make_params(16, 8, device))
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        y = MF.squeeze_excite(x, *params, backend=backend)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), squeeze_excite_ref(x.double(), *(p.double() for p in params)),
                               rtol=2e-2, atol=2e-2)
    grads = torch.autograd.grad(y.float().sum(), (x, *params))
    assert grads[0].dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads[1:])


def _bad_cases():
    x = torch.randn(2, 8, 5, 5)
    good = dict(zip(("input", "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"), (x, *make_params(8, 4, "cpu"))))
    good.update(activation="relu", scale_activation="hardsigmoid")
    return good, [
        (dict(fc1_weight=torch.randn(4, 6, 1, 1)), ValueError, "fc1_weight"),
        (dict(fc1_weight=torch.randn(4, 8, 3, 3)), ValueError, "fc1_weight"),
        (dict(fc2_weight=torch.randn(8, 5, 1, 1)), ValueError, "fc2_weight"),
        (dict(fc2_weight=torch.randn(6, 4, 1, 1)), ValueError, "fc2_weight"),
        (dict(fc1_bias=torch.randn(5)), ValueError, "fc1_bias"),
        (dict(fc2_bias=torch.randn(7)), ValueError, "fc2_bias"),
        (dict(fc2_bias=torch.randn(8, dtype=torch.float64)), TypeError, "fc2_bias"),
        (dict(activation="gelu"), ValueError, "activation"),
        (dict(scale_activation="softmax"), ValueError, "scale_activation"),
        (dict(input=torch.randn(8, 5, 5)), ValueError, "input"),
        (dict(input=torch.randint(0, 3, (2, 8, 5, 5))), TypeError, "input"),
        (dict(input=torch.randn(2, 8, 0, 5)), ValueError, "input"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(_bad_cases()[1])))
def test_bad_arguments_name_the_argument(backend, case):
    skip_unless_usable(backend, "cpu")

    def call(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation):
        return MF.squeeze_excite(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation=activation,
                                 scale_activation=scale_activation, backend=backend)

    assert_bad_arguments_name_the_argument(call, *_bad_cases(), case)


@pytest.mark.parametrize("case", range(len(_bad_cases()[1])))
def test_cpp_op_checks_name_the_argument(case):
    """Direct torch.ops calls get the same errors from the C++ checks (csrc/squeeze_excite.h)."""
    skip_unless_usable("cuda", "cpu")

    def call(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation):
        return ns.squeeze_excite(input, fc1_weight, fc1_bias, fc2_weight, fc2_bias, activation, scale_activation)

    assert_bad_arguments_name_the_argument(call, *_bad_cases(), case)


# ----------------------------------------------------------------------------- module and convert()


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_matches_torchvision_and_shares_its_state_dict(backend, device):
    skip_unless_usable(backend, device)
    tv = TVSqueezeExcitation(24, 8, scale_activation=nn.Hardsigmoid).to(device)
    ours = SqueezeExcitation(24, 8, "relu", "hardsigmoid", backend=backend).to(device)
    assert list(ours.state_dict()) == list(tv.state_dict())
    ours.load_state_dict(tv.state_dict())
    x = make_input((2, 24, 6, 6), "channels_last", torch.float32, device).requires_grad_()
    y, yt = ours(x), tv(x)
    torch.testing.assert_close(y, yt, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, *ours.parameters()), grad)
    want = torch.autograd.grad(yt, (x, *tv.parameters()), grad)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_convert_swaps_torchvision_squeeze_excitation_in_place():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), TVSqueezeExcitation(16, 4, activation=nn.SiLU, scale_activation=nn.Sigmoid))
    fc1 = model[1].fc1
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    keys = list(model.state_dict())
    assert mk.convert(model, backend="torch") is model
    assert isinstance(model[1], SqueezeExcitation) and model[1].fc1 is fc1
    assert (model[1].activation, model[1].scale_activation) == ("silu", "sigmoid")
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), before)


def test_module_rejects_unknown_activation_names():
    with pytest.raises(ValueError, match="scale_activation"):
        SqueezeExcitation(8, 4, "relu", "tanh")
