"""MobileNet V1/V2/V3 models: torchvision-compatible state_dicts, parameter counts, eval and
training parity with torchvision (V2, V3) or an independent plain-PyTorch V1, for every backend."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import mobilenet_kernels as mk
from mobilenet_kernels.models import MobileNetV1, MobileNetV2, MobileNetV3, set_backend
from mobilenet_kernels.nn import BatchNormAct2d

from conftest import BACKENDS, DEVICES, skip_unless_usable
from model_helpers import (
    TORCHVISION,
    PlainMobileNetV1,
    assert_eval_parity,
    assert_same_gradients,
    assert_same_training,
    bn_activations,
    eval_cases,
    eval_shape,
    randomize_batch_norms,
    randomize_bn_parameters,
)

OURS = {
    "mobilenet_v2": mk.mobilenet_v2,
    "mobilenet_v3_large": mk.mobilenet_v3_large,
    "mobilenet_v3_small": mk.mobilenet_v3_small,
}


# ---------------------------------------------------------------------------------------------
# state_dict compatibility with torchvision

STATE_DICT_CASES = [
    ("mobilenet_v2", {}),
    ("mobilenet_v2", {"width_mult": 0.75}),
    ("mobilenet_v2", {"width_mult": 1.4, "num_classes": 10}),
    ("mobilenet_v2", {"width_mult": 0.35, "round_nearest": 4}),
    ("mobilenet_v3_large", {}),
    ("mobilenet_v3_large", {"width_mult": 0.75}),
    ("mobilenet_v3_large", {"reduced_tail": True}),
    ("mobilenet_v3_large", {"dilated": True}),
    ("mobilenet_v3_large", {"num_classes": 10, "width_mult": 0.5, "reduced_tail": True, "dilated": True}),
    ("mobilenet_v3_small", {}),
    ("mobilenet_v3_small", {"width_mult": 0.75}),
    ("mobilenet_v3_small", {"reduced_tail": True, "dilated": True}),
    ("mobilenet_v3_small", {"num_classes": 10}),
]


@pytest.mark.parametrize(
    "arch,kwargs",
    [pytest.param(a, kw, id="-".join([a] + [f"{k}={v}" for k, v in kw.items()])) for a, kw in STATE_DICT_CASES],
)
def test_state_dict_matches_torchvision(arch, kwargs):
    torch.manual_seed(0)
    ours = OURS[arch](**kwargs)
    tv = TORCHVISION[arch](**kwargs)
    ours_sd, tv_sd = ours.state_dict(), tv.state_dict()
    assert list(ours_sd) == list(tv_sd)
    assert {k: (v.shape, v.dtype) for k, v in ours_sd.items()} == {k: (v.shape, v.dtype) for k, v in tv_sd.items()}

    # torchvision -> ours, strict, and the values really arrive.
    randomize_batch_norms(tv, size=32)
    ours.load_state_dict(tv.state_dict(), strict=True)
    for key, value in tv.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key

    # ours -> torchvision, strict.
    tv2 = TORCHVISION[arch](**kwargs)
    tv2.load_state_dict(ours.state_dict(), strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(tv2.state_dict()[key], value), key


@pytest.mark.parametrize("arch", list(OURS))
def test_structure_matches_torchvision(arch):
    """Every torchvision BatchNorm is a BatchNormAct2d here, holding the activation that followed
    it; no BatchNorm is followed by an activation module; torchvision's block attributes exist."""
    torch.manual_seed(0)
    ours, tv = OURS[arch](backend="torch"), TORCHVISION[arch]()
    expected = bn_activations(tv)
    got = {name: m.activation for name, m in ours.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert got == expected
    for name, m in ours.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert type(m) is BatchNormAct2d, name
            assert (m.eps, m.momentum) == ((1e-3, 0.01) if arch.startswith("mobilenet_v3") else (1e-5, 0.1))
    # No activation module directly after a BatchNorm.
    assert bn_activations(ours) == {k: "identity" for k in expected}

    tv_blocks = [m for m in tv.features if hasattr(m, "use_res_connect")]
    our_blocks = [m for m in ours.features if hasattr(m, "use_res_connect")]
    assert len(our_blocks) == len(tv_blocks) > 0
    for a, b in zip(our_blocks, tv_blocks):
        assert (a.use_res_connect, a.out_channels, a._is_cn) == (b.use_res_connect, b.out_channels, b._is_cn)


@pytest.mark.parametrize("arch", list(OURS))
def test_same_init_as_torchvision(arch):
    """Same construction order and torchvision's init: the same seed gives the same weights."""
    torch.manual_seed(123)
    ours = OURS[arch]()
    torch.manual_seed(123)
    tv = TORCHVISION[arch]()
    for (key, a), b in zip(ours.state_dict().items(), tv.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)


# ---------------------------------------------------------------------------------------------
# parameter counts


@pytest.mark.parametrize(
    "builder,kwargs,count",
    [
        (mk.mobilenet_v1, {"width_mult": 1.0}, 4_231_976),
        (mk.mobilenet_v1, {"width_mult": 0.75}, 2_585_560),
        (mk.mobilenet_v1, {"width_mult": 0.5}, 1_331_592),
        (mk.mobilenet_v1, {"width_mult": 0.25}, 470_072),
        (mk.mobilenet_v2, {}, 3_504_872),
        (mk.mobilenet_v3_large, {}, 5_483_032),
        (mk.mobilenet_v3_small, {}, 2_542_856),
    ],
    ids=["v1-1.0", "v1-0.75", "v1-0.5", "v1-0.25", "v2", "v3-large", "v3-small"],
)
def test_parameter_count(builder, kwargs, count):
    model = builder(**kwargs)
    assert sum(p.numel() for p in model.parameters()) == count


# ---------------------------------------------------------------------------------------------
# eval parity (fp32) with torchvision, every backend and device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch,backend", eval_cases(OURS))
def test_eval_parity_with_torchvision(arch, backend, device):
    skip_unless_usable(backend, device)
    torch.manual_seed(0)
    tv = TORCHVISION[arch]()
    randomize_batch_norms(tv)
    ours = OURS[arch](backend=backend)
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert_eval_parity(ours, tv, eval_shape(backend, device), device)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_mode_gradients_float64(backend):
    """Fine-tuning with frozen BatchNorm statistics (eval mode, autograd through the fused eval
    kernels): output, input and parameter gradients match torchvision in float64."""
    skip_unless_usable(backend, "cpu")
    torch.manual_seed(0)
    arch = "mobilenet_v3_small"
    tv = TORCHVISION[arch](dropout=0.0)
    randomize_batch_norms(tv)
    ours = OURS[arch](dropout=0.0, backend=backend)
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.double().eval()
    ours.double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    assert_same_gradients(ours, tv, x)


# ---------------------------------------------------------------------------------------------
# training parity (float64): two SGD steps


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", list(OURS))
def test_training_parity_float64(arch, backend):
    skip_unless_usable(backend, "cpu")
    torch.manual_seed(0)
    tv = TORCHVISION[arch](num_classes=10, dropout=0.0)
    randomize_batch_norms(tv)
    ours = OURS[arch](num_classes=10, dropout=0.0, backend=backend)
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert_same_training(ours, tv)
    assert all(isinstance(m, BatchNormAct2d) for m in ours.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_recompute_training_parity_float64(arch):
    """recompute=True (the builders' argument): the blocks recompute their expanded tensors in
    backward, and the model still trains like torchvision (outputs, gradients, running stats)."""
    skip_unless_usable("cuda", "cpu")
    torch.manual_seed(0)
    tv = TORCHVISION[arch](num_classes=10, dropout=0.0)
    randomize_batch_norms(tv)
    ours = OURS[arch](num_classes=10, dropout=0.0, backend="cuda", recompute=True)
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert all(m.recompute for m in ours.features if hasattr(m, "use_res_connect"))
    assert_same_training(ours, tv)


# ---------------------------------------------------------------------------------------------
# MobileNet V1


def test_mobilenet_v1_structure():
    model = mk.mobilenet_v1(backend="torch")
    assert isinstance(model, MobileNetV1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 27  # + the FC layer: the paper's 28 layers
    assert [m.stride[0] for m in convs if m.groups > 1] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    assert [m.out_channels for m in convs if m.groups == 1] == [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024, 1024]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 27 and all(type(m) is BatchNormAct2d and m.activation == "relu" for m in bns)
    assert model.classifier[0].p == 0.001 and model.classifier[1].in_features == 1024
    with torch.no_grad():
        assert model.features(torch.randn(1, 3, 224, 224)).shape == (1, 1024, 7, 7)  # output stride 32


@pytest.mark.parametrize("alpha", [1.0, 0.75, 0.5, 0.25])
def test_mobilenet_v1_width_rounding(alpha):
    """The channel rule: _make_divisible(c * alpha, 8); at the paper's alphas, int(c * alpha)."""
    ours = mk.mobilenet_v1(width_mult=alpha)
    ref = PlainMobileNetV1(alpha)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_mobilenet_v1_eval_parity(backend):
    skip_unless_usable(backend, "cpu")
    torch.manual_seed(0)
    alpha, size = (0.25, 32) if backend == "triton" else (0.5, 64)
    ref = PlainMobileNetV1(alpha, num_classes=10)
    randomize_batch_norms(ref)
    ours = mk.mobilenet_v1(width_mult=alpha, num_classes=10, backend=backend)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert_eval_parity(ours, ref, (1 if backend == "triton" else 2, 3, size, size))


@pytest.mark.parametrize("backend", BACKENDS)
def test_mobilenet_v1_training_parity_float64(backend):
    skip_unless_usable(backend, "cpu")
    torch.manual_seed(0)
    ref = PlainMobileNetV1(0.25, num_classes=10)
    randomize_batch_norms(ref)
    ours = mk.mobilenet_v1(width_mult=0.25, num_classes=10, dropout=0.0, backend=backend)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert_same_training(ours, ref)


@pytest.mark.parametrize("size", [96, 128, 160, 224])
def test_mobilenet_v1_resolution_multiplier(size):
    """rho is just the input size: the same weights run at every resolution."""
    torch.manual_seed(0)
    model = mk.mobilenet_v1(num_classes=10, width_mult=0.5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# argument checking and backends

ALL_BUILDERS = [mk.mobilenet_v1, mk.mobilenet_v2, mk.mobilenet_v3_large, mk.mobilenet_v3_small]


@pytest.mark.parametrize("builder", ALL_BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("width_mult", [0, -1, 0.0, float("nan")])
def test_invalid_width_mult(builder, width_mult):
    with pytest.raises(ValueError, match="width_mult"):
        builder(width_mult=width_mult)


@pytest.mark.parametrize("builder", ALL_BUILDERS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("num_classes", [0, -3])
def test_invalid_num_classes(builder, num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        builder(num_classes=num_classes)


@pytest.mark.parametrize("builder", ALL_BUILDERS, ids=lambda b: b.__name__)
def test_invalid_backend(builder):
    with pytest.raises(ValueError, match="backend"):
        builder(backend="tpu")


def test_builders_are_keyword_only():
    for builder in ALL_BUILDERS:
        with pytest.raises(TypeError):
            builder(10)


@pytest.mark.parametrize("builder", ALL_BUILDERS, ids=lambda b: b.__name__)
def test_backend_passed_down_and_set_backend(builder):
    model = builder(backend="torch", width_mult=0.25)
    bn_act = [m for m in model.modules() if isinstance(m, BatchNormAct2d)]
    assert bn_act and all(m.backend == "torch" for m in bn_act)
    assert set_backend(model, "cuda") is model
    assert all(m.backend == "cuda" for m in bn_act)
    set_backend(model, None)
    assert all(m.backend is None for m in bn_act)
    with pytest.raises(ValueError, match="backend"):
        set_backend(model, "opencl")
    assert all(m.backend is None for m in bn_act)
    assert isinstance(model, (MobileNetV1, MobileNetV2, MobileNetV3))


def test_models_exported():
    import mobilenet_kernels.models as models

    for name in ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "set_backend",
                 "set_recompute", "MobileNetV1", "MobileNetV2", "MobileNetV3"]:
        assert name in models.__all__ and hasattr(models, name)
    assert mk.mobilenet_v2 is models.mobilenet_v2
    # The blocks and ConvBNAct moved to mobilenet_kernels.nn; the old names still import.
    from mobilenet_kernels.models._layers import ConvBNAct
    from mobilenet_kernels.models.mobilenet_v2 import InvertedResidual as V2Block
    from mobilenet_kernels.models.mobilenet_v3 import InvertedResidual as V3Block

    assert (ConvBNAct, V2Block, V3Block) == (mk.nn.ConvBNAct, mk.nn.InvertedResidual, mk.nn.InvertedResidualV3)


def test_default_backend_forward():
    """backend=None picks the fastest usable backend per tensor and still matches torchvision."""
    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v3_small()
    randomize_batch_norms(tv)
    ours = mk.mobilenet_v3_small()
    ours.load_state_dict(tv.state_dict())
    assert_eval_parity(ours, tv, (2, 3, 64, 64))


def test_deepcopy_and_state_dict_roundtrip():
    torch.manual_seed(0)
    model = mk.mobilenet_v3_small(backend="torch", num_classes=10)
    clone = copy.deepcopy(model)
    assert all(m.backend == "torch" for m in clone.modules() if isinstance(m, BatchNormAct2d))
    fresh = mk.mobilenet_v3_small(num_classes=10, backend="torch")
    fresh.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), clone.eval()(x), rtol=0, atol=0)


class _Casts(TorchDispatchMode):
    """The tensors that ``aten._to_copy`` (a dtype cast: a copy kernel and its host time) reads."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.sources.append(args[0])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("arch", list(OURS))
def test_autocast_inference_casts_no_folded_weight(arch, device):
    """An eval model under autocast keeps each fold in the autocast dtype
    (conv_bn_act.folded_conv_weights), so after the first call it casts only the image and the
    classifier's nn.Linear parameters, where autocast casts torchvision's conv weights anew in each
    autocast region (before this, ours cast 3 tensors per fused op at every call, over 120 per
    V3-Large inference: GPU run 7 put a launch and ~35 us of the H200 host's time on each)."""
    skip_unless_usable("cuda", device)
    torch.manual_seed(0)
    model = OURS[arch](width_mult=0.5, num_classes=10, backend="cuda").to(device).eval()
    randomize_bn_parameters(model)
    x = torch.randn(1, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    dtype = torch.bfloat16
    with torch.no_grad(), torch.autocast(device, dtype=dtype):
        first = model(x)
        with _Casts() as casts:
            second = model(x)
    allowed = {x.data_ptr()} | {p.data_ptr() for p in model.classifier.parameters()}
    stray = [tuple(t.shape) for t in casts.sources if t.data_ptr() not in allowed]
    assert not stray, f"weights cast at every call: {stray}"
    assert second.dtype == dtype and torch.equal(first, second)


@pytest.mark.gpu_suite
@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_large"])
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_batch1_inference(arch, backend):
    """Batch-1 inference captured in a CUDA graph (torch.cuda.graph) and replayed on new inputs gives
    the eager outputs: every kernel launches on the current stream and allocates through the caching
    allocator, and the eval folds are computed in the warm-up, not in the captured region."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    skip_unless_usable(backend, "cuda")
    torch.manual_seed(0)
    model = OURS[arch](backend=backend)
    randomize_bn_parameters(model)
    model = model.cuda().eval().to(memory_format=torch.channels_last)
    static = torch.randn(1, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # JIT compilation, autotuning and the folds happen here
                model(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(static)
        for _ in range(2):
            x = torch.randn_like(static)
            static.copy_(x)
            graph.replay()
            torch.testing.assert_close(static_out, model(x))  # a stale or wrong replay is far off
