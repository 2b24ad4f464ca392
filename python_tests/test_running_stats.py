"""running_stats: the running-statistics updates of a model's BatchNorms recorded over its forward
and applied together (mobilenet_kernels/running_stats.py): the same values as one at a time, no
update op launched per layer, nothing changed when the forward raises, order kept when a module
runs twice."""

from __future__ import annotations

import copy

import pytest
import torch

import mobilenet_kernels as mk
from mobilenet_kernels import functional as MF
from mobilenet_kernels import running_stats
from mobilenet_kernels.nn import BatchNormAct2d

from conftest import DEVICES, skip_unless_usable

MODELS = ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"]


def _op_calls(fn, name: str) -> int:
    """How many times ``fn()`` calls the op ``name`` (profiler events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model_name", MODELS)
def test_model_step_updates_together_with_the_same_bits(model_name, device, monkeypatch):
    """A training step of our model launches no per-layer update op and no per-layer count, and
    leaves every parameter, running statistic and num_batches_tracked as the updates one at a time
    do: bit for bit on a CPU, where the op runs the same ATen ops; on CUDA within the last bit (the
    op's kernel may contract its multiply-adds otherwise). The "cuda" backend (C++ kernels); the
    functional test below covers the Triton ops' calls: the recording is the same code for every
    backend."""
    backend = "cuda"
    skip_unless_usable(backend, device)
    torch.manual_seed(0)
    together = getattr(mk, model_name)(backend=backend, num_classes=10).train().to(device)
    one_by_one = copy.deepcopy(together)
    x = torch.randn(2, 3, 32, 32, device=device)

    def step(model):
        return lambda: model(x).square().mean().backward()

    assert _op_calls(step(together), "mobilenet_kernels::batch_norm_update_stats") == 0
    monkeypatch.setattr(running_stats, "_pending", lambda: None)  # every update and count at once
    assert _op_calls(step(one_by_one), "mobilenet_kernels::batch_norm_update_stats") > 0
    expected = one_by_one.state_dict()
    for key, value in together.state_dict().items():
        if device == "cpu":
            assert torch.equal(value, expected[key]), key
        else:
            torch.testing.assert_close(value, expected[key], rtol=2.5e-7, atol=0, msg=key)
    counts = [int(v) for k, v in expected.items() if k.endswith("num_batches_tracked")]
    assert counts and set(counts) == {1}


def _bn(momentum=0.1) -> BatchNormAct2d:
    torch.manual_seed(0)
    bn = BatchNormAct2d(6, momentum=momentum, activation="relu", backend="cuda").train()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    return bn


@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_module_run_twice_updates_in_order(momentum):
    """Two calls of one module in a region give what two calls one at a time give (the second
    sees the first's update; with momentum None, the cumulative average reads the count)."""
    skip_unless_usable("cuda", "cpu")
    x1, x2 = torch.randn(2, 6, 5, 5), torch.randn(2, 6, 5, 5) * 3
    together, one_by_one = _bn(momentum), _bn(momentum)
    with running_stats.deferred():
        together(x1), together(x2)
    one_by_one(x1), one_by_one(x2)
    for key, value in one_by_one.state_dict().items():
        assert torch.equal(together.state_dict()[key], value), key
    assert int(together.num_batches_tracked) == 2


def test_a_raising_region_changes_no_statistic():
    skip_unless_usable("cuda", "cpu")
    bn = _bn()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(RuntimeError, match="later failure"):
        with running_stats.deferred():
            bn(torch.randn(2, 6, 5, 5))
            raise RuntimeError("a later failure")
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    bn(torch.randn(2, 6, 5, 5))  # the region is gone: the next call updates at once
    assert int(bn.num_batches_tracked) == 1 and not torch.equal(bn.running_mean, before["running_mean"])


def test_updates_apply_at_the_outermost_exit():
    skip_unless_usable("cuda", "cpu")
    bn = _bn()
    before = bn.running_mean.clone()
    with running_stats.deferred():
        with running_stats.deferred():
            bn(torch.randn(2, 6, 5, 5))
        assert torch.equal(bn.running_mean, before) and int(bn.num_batches_tracked) == 0
    assert not torch.equal(bn.running_mean, before) and int(bn.num_batches_tracked) == 1


def test_what_cannot_wait_runs_at_once():
    """Running statistics in another dtype than the batch's take the op's mixed-dtype update at
    the call; an invalid count raises the op's error at the call."""
    skip_unless_usable("cuda", "cpu")
    running_mean, running_var = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    mean, var = torch.full((4,), 2.0), torch.full((4,), 3.0)
    with running_stats.deferred():
        running_stats.update(running_mean, running_var, mean, var, 5, 0.5)
        assert torch.allclose(running_mean, torch.full((4,), 1.0, dtype=torch.float64))
        with pytest.raises(ValueError, match="count"):
            running_stats.update(torch.zeros(4), torch.ones(4), mean, var, 1, 0.5)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_functional_training_call_in_a_region_defers_its_update(backend):
    skip_unless_usable(backend, "cpu")
    x = torch.randn(2, 4, 3, 3)
    running_mean, running_var = torch.zeros(4), torch.ones(4)
    with running_stats.deferred():
        MF.batch_norm_act(x, running_mean, running_var, training=True, backend=backend)
        assert torch.equal(running_mean, torch.zeros(4))
    expected_mean, expected_var = torch.zeros(4), torch.ones(4)
    torch.nn.functional.batch_norm(x, expected_mean, expected_var, training=True)
    torch.testing.assert_close(running_mean, expected_mean)
    torch.testing.assert_close(running_var, expected_var)
