"""pointwise_depthwise_bn_act_train (an inverted residual's expand + depthwise layers in training as one
op): parity with the float64 reference and with the per-layer ops, the fused Triton kernels against
the sequence, opcheck, gradcheck, torch.compile, the activation memory it saves, bad input."""

import copy

import pytest
import torch
import torch.nn.functional as F

import mobilenet_kernels.functional as MF
from mobilenet_kernels.nn import InvertedResidual
from mobilenet_kernels.nn.conv_bn_act import conv_bn_act

from conftest import BACKENDS, skip_unless_usable
from op_helpers import exact_activation, float64_tolerance, make_input

KERNEL_BACKENDS = ["cuda", "triton"]
SUFFIX = {"cuda": "", "triton": "_triton"}
ns = torch.ops.mobilenet_kernels
# (input shape, hidden channels, kernel, stride, padding, dilation): V2/V3 layers scaled down, and
# C = 13 hidden channels, H = W = 1, dilation 2, an odd size at stride 2.
GEOMETRIES = [
    ((2, 4, 7, 7), 16, 3, 1, 1, 1),
    ((2, 5, 9, 11), 13, 5, 2, 2, 1),
    ((3, 3, 1, 1), 8, 3, 1, 1, 1),
    ((1, 6, 7, 6), 12, 3, 1, 2, 2),
]


def op(backend, backward=False):
    return getattr(ns, "pointwise_depthwise_bn_act_train" + ("_backward" if backward else "") + SUFFIX[backend])


def make_case(shape, hidden, k, layout, dtype, device, affine=True):
    """(input, expand_weight, expand BN weight, bias, dw_weight, dw BN weight, bias); the
    BatchNorm parameters in float32 (as under AMP) unless dtype is float64."""
    x = make_input(shape, layout, dtype, device)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    we = (torch.randn(hidden, shape[1], 1, 1, dtype=torch.float64, device=device) / shape[1] ** 0.5).to(dtype)
    wd = (torch.randn(hidden, 1, k, k, dtype=torch.float64, device=device) / k).to(dtype)
    bn = [torch.rand(hidden, dtype=pdt, device=device) + 0.5, torch.randn(hidden, dtype=pdt, device=device),
          torch.rand(hidden, dtype=pdt, device=device) + 0.5, torch.randn(hidden, dtype=pdt, device=device)]
    if not affine:
        bn = [None] * 4
    return [x, we, bn[0], bn[1], wd, bn[2], bn[3]]


def reference(x, we, g1, b1, wd, g2, b2, stride, padding, dilation, eps, act):
    """The layers as torch runs them, in float64."""
    z1 = F.conv2d(x, we)
    y1 = exact_activation(F.batch_norm(z1, None, None, g1, b1, True, 0.0, eps), act)
    z2 = F.conv2d(y1, wd, None, stride, padding, dilation, groups=wd.shape[0])
    return exact_activation(F.batch_norm(z2, None, None, g2, b2, True, 0.0, eps), act)


def per_layer(backend, x, we, g1, b1, wd, g2, b2, geometry, eps, act):
    """The two per-layer training ops the block op replaces."""
    sfx = SUFFIX[backend]
    y1 = getattr(ns, "pointwise_conv2d_bn_act_train" + sfx)(x, we, g1, b1, eps, act)[0]
    return getattr(ns, "depthwise_conv2d_bn_act_train" + sfx)(y1, wd, g2, b2, *geometry, eps, act)[0]


def grads(out, inputs, seed=0):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out)
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(out, wanted, g)


def leaves(case):
    return [None if t is None else t.detach().clone().requires_grad_() for t in case]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("act", ["relu6", "hardswish"])
def test_float64_matches_reference(backend, layout, act, device):
    """Output and every gradient (input, both conv weights, both BatchNorms' weight and bias)
    against torch's layers in float64; the output keeps the input's layout."""
    skip_unless_usable(backend, device)
    for shape, hidden, k, s, p, d in GEOMETRIES:
        case = make_case(shape, hidden, k, layout, torch.float64, device)
        geometry = ([s, s], [p, p], [d, d])
        ours_in, ref_in = leaves(case), leaves(case)
        out = op(backend)(*ours_in, *geometry, 1e-3, act)[0]
        ref = reference(*ref_in, s, p, d, 1e-3, act)
        where = f"{shape} hidden={hidden} k{k} s{s} d{d}"
        torch.testing.assert_close(out, ref, **float64_tolerance(act, device), msg=where)
        for i, (a, b) in enumerate(zip(grads(out, ours_in), grads(ref, ref_in))):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7, msg=f"gradient {i}: {where}")
        if layout == "channels_last" and out.shape[2] * out.shape[3] > 1:
            assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_is_the_per_layer_ops_bit_for_bit(backend, layout, dtype, device):
    """The block op gives the bits of pointwise_conv2d_bn_act_train then
    depthwise_conv2d_bn_act_train, output and gradients: the recomputed (C++/CUDA) or never
    written (Triton: the input BatchNorm applied where the depthwise kernels load) expand output
    equals the stored one."""
    skip_unless_usable(backend, device)
    for shape, hidden, k, s, p, d in GEOMETRIES:
        for affine in (True, False):
            case = make_case(shape, hidden, k, layout, dtype, device, affine)
            geometry = ([s, s], [p, p], [d, d])
            ours_in, ref_in = leaves(case), leaves(case)
            out = op(backend)(*ours_in, *geometry, 1e-5, "relu6")[0]
            ref = per_layer(backend, *ref_in, geometry, 1e-5, "relu6")
            where = f"{shape} hidden={hidden} k{k} s{s} d{d} affine={affine}"
            assert torch.equal(out, ref), where
            for i, (a, b) in enumerate(zip(grads(out, ours_in), grads(ref, ref_in))):
                assert torch.equal(a, b), f"gradient {i}: {where}"


# Which of (input, expand_weight, BN1 weight, BN1 bias, dw_weight, BN2 weight, BN2 bias) take part
# (None: absent, False: no gradient wanted): absent BatchNorm parameters shift the autograd edges of
# the arguments after them (csrc/autograd.cpp numbers only the tensors passed).
PRESENCE = [
    (True, True, None, None, True, True, True),
    (True, True, True, True, True, None, None),
    (True, True, True, None, True, None, True),
    (True, False, None, True, True, True, None),
    (False, True, True, True, False, None, True),
    (True, False, None, None, False, None, None),
]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("presence", PRESENCE, ids=lambda p: "".join("-" if x is None else "1" if x else "0" for x in p))
def test_gradients_with_absent_or_frozen_arguments(backend, presence, device):
    """With BatchNorm parameters absent and arguments not requiring a gradient, in any mix, each
    wanted gradient is the float64 reference's and each other one is None."""
    skip_unless_usable(backend, device)
    case = make_case((2, 3, 5, 5), 8, 3, "channels_last", torch.float64, device)
    case = [None if want is None else t.detach().clone().requires_grad_(want) for t, want in zip(case, presence)]
    ref_case = [None if t is None else t.detach().clone().requires_grad_(t.requires_grad) for t in case]
    out = op(backend)(*case, [2, 2], [1, 1], [1, 1], 1e-3, "hardswish")[0]
    ref = reference(*ref_case, 2, 1, 1, 1e-3, "hardswish")
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    for i, (t, r) in enumerate(zip(case, ref_case)):
        if t is None or not t.requires_grad:
            assert t is None or t.grad is None, f"argument {i}"
        else:
            torch.testing.assert_close(t.grad, r.grad, rtol=1e-7, atol=1e-7, msg=f"argument {i}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_autograd_is_cpp(backend):
    """Both twins' autograd is the C++ node (csrc/autograd.cpp): no Python runs per call."""
    skip_unless_usable(backend, "cpu")
    case = leaves(make_case((2, 3, 5, 5), 8, 3, "channels_last", torch.float32, "cpu"))
    out = op(backend)(*case, [1, 1], [1, 1], [1, 1], 1e-5, "relu6")[0]
    assert "PointwiseDepthwiseTrain" in out.grad_fn.name(), out.grad_fn.name()


# (MK_DW_INPUT_BN, MK_DW_BN_FUSED): the default with both fusions, then each switched off, then both.
FUSION_SWITCHES = [("1", "1"), ("0", "1"), ("1", "0"), ("0", "0")]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_fusion_switches_give_the_same_bits(backend, dtype, layout, device, monkeypatch):
    """The fused kernels (the expand BatchNorm + activation applied where the depthwise kernels
    load z1, zero in the padding; BN2's grad_input computed inside the depthwise backward) against
    the sequences that MK_DW_INPUT_BN=0 and MK_DW_BN_FUSED=0 run, each and together: every output
    and gradient bit for bit. Padding 1 and 2 put act(BatchNorm(0)) != 0 in reach of the taps.
    On CUDA tensors the "cuda" backend's tiled kernels take the channels_last cases."""
    skip_unless_usable(backend, device)
    for shape, hidden, k, s, p, d in GEOMETRIES:
        case = make_case(shape, hidden, k, layout, dtype, device)
        runs = []
        for input_bn, bn_dx in FUSION_SWITCHES:
            monkeypatch.setenv("MK_DW_INPUT_BN", input_bn)
            monkeypatch.setenv("MK_DW_BN_FUSED", bn_dx)
            inputs = leaves(case)
            outs = op(backend)(*inputs, [s, s], [p, p], [d, d], 1e-5, "hardswish")
            runs.append([*outs, *grads(outs[0], inputs)])
        for setting, run in zip(FUSION_SWITCHES[1:], runs[1:]):
            for i, (a, b) in enumerate(zip(runs[0], run)):
                assert torch.equal(a, b), f"output/gradient {i} with (MK_DW_INPUT_BN, MK_DW_BN_FUSED)={setting}: " \
                                          f"{shape} k{k} s{s} d{d}"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_opcheck(backend, device):
    skip_unless_usable(backend, device)
    case = make_case((2, 4, 5, 5), 8, 3, "channels_last", torch.float32, device)
    rest = ([1, 1], [1, 1], [1, 1], 1e-5, "hardswish")
    torch.library.opcheck(op(backend), (*case, *rest))
    x, we, g1, b1, wd, g2, b2 = case
    out, z1, m1, v1, z2, m2, v2 = op(backend)(*case, *rest)
    for mask in ([True, True, True], [False, False, True], [True, False, False]):
        torch.library.opcheck(op(backend, backward=True),
                              (torch.randn_like(out), x, we, g1, b1, z1, m1, v1, wd, g2, b2, z2, m2, v2, *rest, mask))


def test_gradcheck():
    """gradcheck in float64 over every differentiable input (the C++ CPU sequence)."""
    skip_unless_usable("cuda", "cpu")
    case = [t.requires_grad_() for t in make_case((2, 3, 4, 5), 6, 3, "channels_last", torch.float64, "cpu")]
    assert torch.autograd.gradcheck(lambda *t: op("cuda")(*t, [2, 2], [1, 1], [1, 1], 1e-3, "hardswish")[0], case)


def test_blocks_use_it_with_triton(device):
    """A V2 block with an expand conv runs the op in training with Triton and matches
    torchvision's block, its running statistics included (test_inverted_residual's
    torch.compile(fullgraph=True), recompute, channels_last and parity tests run their Triton
    training blocks through it too), with "cuda" on CUDA tensors only (on CPU tensors the op would
    recompute, see _expand_depthwise_train), not with SyncBatchNormAct2d or two activations."""
    skip_unless_usable("triton", device)
    pytest.importorskip("torchvision")
    from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionBlock

    from mobilenet_kernels.nn.batch_norm_act import BatchNormAct2d
    from mobilenet_kernels.nn.inverted_residual import _InvertedResidualBase

    torch.manual_seed(0)
    theirs = TorchvisionBlock(4, 4, 1, 4).to(device).train()
    ours = InvertedResidual.from_torchvision(copy.deepcopy(theirs), backend="triton")
    x = torch.randn(2, 4, 6, 6, device=device).to(memory_format=torch.channels_last)
    with torch.profiler.profile() as prof:
        out = ours(x)
    assert any(e.key.endswith("pointwise_depthwise_bn_act_train_triton") for e in prof.key_averages())
    torch.testing.assert_close(out, theirs(x), rtol=1e-4, atol=1e-4)
    for name, t in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], t, rtol=1e-5, atol=1e-6, msg=name)

    def used(block):
        return _InvertedResidualBase._expand_depthwise_train(list(block.conv)[:2], x) is not None

    block = InvertedResidual(4, 4, 1, 4, backend="triton").to(device).train()
    assert used(block)
    block.conv[1][1].activation = "relu"
    assert not used(block)
    block.conv[1][1] = type("Sync", (BatchNormAct2d,), {})(16, activation="relu6").to(device)
    assert not used(block)
    assert used(InvertedResidual(4, 4, 1, 4, backend="cuda").to(device).train()) == (device == "cuda")


def _saved_bytes(run):
    """Bytes saved for backward by run()'s forward (which is never run backward: the hook keeps
    nothing, so no saved output and its grad_fn form a cycle that outlives the call)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
        run()
    return total


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_keeps_one_expanded_tensor_less(backend):
    """The op saves for backward exactly the expand BatchNorm's output (N x hidden x H x W) less
    than the two per-layer ops; so does a Triton training block against its layers run one by one."""
    skip_unless_usable(backend, "cpu")
    case = leaves(make_case((2, 8, 9, 9), 48, 3, "channels_last", torch.float32, "cpu"))
    geometry = ([1, 1], [1, 1], [1, 1])
    y1_bytes = 2 * 48 * 9 * 9 * 4
    per_layer_bytes = _saved_bytes(lambda: per_layer(backend, *case, geometry, 1e-5, "relu6"))
    assert per_layer_bytes - _saved_bytes(lambda: op(backend)(*case, *geometry, 1e-5, "relu6")) == y1_bytes
    if backend == "triton":
        block = InvertedResidual(8, 8, 1, 6, backend=backend).train()
        x = case[0]
        layers = lambda: conv_bn_act(block.conv[2], block.conv[3], block.conv[1](block.conv[0](x)), x)  # noqa: E731
        assert _saved_bytes(layers) - _saved_bytes(lambda: block(x)) == y1_bytes


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_updates_running_statistics(backend):
    """functional.pointwise_depthwise_bn_act_train updates both BatchNorms' running statistics with
    their own momentum, as two nn.BatchNorm2d in training do."""
    skip_unless_usable(backend, "cpu")
    x, we, g1, b1, wd, g2, b2 = make_case((2, 3, 6, 6), 8, 3, "nchw", torch.float64, "cpu")
    stats = [torch.randn(8, dtype=torch.float64), torch.rand(8, dtype=torch.float64) + 0.5]
    ours = [t.clone() for t in stats * 2]
    ref = [t.clone() for t in stats * 2]
    out = MF.pointwise_depthwise_bn_act_train(x, we, wd, 2, 1, 1, ours[0], ours[1], g1, b1, ours[2], ours[3], g2, b2,
                                              0.1, 0.3, 1e-3, "relu6", backend=backend)
    y1 = F.relu6(F.batch_norm(F.conv2d(x, we), ref[0], ref[1], g1, b1, True, 0.1, 1e-3))
    expected = F.relu6(F.batch_norm(F.conv2d(y1, wd, None, 2, 1, 1, 8), ref[2], ref[3], g2, b2, True, 0.3, 1e-3))
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arg, index, change, exc", [
    ("expand_weight", 1, lambda t: t[:, :-1], ValueError),
    ("dw_weight", 4, lambda t: t[:-1], ValueError),
    ("dw_weight", 4, lambda t: t.double(), TypeError),
    ("expand_bn_bias", 3, lambda t: t[:-1], ValueError),
    ("dw_bn_weight", 5, lambda t: t[:-1], ValueError),
])
def test_bad_arguments_name_the_argument(backend, arg, index, change, exc, device):
    """Through the functional API and the op itself (on a GPU, the CUDA kernel's C++ checks)."""
    skip_unless_usable(backend, device)
    case = make_case((2, 3, 5, 5), 8, 3, "nchw", torch.float32, device)
    case[index] = change(case[index])
    x, we, g1, b1, wd, g2, b2 = case
    with pytest.raises(exc, match=arg):
        MF.pointwise_depthwise_bn_act_train(x, we, wd, 1, 1, 1, None, None, g1, b1, None, None, g2, b2,
                                            eps=1e-5, activation="relu6", backend=backend)
    if backend != "torch":
        with pytest.raises(exc, match=arg):
            op(backend)(*case, [1, 1], [1, 1], [1, 1], 1e-5, "relu6")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("shape, stride, message", [
    ((1, 3, 1, 1), 1, r"input: Expected more than 1 value per channel when training, got input of size "
                      r"[(\[]1, 3, 1, 1[)\]]"),
    ((1, 3, 2, 2), 2, r"input: Expected more than 1 value per channel when training, got a conv output of size "
                      r"[(\[]1, 8, 1, 1[)\]]"),
])
def test_one_value_per_channel_names_the_tensor(backend, shape, stride, message, device):
    """Each BatchNorm needs more than one value per channel: the expand one counts the input's
    pixels, the depthwise one the conv output's (with the expanded channels), and the error says which.
    (Python prints sizes as tuples, the C++ checks on a GPU as lists.)"""
    skip_unless_usable(backend, device)
    case = make_case(shape, 8, 3, "nchw", torch.float32, device)
    with pytest.raises(ValueError, match=message):
        op(backend)(*case, [stride, stride], [1, 1], [1, 1], 1e-5, "relu6")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("arg, index, change, exc", [
    ("expand_out", 5, lambda t: t[:, :-1], ValueError),
    ("dw_mean", 12, lambda t: t[:-1], ValueError),
    ("grad_output", 0, lambda t: t.double(), TypeError),
])
def test_backward_bad_operands_name_the_argument(backend, arg, index, change, exc, device):
    skip_unless_usable(backend, device)
    case = make_case((2, 3, 5, 5), 8, 3, "nchw", torch.float32, device)
    x, we, g1, b1, wd, g2, b2 = case
    rest = ([1, 1], [1, 1], [1, 1], 1e-5, "relu6")
    out, z1, m1, v1, z2, m2, v2 = op(backend)(*case, *rest)
    args = [torch.randn_like(out), x, we, g1, b1, z1, m1, v1, wd, g2, b2, z2, m2, v2]
    args[index] = change(args[index])
    with pytest.raises(exc, match=arg):
        op(backend, backward=True)(*args, *rest, [True, True, True])
