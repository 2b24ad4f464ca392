"""convert(): BatchNorm2d (+ activation) -> BatchNormAct2d in any model, in place, sharing the
parameters; torchvision's MobileNets keep their state_dict and their outputs and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import SqueezeExcitation as TVSqueezeExcitation

import mobilenet_kernels as mk
from mobilenet_kernels.activations import activation_name
from mobilenet_kernels.models import set_recompute
from mobilenet_kernels.nn import BatchNormAct2d, ConvBNAct, InvertedResidual, InvertedResidualV3, SqueezeExcitation

from conftest import BACKENDS, DEVICES, skip_unless_usable
from model_helpers import (
    TORCHVISION,
    assert_close_scaled,
    assert_eval_parity,
    assert_same_gradients,
    assert_same_training,
    bn_activations,
    eval_cases,
    eval_shape,
    randomize_batch_norms,
    randomize_bn_parameters,
)


TV_BLOCKS = {torchvision.models.mobilenetv2.InvertedResidual: InvertedResidual,
             torchvision.models.mobilenetv3.InvertedResidual: InvertedResidualV3}


def snapshot(model: nn.Module):
    """(state_dict copy, parameter objects, buffer objects) to compare after convert()."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    return sd, list(model.parameters()), list(model.buffers())


def assert_same_state(model: nn.Module, snap) -> None:
    sd, params, buffers = snap
    new_sd = model.state_dict()
    assert list(new_sd) == list(sd)
    for key, value in sd.items():
        torch.testing.assert_close(new_sd[key], value, rtol=0, atol=0, msg=key)
    new_params, new_buffers = list(model.parameters()), list(model.buffers())
    assert len(new_params) == len(params) and all(a is b for a, b in zip(new_params, params))
    assert len(new_buffers) == len(buffers) and all(a is b for a, b in zip(new_buffers, buffers))


# ---------------------------------------------------------------------------------------------
# torchvision MobileNets


@pytest.mark.parametrize("arch", list(TORCHVISION))
def test_convert_torchvision_structure(arch):
    torch.manual_seed(0)
    model = TORCHVISION[arch]()
    randomize_batch_norms(model, size=32)
    expected = bn_activations(model, exact=True)
    assert expected and set(expected.values()) - {"identity"}
    snap = snapshot(model)
    modules_before = dict(model.named_modules())

    assert mk.convert(model, backend="torch") is model

    assert_same_state(model, snap)
    modules = dict(model.named_modules())
    assert not [n for n, m in modules.items() if type(m) is nn.BatchNorm2d]
    for name, act in expected.items():
        m = modules[name]
        assert type(m) is BatchNormAct2d and m.activation == act and m.backend == "torch", name
        old = modules_before[name]
        assert m.weight is old.weight and m.running_var is old.running_var
        assert (m.eps, m.momentum, m.training) == (old.eps, old.momentum, old.training)
        if act != "identity":
            parent, _, idx = name.rpartition(".")
            nxt = f"{parent}.{int(idx) + 1}"
            assert type(modules_before[nxt]) is not nn.Identity
            if isinstance(modules[parent], ConvBNAct):  # in a block: a ConvBNAct (conv, BN + act) replaced it
                assert nxt not in modules and modules[parent][0] is modules_before[f"{parent}.0"]
            else:  # elsewhere the activation after it became an Identity, at the same index
                assert type(modules[nxt]) is nn.Identity
    # Every torchvision block became ours.
    blocks = {n: m for n, m in modules_before.items() if type(m) in TV_BLOCKS}
    assert blocks
    for name, m in blocks.items():
        assert type(modules[name]) is TV_BLOCKS[type(m)], name
        assert (modules[name].use_res_connect, modules[name].out_channels, modules[name]._is_cn) == (
            m.use_res_connect, m.out_channels, m._is_cn)
    # Every torchvision SqueezeExcitation became ours, sharing its fc layers.
    for name, m in modules_before.items():
        if type(m) is TVSqueezeExcitation:
            assert type(modules[name]) is SqueezeExcitation and modules[name].fc1 is m.fc1, name
    # Activations not right after a BatchNorm, outside SE blocks, are untouched (the classifier's).
    for name, m in modules_before.items():
        if name.rpartition(".")[0] in modules and isinstance(modules[name.rpartition(".")[0]], SqueezeExcitation):
            continue
        if activation_name(m) not in (None, "identity") and name not in {
            f"{p.rpartition('.')[0]}.{int(p.rpartition('.')[2]) + 1}" for p in expected
        }:
            assert modules[name] is m, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch,backend", eval_cases(TORCHVISION))
def test_convert_torchvision_eval_parity(arch, backend, device):
    skip_unless_usable(backend, device)
    torch.manual_seed(0)
    ref = TORCHVISION[arch]()
    randomize_batch_norms(ref)
    model = mk.convert(copy.deepcopy(ref), backend=backend)
    assert_eval_parity(model, ref, eval_shape(backend, device), device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", list(TORCHVISION))
def test_convert_torchvision_training_parity_float64(arch, backend):
    skip_unless_usable(backend, "cpu")
    torch.manual_seed(0)
    ref = TORCHVISION[arch](num_classes=10, dropout=0.0)
    randomize_batch_norms(ref, size=32)
    ref.double()
    model = copy.deepcopy(ref)
    # An optimizer built before convert() keeps working: the parameters are the same objects.
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert mk.convert(model, backend=backend) is model
    assert_same_training(model, ref, opt=opt)


def test_convert_then_recompute_training_parity_float64():
    """A converted torchvision model takes the blocks' recompute option (set_recompute) and still
    trains like torchvision, with an optimizer built before convert()."""
    skip_unless_usable("cuda", "cpu")
    torch.manual_seed(0)
    ref = TORCHVISION["mobilenet_v3_small"](num_classes=10, dropout=0.0)
    randomize_batch_norms(ref, size=32)
    ref.double()
    model = copy.deepcopy(ref)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    set_recompute(mk.convert(model, backend="cuda"), True)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidualV3)]
    assert len(blocks) == 11 and all(b.recompute for b in blocks)
    assert_same_training(model, ref, opt=opt)


# ---------------------------------------------------------------------------------------------
# any model


class WithNamedBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()  # a named child after a named BN: not a Sequential, so not fused
        self.blocks = nn.ModuleList([nn.BatchNorm2d(8)])
        self.head = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.Hardswish(), nn.BatchNorm2d(8), nn.SiLU())
        self.ln = nn.LayerNorm(8)
        self.bn1d = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        x = self.blocks[0](x)
        x = self.head(x).mean(dim=(2, 3))
        return self.fc(self.bn1d(self.ln(x)))


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A subclass: convert() must leave it alone."""


class CustomForwardSequential(nn.Sequential):
    """A Sequential whose forward is not a chain: BN at i and ReLU at i+1 are not a pair."""

    def forward(self, x):
        return self[1](self[0](x)) + self[0](x)


def custom_sequential():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_convert_custom_sequential(backend):
    skip_unless_usable(backend, "cpu")
    torch.manual_seed(0)
    ref = custom_sequential()
    randomize_bn_parameters(ref)
    model = copy.deepcopy(ref)
    snap = snapshot(model)
    assert mk.convert(model, backend=backend) is model
    assert_same_state(model, snap)
    assert [type(m) for m in model] == [nn.Conv2d, BatchNormAct2d, nn.Identity, nn.Conv2d, BatchNormAct2d]
    assert (model[1].activation, model[4].activation) == ("relu", "identity")
    assert model[1].backend == model[4].backend == backend

    assert_eval_parity(model, ref, (2, 3, 8, 8))
    # Training in float64: output, input and parameter gradients, running stats.
    model.double().train()
    ref.double().train()
    assert_same_gradients(model, ref, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    for a, b in zip(model.buffers(), ref.buffers()):
        assert_close_scaled(a, b, rtol=1e-7)


def test_convert_module_with_named_children():
    torch.manual_seed(0)
    ref = WithNamedBN()
    randomize_bn_parameters(ref)
    model = copy.deepcopy(ref)
    snap = snapshot(model)
    ln, bn1d, act, fc = model.ln, model.bn1d, model.act, model.fc
    assert mk.convert(model, backend="torch") is model
    assert_same_state(model, snap)
    assert type(model.bn) is BatchNormAct2d and model.bn.activation == "identity"
    assert type(model.act) is nn.ReLU and model.act is act  # not a Sequential: no pairing
    assert type(model.blocks[0]) is BatchNormAct2d and model.blocks[0].activation == "identity"
    assert [type(m) for m in model.head] == [nn.Conv2d, BatchNormAct2d, nn.Identity, BatchNormAct2d, nn.Identity]
    assert (model.head[1].activation, model.head[3].activation) == ("hardswish", "silu")
    assert model.ln is ln and model.bn1d is bn1d and model.fc is fc  # unknown modules untouched
    assert_eval_parity(model, ref, (4, 3, 8, 8))


def test_convert_leaves_other_modules_alone():
    torch.manual_seed(0)
    frozen = FrozenBatchNorm2d(8)
    bn3d, ln, relu = nn.BatchNorm3d(8), nn.LayerNorm(8), nn.ReLU()
    seq = nn.Sequential(frozen, nn.ReLU(), bn3d, nn.ReLU(), ln, relu)
    mk.convert(seq)
    assert seq[0] is frozen and type(seq[1]) is nn.ReLU and seq[2] is bn3d and type(seq[3]) is nn.ReLU
    assert seq[4] is ln and seq[5] is relu

    custom = CustomForwardSequential(nn.BatchNorm2d(4), nn.ReLU())
    ref = copy.deepcopy(custom).eval()
    mk.convert(custom, backend="torch")
    assert type(custom[0]) is BatchNormAct2d and custom[0].activation == "identity"
    assert type(custom[1]) is nn.ReLU  # not fused: the forward is not a chain
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert_close_scaled(custom.eval()(x), ref(x), rtol=1e-6)


def test_convert_torchvision_conv_norm_activation():
    from torchvision.ops import Conv2dNormActivation

    block = Conv2dNormActivation(3, 8, activation_layer=nn.ReLU6)
    assert mk.convert(block, backend="torch") is block
    assert [type(m) for m in block] == [nn.Conv2d, BatchNormAct2d, nn.Identity]
    assert block[1].activation == "relu6"


def test_convert_sets_backend_of_existing_modules_and_is_idempotent():
    model = mk.mobilenet_v3_small(backend="torch", width_mult=0.5)
    structure = [(n, type(m)) for n, m in model.named_modules()]
    snap = snapshot(model)
    assert mk.convert(model, backend="cuda") is model
    assert all(m.backend == "cuda" for m in model.modules() if isinstance(m, BatchNormAct2d))
    assert [(n, type(m)) for n, m in model.named_modules()] == structure
    assert_same_state(model, snap)

    tv = torchvision.models.mobilenet_v3_small(width_mult=0.5)
    mk.convert(tv, backend="torch")
    once = [(n, type(m), getattr(m, "activation", None)) for n, m in tv.named_modules()]
    mk.convert(tv, backend=None)
    assert [(n, type(m), getattr(m, "activation", None)) for n, m in tv.named_modules()] == once
    assert all(m.backend is None for m in tv.modules() if isinstance(m, BatchNormAct2d))


def test_convert_keeps_train_eval_mode():
    model = custom_sequential().eval()
    model[1].train()  # a mixed-mode model stays mixed
    mk.convert(model)
    assert model[1].training and not model[0].training and not model[2].training and not model[4].training


def test_convert_unknown_backend():
    model = custom_sequential()
    structure = [type(m) for m in model]
    with pytest.raises(ValueError, match="backend"):
        mk.convert(model, backend="tpu")
    assert [type(m) for m in model] == structure  # nothing changed


def test_convert_bare_batch_norm():
    bn = nn.BatchNorm2d(4)
    new = mk.convert(bn, backend="torch")
    assert type(new) is BatchNormAct2d and new.activation == "identity"
    assert new.weight is bn.weight and new.running_mean is bn.running_mean
