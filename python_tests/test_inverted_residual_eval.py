"""inverted_residual_eval, the whole-block eval kernel: parity with the op-by-op reference per
layout x dtype x backend, odd shapes, low-precision error bounds, opcheck, compile, bad input, and
its use by the nn blocks (eval with no gradient) and whole models."""

import pytest
import torch

import mobilenet_kernels.functional as MF
import mobilenet_kernels.nn.inverted_residual as ir_module
from mobilenet_kernels.nn import InvertedResidual, InvertedResidualV3, SqueezeExcitation
from mobilenet_kernels.reference import inverted_residual_eval_ref

from conftest import BACKENDS, skip_unless_usable
from op_helpers import (assert_bad_arguments_name_the_argument, assert_bitwise_repeatable, assert_within_2x_torch,
                        float64_tolerance, make_input)

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


# ----------------------------------------------------------------------------- squeeze-excite blocks
# (N, Cin, H, W, expand ratio, Cout, k, stride, dilation, activation, squeeze channels): V3's SE blocks
# scaled down (V3-Small's first block has no expand conv and SE at stride 2), H = W = 1, odd sizes,
# 13 x 13 (several tiles and bands per image), channels not a multiple of 8.
SE_BLOCKS = [
    (2, 8, 7, 7, 3, 8, 5, 1, 1, "hardswish", 8),
    (2, 16, 9, 9, 1, 8, 3, 2, 1, "relu", 8),
    (1, 5, 13, 13, 3, 7, 3, 1, 1, "hardswish", 3),
    (2, 8, 1, 1, 6, 8, 5, 1, 1, "hardswish", 12),
    (1, 6, 11, 9, 2, 6, 3, 1, 2, "relu", 4),
]


def make_se_block(N, Cin, H, W, t, Cout, k, s, d, act, S, layout, dtype, device, se_dtype=None):
    """make_block's block with a squeeze-excite of S channels on its Cin * t hidden ones; kwargs
    for functional.inverted_residual_eval."""
    x, params, kw = make_block(N, Cin, H, W, t, Cout, k, s, d, act, layout, dtype, device)
    Chid = Cin * t
    w = lambda *shape, scale=1.0: (torch.randn(*shape, device=device) * scale).to(se_dtype or dtype)  # noqa: E731
    kw["se"] = (w(S, Chid, 1, 1, scale=Chid**-0.5), w(S), w(Chid, S, 1, 1, scale=S**-0.5), w(Chid))
    return x, params, kw


def _reference(x, params, kw, in_float64=True):
    """The op-by-op block with every tensor in float64, or (in_float64=False) in the given dtypes."""
    f64 = (lambda t: None if t is None else t.double()) if in_float64 else (lambda t: t)  # noqa: E731
    return inverted_residual_eval_ref(f64(x), *map(f64, params), kw["stride"], kw["dilation"], kw["activation"],
                                      kw["residual"], *map(f64, kw.get("se", (None,) * 4)))


def _run(x, params, kw, backend):
    return MF.inverted_residual_eval(x, *params, **kw, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_se_blocks_match_op_by_op_reference(backend, layout, dtype, device):
    """Blocks with a squeeze-excite (two passes of the block kernel, the excite step between) against
    the op-by-op reference in float64."""
    skip_unless_usable(backend, device)
    for block in SE_BLOCKS:
        x, params, kw = make_se_block(*block, layout, dtype, device)
        y = _run(x, params, kw, backend)
        tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        if dtype == torch.float64 and device != "cpu":
            tol = float64_tolerance("hardswish", device)  # ATen's CUDA hardsigmoid rounds through float32
        torch.testing.assert_close(y, _reference(x, params, kw).to(dtype), **tol, msg=str(block))
        channels_last = layout == "channels_last" and y.shape[2] * y.shape[3] > 1
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_se_blocks_low_precision_error_within_2x_torch(backend, dtype, device):
    """fp16/bf16 with float32 squeeze-excite parameters (as under autocast): error against float64
    within 2x that of the op-by-op sequence in that dtype."""
    skip_unless_usable(backend, device)
    if dtype == torch.float16 and device == "cpu":
        pytest.skip("PyTorch has no float16 depthwise conv on CPU to compare with")
    for block in SE_BLOCKS:
        x, params, kw = make_se_block(*block, "channels_last", dtype, device, se_dtype=torch.float32)
        y = _run(x, params, kw, backend)
        assert y.dtype == dtype
        assert_within_2x_torch([y], [_reference(x, params, kw, in_float64=False)], [_reference(x, params, kw)],
                               ["output"], str(block))


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_se_block_opcheck(backend, device):
    skip_unless_usable(backend, device)
    op = ns.inverted_residual_eval_triton if backend == "triton" else ns.inverted_residual_eval
    for block in SE_BLOCKS[:2]:
        x, params, kw = make_se_block(*block, "channels_last", torch.float32, device)
        torch.library.opcheck(op, (x, *params, kw["stride"], kw["dilation"], kw["activation"], kw["residual"],
                                   *kw["se"], "relu", "hardsigmoid"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_se_block_cpu_kernel_is_bitwise_deterministic(dtype):
    """The C++ CPU kernel's two passes, with several bands per image: the same bits on every run."""
    skip_unless_usable("cuda", "cpu")
    x, params, kw = make_se_block(3, 24, 40, 36, 4, 24, 5, 1, 1, "hardswish", 16, "channels_last", dtype, "cpu")
    assert_bitwise_repeatable(lambda: [_run(x, params, kw, "cuda")])


@pytest.mark.parametrize("backend", BACKENDS)
def test_se_block_torch_compile_fullgraph(backend, device):
    skip_unless_usable(backend, device)
    torch._dynamo.reset()
    x, params, kw = make_se_block(*SE_BLOCKS[0], "channels_last", torch.float32, device)
    se = kw.pop("se")

    def fn(x, *tensors):
        return MF.inverted_residual_eval(x, *tensors[:6], **kw, se=tensors[6:], backend=backend) * 2

    with torch.no_grad():
        torch.testing.assert_close(torch.compile(fn, fullgraph=True)(x, *params, *se), fn(x, *params, *se))


def _se_bad_cases():
    x, params, kw = make_se_block(*SE_BLOCKS[0], "nchw", torch.float32, "cpu")
    w1, b1, w2, b2 = kw["se"]  # Chid = 24, S = 8
    return (x, params, kw), [
        (dict(se_fc1_bias=None), ValueError, "expected all four or none"),
        (dict(se_fc1_weight=torch.randn(8, 23, 1, 1)), ValueError, "se_fc1_weight"),
        (dict(se_fc1_bias=torch.randn(7)), ValueError, "se_fc1_bias"),
        (dict(se_fc2_weight=torch.randn(24, 8, 3, 3)), ValueError, "se_fc2_weight"),
        (dict(se_fc2_bias=torch.randn(23)), ValueError, "se_fc2_bias"),
        (dict(se_fc2_bias=b2.double()), TypeError, "se_fc2_bias"),
        (dict(se_fc1_weight=w1.to(torch.int32)), TypeError, "se_fc1_weight"),
        (dict(se_activation="gelu"), ValueError, "se_activation"),
        (dict(se_scale_activation="softmax"), ValueError, "se_scale_activation"),
    ]


def _se_call(fn, good, change):
    """fn(x, *params, stride, dilation, activation, residual, *se, se_activation, se_scale_activation)
    with the good arguments, ``change`` applied."""
    x, params, kw = good
    names = ("se_fc1_weight", "se_fc1_bias", "se_fc2_weight", "se_fc2_bias")
    se = [change.get(n, t) for n, t in zip(names, kw["se"])]
    acts = [change.get("se_activation", "relu"), change.get("se_scale_activation", "hardsigmoid")]
    return fn(x, *params, kw["stride"], kw["dilation"], kw["activation"], kw["residual"], *se, *acts)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(_se_bad_cases()[1])))
def test_se_bad_arguments_name_the_argument(backend, case):
    skip_unless_usable(backend, "cpu")
    good, cases = _se_bad_cases()
    change, exc, match = cases[case]

    def functional(x, we, be, wd, bd, wp, bp, stride, dilation, act, residual, *se):
        return MF.inverted_residual_eval(x, we, be, wd, bd, wp, bp, stride, dilation, activation=act,
                                         residual=residual, se=se[:4], se_activation=se[4],
                                         se_scale_activation=se[5], backend=backend)

    with pytest.raises(exc, match=match):
        _se_call(functional, good, change)
    if backend == "triton":  # the Triton op's own check, for direct torch.ops calls
        with pytest.raises(exc, match=match):
            _se_call(ns.inverted_residual_eval_triton, good, change)


@pytest.mark.parametrize("case", range(len(_se_bad_cases()[1])))
def test_se_cpp_op_checks_name_the_argument(case):
    """Direct torch.ops calls get the same errors from the C++ checks (csrc/inverted_residual.h)."""
    skip_unless_usable("cuda", "cpu")
    good, cases = _se_bad_cases()
    change, exc, match = cases[case]
    with pytest.raises(exc, match=match):
        _se_call(ns.inverted_residual_eval, good, change)


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

    def call(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, stride, dilation,
             activation, residual):
        return MF.inverted_residual_eval(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                         project_bias, stride, dilation, activation=activation, residual=residual,
                                         backend=backend)

    assert_bad_arguments_name_the_argument(call, *_bad_cases(), case)


@pytest.mark.parametrize("case", range(len(_bad_cases()[1])))
def test_cpp_op_checks_name_the_argument(case):
    """Direct torch.ops calls get the same errors from the C++ checks (csrc/inverted_residual.h)."""
    skip_unless_usable("cuda", "cpu")

    def call(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, stride, dilation,
             activation, residual):
        return ns.inverted_residual_eval(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                         project_bias, stride, dilation, activation, residual)

    assert_bad_arguments_name_the_argument(call, *_bad_cases(), case)


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
    lambda b: InvertedResidualV3(16, 48, 24, 3, 2, 1, "relu", 16, backend=b),
    lambda b: InvertedResidualV3(16, 48, 16, 5, 1, 1, "hardswish", 12, backend=b),
    lambda b: InvertedResidualV3(16, 16, 16, 3, 2, 1, "relu", 8, backend=b),  # V3-Small's first: no expand conv
], ids=["v2-residual", "v2-no-expand-s2", "v3-k5", "v3-se-s2", "v3-se-k5-residual", "v3-se-no-expand"])
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
    convs = [m for m in block._parts()[0] if not isinstance(m, SqueezeExcitation)]  # (expand,) dw
    # the C++ CPU block kernel is used where it measured faster: an expand conv, k3 or k5
    # (benchmarks/results/inverted_residual_cpu*.json)
    cpu_pays = len(convs) == 2 and convs[-1][0].kernel_size in ((3, 3), (5, 5))
    expected = backend == "triton" or device != "cpu" or cpu_pays
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
