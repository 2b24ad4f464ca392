"""Helpers shared by the model tests (test_models.py), the convert() tests (test_convert.py) and the
checkpoint tests (test_checkpoints.py): torchvision builders, a plain-PyTorch MobileNet V1,
reference-comparison assertions, BatchNorm randomization and training parity."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from mobilenet_kernels.activations import activation_name

from conftest import BACKENDS

TORCHVISION = {
    "mobilenet_v2": torchvision.models.mobilenet_v2,
    "mobilenet_v3_large": torchvision.models.mobilenet_v3_large,
    "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
}

# The Triton interpreter runs ~2 ms per program: only the smallest model runs there by default.
_TRITON_FAST = {"mobilenet_v3_small"}


class PlainMobileNetV1(nn.Module):
    """An independent MobileNet V1, the counterpart of a torchvision model for our V1 (torchvision has
    none), written straight from the paper's Table 1 with plain torch modules (Conv2d, BatchNorm2d,
    ReLU) and ``int(c * alpha)`` channels; the ReLUs hold no state, so its state_dict keys are ours.
    ``dropout``: the classifier's dropout probability."""

    def __init__(self, alpha: float = 1.0, num_classes: int = 1000, dropout: float = 0.0):
        super().__init__()

        def cbr(cin, cout, k, s, groups=1):
            conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False)
            return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())

        c = lambda n: int(n * alpha)  # noqa: E731
        table = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
        layers, cin = [cbr(3, c(32), 3, 2)], c(32)
        for cout, s in table:
            layers.append(nn.Sequential(cbr(cin, cin, 3, s, groups=cin), cbr(cin, c(cout), 1, 1)))
            cin = c(cout)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def eval_cases(archs) -> list:
    """(arch, backend) params for every arch and backend; Triton on all but the fast archs is slow."""
    cases = []
    for arch in archs:
        for backend in BACKENDS:
            marks = [pytest.mark.slow] if backend == "triton" and arch not in _TRITON_FAST else []
            cases.append(pytest.param(arch, backend, marks=marks, id=f"{arch}-{backend}"))
    return cases


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rtol: float, floor: float = 0.0) -> None:
    """assert_close with rtol and an atol of rtol * max|expected| (so near-zero entries of a tensor
    are judged on the tensor's scale), but at least ``floor``: a gradient that is zero in exact
    arithmetic (e.g. of a parameter whose effect a training-mode BatchNorm cancels) is rounding
    noise, and is judged on the scale of all the model's gradients instead."""
    if expected.is_floating_point() and expected.numel():
        atol = max(rtol * expected.detach().abs().max().item(), floor)
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)
    else:
        torch.testing.assert_close(actual, expected)


def assert_matches_fp32_reference(actual: torch.Tensor, ref_model: nn.Module, x: torch.Tensor, rtol: float = 1e-5) -> None:
    """``actual`` is within rtol (relative, in norm; or twice the fp32 reference's own relative error
    where that is larger) of the exact result, ``ref_model`` run in float64, and equals
    ``ref_model(x)`` (fp32) within rtol and an atol of rtol * max|ref|, or three times the
    reference's own fp32 rounding error (its distance from the float64 run) where that is larger:
    through the 50+ layers of MobileNetV2, fp32 rounding alone reaches ~1e-5 * max|ref|, so two
    correct fp32 implementations can differ by that much."""
    with torch.no_grad():
        expected = ref_model(x)
        ref64 = copy.deepcopy(ref_model).double()(x.double())
    noise_floor = (expected.double() - ref64).abs().max().item()
    # |ours - fp32 ref| <= |ours - exact| + |fp32 ref - exact|: 3x the noise floor at twice its error
    atol = max(rtol * expected.abs().max().item(), 3 * noise_floor)
    assert actual.shape == expected.shape
    # The acceptance criterion: relative error in norm against the exact result within rtol, or
    # within twice the fp32 reference's own where that is larger (our rule for rounding error). Not
    # against the fp32 reference: that has an error of its own (~7e-6 for V2 at 64x64 on a CPU), so
    # an implementation that rounds differently (ours folds the BatchNorms into the convs in eval
    # mode) can be as accurate and still differ from it by ~1e-5. On an H200 (GPU run 5) ours
    # reached 1.1e-5 to 1.3e-5 for V2 on every backend, the "torch" one (cuDNN) included.
    rel = ((actual.double() - ref64).norm() / ref64.norm()).item()
    ref_rel = ((expected.double() - ref64).norm() / ref64.norm()).item()
    assert rel <= max(rtol, 2 * ref_rel), (
        f"relative error {rel:.3g} > max({rtol}, 2 x the fp32 reference's {ref_rel:.3g}) (against float64)")
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def eval_shape(backend: str, device: str) -> tuple[int, ...]:
    """The input of the eval parity tests. The Triton interpreter is slow: one 32x32 image there;
    two 64x64 images elsewhere."""
    return (1, 3, 32, 32) if backend == "triton" and device == "cpu" else (2, 3, 64, 64)


def assert_eval_parity(model: nn.Module, ref_model: nn.Module, shape: tuple[int, ...], device: str = "cpu") -> None:
    """``model`` and ``ref_model``, in eval mode on ``device``, agree in fp32 on a random input of
    ``shape`` (see assert_matches_fp32_reference)."""
    ref_model.eval().to(device)
    model.eval().to(device)
    x = torch.randn(shape, device=device)
    # (cuDNN runs in IEEE fp32 here, not TF32: conftest's session fixture _ieee_fp32_convolutions)
    with torch.no_grad():
        actual = model(x)
        assert_matches_fp32_reference(actual, ref_model, x)


def assert_same_gradients(model: nn.Module, ref_model: nn.Module, x: torch.Tensor, rtol: float = 1e-7) -> None:
    """One forward and backward (with a random output gradient) of ``model`` and ``ref_model`` on
    copies of ``x``, in their current mode and dtype: the same output, input and parameter gradients."""
    xs = [x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()]
    outs = [model(xs[0]), ref_model(xs[1])]
    grad_out = torch.randn_like(outs[1])
    for out in outs:
        out.backward(grad_out)
    assert_close_scaled(outs[0].detach(), outs[1].detach(), rtol=rtol)
    assert_close_scaled(xs[0].grad, xs[1].grad, rtol=rtol)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert_close_scaled(p.grad, q.grad, rtol=rtol)


def randomize_batch_norms(model: nn.Module, size: int = 64) -> None:
    """Give every BatchNorm random affine parameters and realistic, non-trivial running statistics:
    those of one train-mode pass on random data (momentum 1), then perturbed. Calibrating after the
    affine parameters are set keeps eval-mode activations O(1) through the whole network, so fp32
    rounding is not amplified by exploding activations."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in bns]
    model.train()
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.3, 0.3)
            m.momentum = 1.0
        model(torch.randn(16, 3, size, size))
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
            m.running_mean.add_(m.running_var.sqrt() * torch.randn_like(m.running_mean), alpha=0.1)
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.9, 1.1))
            m.num_batches_tracked.fill_(7)


def randomize_bn_parameters(model: nn.Module) -> None:
    """Random affine parameters and running statistics for every BatchNorm of ``model``, without
    running it (for modules that do not take images)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)


def bn_activations(model: nn.Module, exact: bool = False) -> dict[str, str]:
    """Qualified name of every BatchNorm2d in a Sequential -> the name of the activation that follows
    it there ("identity" when no known activation follows). ``exact``: only modules whose type is
    nn.BatchNorm2d itself (the ones convert() replaces), not its subclasses."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for i, (key, child) in enumerate(children):
                if (type(child) is nn.BatchNorm2d) if exact else isinstance(child, nn.BatchNorm2d):
                    act = activation_name(children[i + 1][1]) if i + 1 < len(children) else None
                    found[f"{name}.{key}" if name else key] = act or "identity"
    return found


def two_sgd_steps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, opt=None):
    """Two SGD steps (lr 0.1, momentum 0.9, or ``opt``) on cross-entropy: the outputs and parameter
    gradients of each step and a copy of the final state_dict."""
    if opt is None:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    outputs, grads = [], []
    for _ in range(2):
        opt.zero_grad()
        out = model(x)
        F.cross_entropy(out, target).backward()
        outputs.append(out.detach().clone())
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
        opt.step()
    return outputs, grads, {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_training(ours: nn.Module, ref: nn.Module, size: int = 64, opt=None) -> None:
    """In float64 and train mode, two SGD steps of ``ours`` (with ``opt``, if given, e.g. one built
    before convert()) and of ``ref`` on the same random batch give the same outputs, gradients, and
    final parameters and running statistics."""
    ours.double().train()
    ref.double().train()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    target = torch.randint(0, 10, (2,))
    out_a, grads_a, sd_a = two_sgd_steps(ours, x, target, opt)
    out_b, grads_b, sd_b = two_sgd_steps(ref, x, target)
    for a, b in zip(out_a, out_b):
        assert_close_scaled(a, b, rtol=1e-7)
    for ga, gb in zip(grads_a, grads_b):
        assert list(ga) == list(gb)
        scale = max(g.abs().max().item() for g in gb.values())
        for name in ga:
            assert_close_scaled(ga[name], gb[name], rtol=1e-7, floor=1e-10 * scale)
    assert list(sd_a) == list(sd_b)
    for key in sd_a:  # parameters after two steps, running stats, num_batches_tracked
        assert_close_scaled(sd_a[key], sd_b[key], rtol=1e-7)
