"""Launch-config tuning of the Triton kernels (mobilenet_kernels/triton/_tuning.py).

The tuner may only choose among configs with identical numerics, so these tests run every candidate
config of each tuned launch (the GPU candidates too, under the interpreter on CPU) and require the
same bits from all of them; and they check the tuner's bookkeeping with a fake timer: the fastest
candidate wins and is remembered per key, the heuristic runs untimed where tuning is off.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import skip_unless_usable
from op_helpers import make_input

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _triton_usable():
    skip_unless_usable("triton", "cpu")


def _tuning():
    from mobilenet_kernels.triton import _tuning

    return _tuning


class FakeBench:
    """A timer that runs each candidate once and reports the time given for it (by config)."""

    def __init__(self, times):
        self.times = times
        self.timed = []

    def __call__(self, fn):
        fn()
        self.timed.append(self.current)
        return self.times[self.current]


def _tuner_with(times):
    bench = FakeBench(times)
    tuner = _tuning().LaunchTuner("test", bench=bench)
    runs = []

    def run(cfg):
        bench.current = cfg
        runs.append(cfg)

    return tuner, bench, runs, run


def test_tuner_picks_the_fastest_and_remembers_it_per_key():
    tuner, bench, runs, run = _tuner_with({"a": 3.0, "b": 1.0, "c": 2.0})
    assert tuner.launch("k1", ["a", "b", "c"], run, tune=True) == "b"
    assert bench.timed == ["a", "b", "c"] and runs == ["a", "b", "c", "b"]  # timed, then the real launch
    runs.clear()
    assert tuner.launch("k1", ["a", "b", "c"], run, tune=True) == "b"
    assert runs == ["b"] and len(bench.timed) == 3  # remembered: no second timing
    assert tuner.launch("k2", ["a", "c"], run, tune=True) == "c"
    assert tuner.best == {"k1": "b", "k2": "c"}


def test_tuner_ties_go_to_the_heuristic_and_off_means_untimed():
    tuner, bench, runs, run = _tuner_with({"h": 1.0, "x": 1.0})
    assert tuner.launch("k", ["h", "x"], run, tune=True) == "h"
    tuner, bench, runs, run = _tuner_with({"h": 5.0, "x": 1.0})
    assert tuner.launch("k", ["h", "x"], run, tune=False) == "h"
    assert runs == ["h"] and bench.timed == [] and tuner.best == {}  # nothing timed or remembered
    assert tuner.launch("k", ["h"], run, tune=True) == "h" and bench.timed == []  # one candidate: nothing to time
    with pytest.raises(ValueError, match="no launch config"):
        tuner.launch("k", [], run, tune=True)


def test_tuning_enabled_only_on_cuda_and_not_when_switched_off(monkeypatch):
    t = _tuning()
    assert not t.tuning_enabled(torch.device("cpu"))
    monkeypatch.setenv("MK_TRITON_TUNE", "0")
    assert not t.tuning_enabled(torch.device("cuda"))  # decided before CUDA is touched
    assert t.unique([(1, 2), (3, 4), (1, 2)]) == [(1, 2), (3, 4)]


def _assert_all_configs_identical(configs, run):
    assert len(configs) >= 3, configs
    ref = run(configs[0])
    for cfg in configs[1:]:
        out = run(cfg)
        assert out.dtype == ref.dtype and out.stride() == ref.stride(), cfg
        assert torch.equal(out, ref), f"config {cfg} differs from the heuristic {configs[0]}"
    return ref


# (N, C, H, W, k, stride, padding, dilation): odd sizes, C not a multiple of 8, stride 2, dilation 2.
DW_SHAPES = [(2, 24, 7, 7, 3, 1, 1, 1), (1, 13, 21, 23, 5, 2, 2, 1), (2, 40, 5, 5, 3, 1, 2, 2)]


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", DW_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_depthwise_forward_configs_give_the_same_bits(shape, dtype, layout):
    from mobilenet_kernels.triton import depthwise_conv2d as T

    N, C, H, W, k, s, p, d = shape
    x = make_input((N, C, H, W), layout, dtype, "cpu")
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    w = torch.randn(C, k, k)
    b = torch.randn(C)
    args = ((s, s), (p, p), (d, d))
    configs = T.forward_configs(x, w, *args, fmt)
    y = _assert_all_configs_identical(
        configs, lambda cfg: T._forward(x, w, b, *args, "hardswish", fmt, False, config=cfg)[0])
    ref = F.hardswish(F.conv2d(x.double(), w.double().unsqueeze(1), b.double(), s, p, d, C))
    torch.testing.assert_close(y.double(), ref, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-2)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_norm_act_eval_configs_give_the_same_bits(dtype, layout):
    from mobilenet_kernels.triton import batch_norm_act as T

    x = make_input((3, 20, 7, 9), layout, dtype, "cpu")
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    mean, var, weight, bias = torch.randn(20), torch.rand(20) + 0.5, torch.randn(20), torch.randn(20)
    _assert_all_configs_identical(
        T.eval_fwd_configs(x),
        lambda cfg: T.batch_norm_act_eval_fwd(x, mean, var, weight, bias, 1e-5, "relu6", fmt, config=cfg))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("with_add", [False, True])
def test_squeeze_excite_apply_configs_give_the_same_bits(with_add, layout):
    from mobilenet_kernels.triton import squeeze_excite as T

    x = make_input((2, 36, 5, 13), layout, torch.float32, "cpu")
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    s = torch.rand(2, 36)
    add = torch.randn(2, 36) if with_add else None
    _assert_all_configs_identical(T.apply_configs(x), lambda cfg: T._apply(x, s, add, fmt, config=cfg))


def test_tuned_launch_end_to_end(monkeypatch):
    """The op with tuning switched on (a fake timer that prefers the last candidate): every
    candidate runs once to be timed, the last one is remembered, and the result is unchanged."""
    import mobilenet_kernels.functional as MF
    from mobilenet_kernels.triton import depthwise_conv2d as T

    x = make_input((2, 24, 7, 7), "channels_last", torch.float32, "cpu")
    w = torch.randn(24, 1, 3, 3)
    expected = MF.depthwise_conv2d(x, w, None, 1, 1, backend="triton")
    timed = []

    def bench(fn):
        fn()
        timed.append(1)
        return 1.0 / len(timed)  # each candidate faster than the one before

    monkeypatch.setattr(T, "tuning_enabled", lambda device: True)
    monkeypatch.setattr(T._FORWARD_TUNER, "bench", bench)
    monkeypatch.setattr(T._FORWARD_TUNER, "best", {})
    y = MF.depthwise_conv2d(x, w, None, 1, 1, backend="triton")
    assert torch.equal(y, expected)
    (key, config), = T._FORWARD_TUNER.best.items()
    configs = T.forward_configs(x.contiguous(memory_format=torch.channels_last), w.reshape(24, 3, 3),
                                (1, 1), (1, 1), (1, 1), torch.channels_last)
    assert len(timed) == len(configs) and config == configs[-1]
