"""inverted_residual_eval, the whole-block eval kernel: parity with the op-by-op reference per
layout x dtype x backend, odd shapes, low-precision error bounds, opcheck, compile, bad input, and
its use by the nn blocks (eval with no gradient) and whole models."""

import pytest
import torch

import mobilenet_kernels.functional as MF
import mobilenet_kernels.nn.inverted_residual as ir_module
from mobilenet_kernels.nn import InvertedResidual, InvertedResidualV3
from mobilenet_kernels.reference import inverted_residual_eval_ref

from conftest import BACKENDS, skip_unless_usable
from op_helpers import assert_bitwise_repeatable, assert_within_2x_torch, float64_tolerance, make_input

ns = torch.ops.mobilenet_kernels
# (N, Cin, H, W, expand ratio, Cout, k, stride, dilation, activation): V2 and V3 blocks scaled down,
# plus edge cases: no expand conv, H = W = 1, odd sizes, stride 2 with odd H, k5, dilation 2,
# channels not a multiple of 8, the residual.
BLOCKS = [
    (2, 8, 7, 7, 6, 8, 3, 1, 1, "relu6"),
    (1, 13, 13, 11, 3, 24, 5, 2, 1, "hardswish"),
    (2, 16, 5, 5, 1, 8, 3, 1, 1, "relu6"),
    (1, 16, 1, 1, 4, 16, 3, 1, 1, "hardswish"),
    (1, 24, 9, 9, 2, 24, 5, 1, 2, "relu"),
    (2, 5, 6, 7, 6, 7, 3, 2, 1, "relu6"),
]


def make_block(N, Cin, H, W, t, Cout, k, s, d, act, layout, dtype, device):
    Chid = Cin * t
    x = make_input((N, Cin, H, W), layout, dtype, device)
    w = lambda *shape, scale=1.0: (torch.randn(*shape, device=device) * scale).to(dtype)  # noqa: E731
    we, be = (w(Chid, Cin, 1, 1, scale=Cin**-0.5), w(Chid)) if t != 1 else (None, None)
    params = (we, be, w(Chid, 1, k, k, scale=1 / k), w(Chid), w(Cout, Chid, 1, 1, scale=Chid**-0.5), w(Cout))
    return x, params, dict(stride=s, dilation=d, activation=act, residual=s == 1 and Cin == Cout)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_op_by_op_reference(backend, layout, dtype, device):
    skip_unless_usable(backend, device)
    # float64 on a GPU: the reference runs on the CPU, whose ATen hardswish/hardsigmoid divide by 6
    # in float64 (ATen's CUDA ones multiply by a float32 1/6: through a block's two activations and
    # project conv, 1.5e-7 from ours on an H200, GPU run 5). The "torch" backend is that CUDA ATen
    # code itself: its reference runs beside it, on the GPU.
    ref_device = "cpu" if dtype == torch.float64 and backend != "torch" else device
    for block in BLOCKS:
        tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        x, params, kw = make_block(*block, layout, dtype, device)
        y = MF.inverted_residual_eval(x, *params, kw["stride"], kw["dilation"], activation=kw["activation"],
                                      residual=kw["residual"], backend=backend)
        on_ref = lambda t: None if t is None else t.to(ref_device)  # noqa: E731
        ref = inverted_residual_eval_ref(on_ref(x), *map(on_ref, params), kw["stride"], kw["dilation"],
                                         kw["activation"], kw["residual"], upcast=True)
        torch.testing.assert_close(y, ref.to(device), **tol)
        assert y.dtype == dtype
        channels_last = layout == "channels_last" and y.shape[2] * y.shape[3] > 1
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


# Real block widths, for the GPU kernels' tilings: hidden channels over several chunks, 64 < Cout <=
# 512 (the CUDA kernel's 2, 4 and 8 channel groups per thread), halos of k5 at stride 2 and of
# dilation 2, MobileNetV2's widest block. GPU only: under the interpreter they take minutes.
WIDE_BLOCKS = [
    (4, 64, 14, 14, 6, 96, 3, 1, 1, "relu6"),
    (2, 40, 28, 28, 6, 80, 5, 2, 1, "hardswish"),
    (2, 112, 14, 14, 6, 160, 5, 1, 2, "hardswish"),
    (2, 160, 7, 7, 6, 320, 3, 1, 1, "relu6"),
    (3, 96, 9, 11, 6, 200, 3, 1, 1, "relu"),
    (2, 160, 7, 7, 3, 512, 3, 1, 1, "relu6"),
]


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wide_blocks_match_op_by_op_reference_on_gpu(backend, layout, dtype, device):
    if device == "cpu":
        pytest.skip("GPU tilings of real block widths (the small BLOCKS cover the CPU kernels)")
    skip_unless_usable(backend, device)
    for block in WIDE_BLOCKS:
        x, params, kw = make_block(*block, layout, dtype, device)
        args = (kw["stride"], kw["dilation"], kw["activation"], kw["residual"])
        y = MF.inverted_residual_eval(x, *params, *args[:2], activation=args[2], residual=args[3], backend=backend)
        ref = inverted_residual_eval_ref(x.double(), *(None if p is None else p.double() for p in params), *args)
        if dtype == torch.float32:
            # IEEE float32 on both backends; sums over up to 960 hidden channels
            torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4, msg=str(block))
        else:
            assert_within_2x_torch([y], [inverted_residual_eval_ref(x, *params, *args)], [ref], ["output"], str(block))


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_low_precision_error_within_2x_torch(backend, dtype, layout, device):
    """Our fp16/bf16 error against float64 stays within 2x that of the op-by-op PyTorch sequence in
    that dtype on the same inputs (which rounds every intermediate tensor)."""
    skip_unless_usable(backend, device)
    if dtype == torch.float16 and device == "cpu":
        pytest.skip("PyTorch has no float16 depthwise conv on CPU to compare with")
    for block in BLOCKS:
        x, params, kw = make_block(*block, layout, dtype, device)
        args = (kw["stride"], kw["dilation"], kw["activation"], kw["residual"])
        y = MF.inverted_residual_eval(x, *params, *args[:2], activation=args[2], residual=args[3], backend=backend)
        ref = inverted_residual_eval_ref(x.double(), *(None if p is None else p.double() for p in params), *args)
        assert y.dtype == dtype
        assert_within_2x_torch([y], [inverted_residual_eval_ref(x, *params, *args)], [ref], ["output"], str(block))


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(backend, layout, device):
    skip_unless_usable(backend, device)
    op = ns.inverted_residual_eval_triton if backend == "triton" else ns.inverted_residual_eval
    for block in (BLOCKS[0], BLOCKS[1], BLOCKS[2]):
        x, params, kw = make_block(*block, layout, torch.float32, device)
        torch.library.opcheck(op, (x, *params, kw["stride"], kw["dilation"], kw["activation"], kw["residual"]))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_is_bitwise_deterministic(layout, dtype):
    """Two runs of the C++ CPU kernel give the same bits: a block large enough for several bands
    per image (tasks of the parallel loop), with and without an expand conv."""
    skip_unless_usable("cuda", "cpu")
    for block in [(3, 24, 40, 36, 6, 24, 3, 1, 1, "relu6"), (2, 32, 33, 30, 1, 16, 3, 2, 1, "hardswish")]:
        x, params, kw = make_block(*block, layout, dtype, "cpu")
        args = (x, *params, kw["stride"], kw["dilation"], kw["activation"], kw["residual"])
        assert_bitwise_repeatable(lambda: [ns.inverted_residual_eval(*args)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, device):
    skip_unless_usable(backend, device)
    torch._dynamo.reset()
    x, params, kw = make_block(*BLOCKS[0], "channels_last", torch.float32, device)

    def fn(x, *params):
        return MF.inverted_residual_eval(x, *params, 1, 1, activation="relu6", residual=True, backend=backend) * 2

    with torch.no_grad():
        torch.testing.assert_close(torch.compile(fn, fullgraph=True)(x, *params), fn(x, *params))


def test_refuses_inputs_that_need_grad():
    x, params, kw = make_block(*BLOCKS[0], "nchw", torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="inference only"):
        MF.inverted_residual_eval(x.requires_grad_(), *params, 1, 1, residual=True, backend="torch")


def _bad_cases():
    x, (we, be, wd, bd, wp, bp), _ = make_block(*BLOCKS[0], "nchw", torch.float32, "cpu")
    good = dict(input=x, expand_weight=we, expand_bias=be, dw_weight=wd, dw_bias=bd, project_weight=wp,
                project_bias=bp, stride=1, dilation=1, activation="relu6", residual=True)
    return good, [
        (dict(expand_weight=torch.randn(48, 7, 1, 1)), ValueError, "expand_weight"),
        (dict(expand_bias=None), ValueError, "expand_bias"),
        (dict(dw_weight=torch.randn(48, 1, 4, 4)), ValueError, "dw_weight"),
        (dict(dw_weight=torch.randn(40, 1, 3, 3)), ValueError, "dw_weight"),
        (dict(dw_bias=torch.randn(48).double()), TypeError, "dw_bias"),
        (dict(project_weight=torch.randn(8, 40, 1, 1)), ValueError, "project_weight"),
        (dict(project_bias=torch.randn(9)), ValueError, "project_bias"),
        (dict(stride=0), ValueError, "stride"),
        (dict(dilation=0), ValueError, "dilation"),
        (dict(stride=2), ValueError, "residual"),
        (dict(activation="gelu"), ValueError, "activation"),
        (dict(input=torch.randn(8, 7, 7)), ValueError, "input"),
        (dict(input=torch.randn(2, 0, 7, 7), expand_weight=torch.randn(48, 0, 1, 1)), ValueError,
         "input: expected at least one channel"),
        (dict(input=torch.randint(0, 3, (2, 8, 7, 7))), TypeError, "input"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(_bad_cases()[1])))
def test_bad_arguments_name_the_argument(backend, case):
    skip_unless_usable(backend, "cpu")
    good, cases = _bad_cases()
    change, exc, match = cases[case]
    a = {**good, **change}
    with pytest.raises(exc, match=match):
        MF.inverted_residual_eval(a["input"], a["expand_weight"], a["expand_bias"], a["dw_weight"], a["dw_bias"],
                                  a["project_weight"], a["project_bias"], a["stride"], a["dilation"],
                                  activation=a["activation"], residual=a["residual"], backend=backend)


@pytest.mark.parametrize("case", range(len(_bad_cases()[1])))
def test_cpp_op_checks_name_the_argument(case):
    """Direct torch.ops calls get the same errors from the C++ checks (csrc/inverted_residual.h)."""
    skip_unless_usable("cuda", "cpu")
    good, cases = _bad_cases()
    change, exc, match = cases[case]
    a = {**good, **change}
    with pytest.raises(exc, match=match):
        ns.inverted_residual_eval(a["input"], a["expand_weight"], a["expand_bias"], a["dw_weight"], a["dw_bias"],
                                  a["project_weight"], a["project_bias"], a["stride"], a["dilation"],
                                  a["activation"], a["residual"])


# ----------------------------------------------------------------------------- in the modules


def _randomize_bn(module):
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.normal_(1, 0.2)
            m.bias.data.normal_(0, 0.2)


@pytest.mark.parametrize("make", [
    lambda b: InvertedResidual(8, 8, 1, 6, backend=b),
    lambda b: InvertedResidual(16, 24, 2, 1, backend=b),
    lambda b: InvertedResidualV3(16, 48, 16, 5, 1, 1, "hardswish", backend=b),
    lambda b: InvertedResidualV3(16, 48, 24, 3, 2, 1, "relu", 16, backend=b),  # with SE: op by op
], ids=["v2-residual", "v2-no-expand-s2", "v3-k5", "v3-se"])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_eval_block_uses_the_whole_block_kernel_and_matches(make, backend, device, monkeypatch):
    skip_unless_usable(backend, device)
    # on CUDA tensors the "cuda" backend uses its block kernel only when asked (slower, GPU run 4)
    monkeypatch.setattr(ir_module, "USE_CUDA_BLOCK_KERNEL", True)
    block, reference = make(backend).to(device).double(), make("torch").to(device).double()
    _randomize_bn(block)
    reference.load_state_dict(block.state_dict())
    block.eval(), reference.eval()
    x = torch.randn(2, block._parts()[0][0][0].in_channels, 9, 9, dtype=torch.float64, device=device)
    with torch.no_grad():
        fused = block._whole_block_eval(x)
        y, y_ref = block(x), reference(x)
    expanded_side = block._parts()[0]
    has_se = any(not hasattr(m, "__getitem__") for m in expanded_side)
    # the C++ CPU block kernel is used where it measured faster: an expand conv and k3 or k5
    cpu_pays = len(expanded_side) == 2 and expanded_side[-1][0].kernel_size in ((3, 3), (5, 5))
    expected = not has_se and (backend == "triton" or device != "cpu" or cpu_pays)
    assert (fused is not None) == expected
    # V3 blocks run hardswish (or hardsigmoid in the SE), which ATen rounds through float32 on CUDA
    tol = float64_tolerance("hardswish" if isinstance(block, InvertedResidualV3) else "relu", device)
    torch.testing.assert_close(y, y_ref, **tol)
    # with a gradient needed, the block runs op by op (the whole-block kernel has no backward)
    x.requires_grad_()
    assert block._whole_block_eval(x) is None
    block.requires_grad_(False)
    assert block._whole_block_eval(x) is None
    torch.testing.assert_close(block(x), reference(x), **tol)
