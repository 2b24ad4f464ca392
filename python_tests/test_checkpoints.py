"""Checkpoints (issue 9): state_dicts written by our models load into torchvision's with
strict=True and the reverse, through a real torch.save / torch.load(weights_only=True) round trip,
for MobileNet V2, V3-Large and V3-Small, and for V1 (torchvision has none: an independent
plain-PyTorch V1 written from the paper's Table 1 stands in); then both models agree in eval mode.
The same holds for a torchvision model after convert(), in both directions.

The checkpoints are written after a few training steps (then realistic BatchNorm statistics), so
that every tensor, num_batches_tracked included, differs from its initial value and must be carried
over. Models run on the default backend (the C++ kernels here); one case per backend and device
checks that a loaded checkpoint gives the same outputs everywhere.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mobilenet_kernels as mk

from conftest import BACKENDS, skip_unless_usable
from model_helpers import (TORCHVISION, PlainMobileNetV1, assert_matches_fp32_reference, eval_shape,
                           randomize_batch_norms)


# Small widths keep the CPU run short; test_models.py checks the state_dict keys and shapes of
# every width against torchvision's.
WIDTH = {"mobilenet_v1": 0.25, "mobilenet_v2": 0.5, "mobilenet_v3_large": 0.5, "mobilenet_v3_small": 1.0}
OURS = {
    "mobilenet_v1": mk.mobilenet_v1,
    "mobilenet_v2": mk.mobilenet_v2,
    "mobilenet_v3_large": mk.mobilenet_v3_large,
    "mobilenet_v3_small": mk.mobilenet_v3_small,
}
# V1 with the dropout of our mobilenet_v1 (0.001): both train before their checkpoints are written
REFERENCE = {"mobilenet_v1": lambda width_mult, num_classes: PlainMobileNetV1(width_mult, num_classes, dropout=0.001),
             **TORCHVISION}
ARCHS = list(OURS)


@pytest.fixture(autouse=True)
def _one_thread():
    """Nothing here depends on the thread count, and one thread keeps these CPU model runs fast on
    a shared machine (OpenMP's spin-waiting made two threads on two busy cores ~5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(table: dict, arch: str, **kwargs) -> nn.Module:
    return table[arch](width_mult=WIDTH[arch], num_classes=10, **kwargs)


def trained(model: nn.Module, steps: int = 2) -> nn.Module:
    """A few SGD steps in train mode on random data (new weights and num_batches_tracked), then
    realistic BatchNorm parameters and running statistics (randomize_batch_norms: statistics that
    keep eval-mode activations O(1), which a couple of steps on random 32x32 images would not).
    Returned in eval mode."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.randint(0, 10, (4,))).backward()
        opt.step()
    randomize_batch_norms(model, size=32)
    return model.eval()


def assert_same_eval_outputs(model: nn.Module, ref: nn.Module, shape=(2, 3, 32, 32), device: str = "cpu") -> None:
    """Both models in eval mode agree in fp32 within a relative error of 1e-4 (test_models.py holds
    the tight 1e-5 parity on calibrated weights; here a misloaded tensor would be off by O(1), and
    trained weights make fp32 rounding alone reach ~1e-5)."""
    ref.eval().to(device)
    model.eval().to(device)
    x = torch.randn(shape, device=device)
    with torch.no_grad():  # (cuDNN in IEEE fp32: conftest's _ieee_fp32_convolutions)
        assert_matches_fp32_reference(model(x), ref, x, rtol=1e-4)


def round_trip(state_dict: dict, path) -> dict:
    torch.save(state_dict, path)
    return torch.load(path, weights_only=True)


def assert_same_state_dict(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and actual[key].shape == value.shape, key
        assert torch.equal(actual[key], value), key


@pytest.mark.parametrize("arch", ARCHS)
def test_our_checkpoint_loads_into_the_reference_model(arch, tmp_path):
    torch.manual_seed(0)
    ours = trained(build(OURS, arch))
    saved = ours.state_dict()
    assert any(k.endswith("num_batches_tracked") and v.item() > 0 for k, v in saved.items())
    loaded = round_trip(saved, tmp_path / f"{arch}.pt")
    assert_same_state_dict(loaded, saved)
    ref = build(REFERENCE, arch)
    ref.load_state_dict(loaded, strict=True)
    assert_same_state_dict(ref.state_dict(), saved)
    assert_same_eval_outputs(ours, ref)


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_checkpoint_loads_into_our_model(arch, tmp_path):
    torch.manual_seed(0)
    ref = trained(build(REFERENCE, arch))
    saved = ref.state_dict()
    loaded = round_trip(saved, tmp_path / f"{arch}.pt")
    ours = build(OURS, arch)
    ours.load_state_dict(loaded, strict=True)
    assert_same_state_dict(ours.state_dict(), saved)
    assert_same_eval_outputs(ours, ref)


@pytest.mark.parametrize("arch", ARCHS)
def test_our_checkpoint_round_trips_into_our_model_bit_for_bit(arch, tmp_path):
    """Ours -> file -> a fresh model of ours: the same state, bitwise the same eval outputs, and
    training resumes identically (one more step gives the same parameters)."""
    torch.manual_seed(0)
    ours = trained(build(OURS, arch))
    fresh = build(OURS, arch)
    fresh.load_state_dict(round_trip(ours.state_dict(), tmp_path / "ours.pt"), strict=True)
    assert_same_state_dict(fresh.state_dict(), ours.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), ours.eval()(x))
    target = torch.randint(0, 10, (2,))
    for model in (ours, fresh):
        model.zero_grad(set_to_none=True)
        model.train()
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        F.cross_entropy(model(x), target).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.01 * p.grad
    assert_same_state_dict(fresh.state_dict(), ours.state_dict())


@pytest.mark.parametrize("arch", list(TORCHVISION))
def test_converted_model_checkpoints_load_both_ways(arch, tmp_path):
    """convert() keeps torchvision's keys: a converted model's checkpoint loads into plain
    torchvision and into our model, and a plain torchvision checkpoint loads into a converted
    model, all with strict=True and the same eval outputs."""
    torch.manual_seed(0)
    converted = trained(mk.convert(build(TORCHVISION, arch)))
    saved = round_trip(converted.state_dict(), tmp_path / "converted.pt")
    assert_same_state_dict(saved, converted.state_dict())

    plain = build(TORCHVISION, arch)
    plain.load_state_dict(saved, strict=True)
    assert_same_eval_outputs(converted, plain)

    ours = build(OURS, arch)
    ours.load_state_dict(saved, strict=True)
    assert_same_eval_outputs(ours, plain)

    # plain torchvision -> file -> a model converted before loading
    target = mk.convert(build(TORCHVISION, arch))
    target.load_state_dict(round_trip(plain.state_dict(), tmp_path / "plain.pt"), strict=True)
    assert_same_state_dict(target.state_dict(), plain.state_dict())
    assert_same_eval_outputs(target, plain)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_checkpoint_gives_the_same_outputs_on_every_backend(backend, device, tmp_path):
    """The state_dict does not depend on the backend: a torchvision checkpoint loaded into our
    MobileNetV3-Small on each backend and device matches torchvision in eval mode."""
    skip_unless_usable(backend, device)
    torch.manual_seed(0)
    tv = trained(build(TORCHVISION, "mobilenet_v3_small"))
    ours = build(OURS, "mobilenet_v3_small", backend=backend)
    ours.load_state_dict(round_trip(tv.state_dict(), tmp_path / "tv.pt"), strict=True)
    assert_same_eval_outputs(ours, tv, eval_shape(backend, device), device)


def test_pretrained_style_checkpoints_load_strictly(tmp_path):
    """The shapes of torchvision's published weights (1000 classes, width 1.0) load into ours
    strictly through a weights_only file, for every torchvision MobileNet."""
    for arch in TORCHVISION:
        saved = round_trip(TORCHVISION[arch]().state_dict(), tmp_path / f"{arch}.pt")
        OURS[arch]().load_state_dict(saved, strict=True)
