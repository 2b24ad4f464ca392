"""Inverted-residual blocks (nn.InvertedResidual: V2, nn.InvertedResidualV3): torchvision's state_dict
keys both ways; parity with torchvision's blocks in eval and training on every backend (float64);
gradcheck; eval-mode BatchNorm folding (exact, cached until a tensor changes, never in training or
when gradients are needed); training recompute (bitwise the same results, running statistics
updated once, fewer saved bytes); torch.compile(fullgraph=True); channels_last."""

from __future__ import annotations

import copy
import gc
import weakref
from functools import partial

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import mobilenetv2, mobilenetv3

import mobilenet_kernels as mk
from mobilenet_kernels.benchmarking.models import saved_activation_bytes
from mobilenet_kernels.models import set_recompute
from mobilenet_kernels.models._layers import _make_divisible
from mobilenet_kernels.nn import BatchNormAct2d, ConvBNAct, InvertedResidual, InvertedResidualV3

from conftest import BACKENDS, skip_unless_usable
from model_helpers import (
    assert_close_scaled,
    assert_same_gradients,
    randomize_batch_norms,
    randomize_bn_parameters,
    two_sgd_steps,
)

# V2 blocks: (inp, oup, stride, expand_ratio).
V2_CASES = {
    "v2-expand-residual": (8, 8, 1, 6),
    "v2-expand-stride2": (8, 16, 2, 6),
    "v2-no-expand": (8, 16, 1, 1),  # the first block of the model
}
# V3 blocks: InvertedResidualConfig rows (input, kernel, expanded, out, SE, NL, stride, dilation), as
# in the paper's tables; channel counts are rounded to multiples of 8.
V3_CASES = {
    "v3-se-residual-k5": (16, 5, 32, 16, True, "HS", 1, 1),
    "v3-no-expand-se-stride2": (16, 3, 16, 16, True, "RE", 2, 1),  # V3-Small's first block
    "v3-no-se-stride2": (8, 3, 24, 16, False, "HS", 2, 1),
    "v3-dilated": (16, 5, 32, 16, True, "HS", 2, 2),  # dilated last stage: depthwise stride 1
}
CASES = [*V2_CASES, *V3_CASES]


def torchvision_block(case: str) -> nn.Module:
    if case in V2_CASES:
        return mobilenetv2.InvertedResidual(*V2_CASES[case])
    cnf = mobilenetv3.InvertedResidualConfig(*V3_CASES[case], width_mult=1.0)
    return mobilenetv3.InvertedResidual(cnf, partial(nn.BatchNorm2d, eps=0.001, momentum=0.01))


def our_block(case: str, backend: str | None, **kwargs) -> nn.Module:
    if case in V2_CASES:
        return InvertedResidual(*V2_CASES[case], backend=backend, **kwargs)
    cnf = mobilenetv3.InvertedResidualConfig(*V3_CASES[case], width_mult=1.0)
    squeeze = _make_divisible(cnf.expanded_channels // 4, 8) if cnf.use_se else None
    return InvertedResidualV3(cnf.input_channels, cnf.expanded_channels, cnf.out_channels, cnf.kernel, cnf.stride,
                              cnf.dilation, "hardswish" if cnf.use_hs else "relu", squeeze, backend=backend, **kwargs)


def in_channels(case: str) -> int:
    return V2_CASES[case][0] if case in V2_CASES else V3_CASES[case][0]


def block_pair(case: str, backend: str | None, **kwargs) -> tuple[nn.Module, nn.Module]:
    """(ours, torchvision's) in float64 with the same random weights and BatchNorm statistics; the
    state_dict goes torchvision -> ours with strict=True."""
    torch.manual_seed(0)
    tv = torchvision_block(case)
    randomize_bn_parameters(tv)
    ours = our_block(case, backend, **kwargs)
    ours.load_state_dict(tv.state_dict(), strict=True)
    return ours.double(), tv.double()


def block_input(case: str, size: int = 8, requires_grad: bool = False) -> torch.Tensor:
    return torch.randn(2, in_channels(case), size, size, dtype=torch.float64, requires_grad=requires_grad)


def train_steps(block: nn.Module, inputs: list[torch.Tensor], grads: list[torch.Tensor]):
    """SGD steps (momentum 0.9) of ``block`` in training mode, one per (input, output gradient):
    each step's output, input gradient and parameter gradients, and a copy of the final state_dict."""
    block.train()
    opt = torch.optim.SGD(block.parameters(), lr=0.1, momentum=0.9)
    steps = []
    for x, g in zip(inputs, grads):
        opt.zero_grad()
        x = x.detach().clone().requires_grad_()
        out = block(x)
        out.backward(g)
        steps.append((out.detach(), x.grad, {n: p.grad.clone() for n, p in block.named_parameters()}))
        opt.step()
    return steps, {k: v.clone() for k, v in block.state_dict().items()}


def assert_same_steps(a, b, rtol: float) -> None:
    (steps_a, sd_a), (steps_b, sd_b) = a, b
    for (out_a, gx_a, gp_a), (out_b, gx_b, gp_b) in zip(steps_a, steps_b):
        assert_close_scaled(out_a, out_b, rtol=rtol)
        assert_close_scaled(gx_a, gx_b, rtol=rtol)
        assert list(gp_a) == list(gp_b)
        scale = max(g.abs().max().item() for g in gp_b.values())
        for name in gp_a:  # (a BN-cancelled gradient is rounding noise: judged on the block's scale)
            assert_close_scaled(gp_a[name], gp_b[name], rtol=rtol, floor=rtol * 1e-3 * scale)
    assert list(sd_a) == list(sd_b)
    for key in sd_a:  # parameters after the steps, running statistics, num_batches_tracked
        assert_close_scaled(sd_a[key], sd_b[key], rtol=rtol)


def three_steps_inputs(case: str, out_shape) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(1)
    inputs = [block_input(case) for _ in range(3)]
    grads = [torch.randn(out_shape, dtype=torch.float64) for _ in range(3)]
    return inputs, grads


def fold_caches(block: nn.Module) -> list:
    return [m.__dict__["_conv_fold_cache"] for m in block.modules() if "_conv_fold_cache" in m.__dict__]


# ---------------------------------------------------------------------------------------------
# structure and torchvision parity


@pytest.mark.parametrize("case", CASES)
def test_state_dict_keys_are_torchvision_both_ways(case):
    torch.manual_seed(0)
    ours, tv = our_block(case, "torch"), torchvision_block(case)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}
    assert list(ours.state_dict()) == list(tv.state_dict())
    randomize_bn_parameters(ours)
    tv.load_state_dict(ours.state_dict(), strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(tv.state_dict()[key], value), key
    assert (ours.use_res_connect, ours.out_channels, ours._is_cn) == (tv.use_res_connect, tv.out_channels, tv._is_cn)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_eval_parity_with_torchvision_float64(case, backend):
    """Eval mode, folded (no_grad) and unfused (gradients wanted): outputs and gradients."""
    skip_unless_usable(backend, "cpu")
    ours, tv = block_pair(case, backend)
    ours.eval()
    tv.eval()
    x = block_input(case)
    with torch.no_grad():
        assert_close_scaled(ours(x), tv(x), rtol=1e-7)
    assert fold_caches(ours)
    assert_same_gradients(ours, tv, x)


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_training_parity_with_torchvision_float64(case, backend, recompute):
    """Three SGD steps in training mode: outputs, input and parameter gradients, then parameters,
    running statistics and num_batches_tracked."""
    skip_unless_usable(backend, "cpu")
    ours, tv = block_pair(case, backend, recompute=recompute)
    with torch.no_grad():
        out_shape = tv.eval()(block_input(case)).shape
    inputs, grads = three_steps_inputs(case, out_shape)
    result = train_steps(ours, inputs, grads)
    assert_same_steps(result, train_steps(tv, inputs, grads), rtol=1e-7)
    assert all(m.num_batches_tracked.item() == 3 for m in ours.modules() if isinstance(m, nn.BatchNorm2d))


GRADCHECK_BLOCKS = {
    "v2": lambda backend: InvertedResidual(4, 4, 1, 2, backend=backend),
    "v3-se": lambda backend: InvertedResidualV3(4, 8, 4, 3, 1, 1, "hardswish", 8, backend=backend),
}


@pytest.mark.parametrize("mode", ["eval", "train", "eval-frozen"])
@pytest.mark.parametrize("backend", ["torch", "cuda"])  # Triton's gradients: the float64 parity tests above
@pytest.mark.parametrize("block", list(GRADCHECK_BLOCKS))
def test_gradcheck_float64(block, backend, mode):
    """With respect to the input and every parameter (eval: unfused; train: batch statistics); and
    eval-frozen: only the input needs a gradient, so the BatchNorms are folded into the 1x1 convs.
    fast_mode (random projections of the Jacobian): the full one takes hundreds of passes."""
    skip_unless_usable(backend, "cpu")
    torch.manual_seed(0)
    m = GRADCHECK_BLOCKS[block](backend).double()
    randomize_bn_parameters(m)
    m.train(mode == "train")
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    if mode == "eval-frozen":
        m.requires_grad_(False)
        assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5, fast_mode=True)
        assert fold_caches(m)
        return
    names, params = zip(*m.named_parameters())

    def fn(x, *params):
        return torch.func.functional_call(m, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, fast_mode=True)


# ---------------------------------------------------------------------------------------------
# eval-mode folding


@pytest.mark.parametrize("backend", ["torch", "cuda"])
@pytest.mark.parametrize("case", CASES)
def test_folding_is_exact(case, backend):
    """The folded eval forward (no gradient needed) equals the unfused one within 1e-10 in float64."""
    skip_unless_usable(backend, "cpu")
    block, _ = block_pair(case, backend)
    block.eval()
    x = block_input(case)
    unfused = block(x)  # parameters require gradients: nothing is folded
    assert not fold_caches(block)
    with torch.no_grad():
        folded = block(x)
    assert fold_caches(block)
    assert_close_scaled(folded, unfused.detach(), rtol=1e-10)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"])
def test_folding_is_exact_on_whole_models(arch):
    """Every ConvBNAct of the model folds (the stem and last conv too); the state_dict is unchanged."""
    torch.manual_seed(0)
    model = getattr(mk, arch)(width_mult=0.5, num_classes=10, backend="cuda")
    randomize_batch_norms(model, size=32)
    model.double().eval()
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    unfused = model(x).detach()
    with torch.no_grad():
        folded = model(x)
    pointwise = [m for m in model.modules() if isinstance(m, ConvBNAct) and not m.depthwise]
    assert pointwise and all("_conv_fold_cache" in m[1].__dict__ for m in pointwise)
    assert_close_scaled(folded, unfused, rtol=1e-10)
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("case", ["v2-expand-residual", "v3-se-residual-k5"])
def test_fold_cache_follows_every_change(case):
    """The fold is recomputed after any change of a parameter or statistic (in place, by an
    optimizer, by load_state_dict, by ``.data =``), and gives the unfused result each time."""
    block, _ = block_pair(case, "cuda")
    block.eval()
    x = block_input(case)
    project_bn = block.conv[-1] if case in V2_CASES else block.block[-1][1]
    project_conv = block.conv[-2] if case in V2_CASES else block.block[-1][0]

    def check():
        with torch.no_grad():
            folded = block(x)
        assert_close_scaled(folded, block(x).detach(), rtol=1e-10)
        return project_bn.__dict__["_conv_fold_cache"][1]

    first = check()
    with torch.no_grad():
        assert check() is first  # unchanged: reused
        project_bn.running_var.mul_(2)
    second = check()
    assert second is not first
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    block(x).sum().backward()
    opt.step()
    third = check()
    assert third is not second
    state = {k: v.clone() for k, v in block.state_dict().items()}
    state[next(k for k in state if k.endswith("running_mean"))].add_(1)
    block.load_state_dict(state)
    fourth = check()
    project_conv.weight.data = project_conv.weight.data * 2
    assert check() is not fourth
    assert not [k for k in block.state_dict() if "fold" in k]


@pytest.mark.parametrize("groups", [1, 8], ids=["1x1", "depthwise"])
def test_fold_made_under_inference_mode_serves_autograd_later(groups):
    """A fold cached under torch.inference_mode is a normal tensor: a later call that needs the input's
    gradient (frozen parameters, so still folded) can save it for backward. The 1x1 conv's fold
    and the depthwise conv's alike (conv_bn_act.folded_conv_weights)."""
    out_channels = 16 if groups == 1 else 8
    conv = ConvBNAct(8, out_channels, kernel_size=1 if groups == 1 else 3, groups=groups, activation="hardswish",
                     backend="cuda").eval().requires_grad_(False)
    randomize_bn_parameters(conv)
    x = torch.randn(2, 8, 5, 5)
    with torch.inference_mode():
        expected = conv(x)
    x.requires_grad_()
    y = conv(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y.detach(), expected, rtol=0, atol=0)
    assert grad.shape == x.shape


@pytest.mark.parametrize("case", ["v2-expand-residual", "v3-se-residual-k5"])
def test_no_folding_in_training_mode(case):
    """Training mode under no_grad: batch statistics and running-statistics updates, as torchvision."""
    ours, tv = block_pair(case, "cuda")
    x = block_input(case)
    with torch.no_grad():
        assert_close_scaled(ours.train()(x), tv.train()(x), rtol=1e-7)
    assert not fold_caches(ours)
    for a, b in zip(ours.buffers(), tv.buffers()):
        assert_close_scaled(a, b, rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# training recompute


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["v2-expand-residual", "v3-se-residual-k5", "v3-no-se-stride2"])
def test_recompute_gives_bitwise_the_same_training(case, backend):
    skip_unless_usable(backend, "cpu")
    stored, _ = block_pair(case, backend)
    recomputed = copy.deepcopy(stored)
    set_recompute(recomputed, True)
    out_shape = stored.eval()(block_input(case)).shape
    inputs, grads = three_steps_inputs(case, out_shape)
    assert_same_steps(train_steps(recomputed, inputs, grads), train_steps(stored, inputs, grads), rtol=0)


def test_recompute_with_cumulative_moving_average():
    """momentum=None: the running statistics are the average over batches, whose weight
    1/num_batches_tracked would go wrong if the recomputation counted the batch a second time."""
    torch.manual_seed(0)
    stored = InvertedResidualV3(8, 16, 8, 3, 1, 1, "hardswish", 8, momentum=None, backend="cuda").double()
    recomputed = copy.deepcopy(stored)
    recomputed.recompute = True
    inputs = [torch.randn(2, 8, 6, 6, dtype=torch.float64) for _ in range(3)]
    grads = [torch.randn(2, 8, 6, 6, dtype=torch.float64) for _ in range(3)]
    assert_same_steps(train_steps(recomputed, inputs, grads), train_steps(stored, inputs, grads), rtol=0)
    bn = recomputed.block[0][1]
    assert bn.num_batches_tracked.item() == 3


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small"])
def test_recompute_whole_model_bitwise(arch):
    torch.manual_seed(0)
    stored = getattr(mk, arch)(width_mult=0.5, num_classes=10, dropout=0.0, backend="cuda")
    randomize_batch_norms(stored, size=32)
    stored.double()
    recomputed = copy.deepcopy(stored)
    set_recompute(recomputed, True)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    target = torch.randint(0, 10, (2,))
    out_a, grads_a, sd_a = two_sgd_steps(recomputed.train(), x, target)
    out_b, grads_b, sd_b = two_sgd_steps(stored.train(), x, target)
    for a, b in zip(out_a, out_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for ga, gb in zip(grads_a, grads_b):
        for name in gb:
            torch.testing.assert_close(ga[name], gb[name], rtol=0, atol=0, msg=name)
    for key in sd_b:
        torch.testing.assert_close(sd_a[key], sd_b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_large"])
def test_recompute_saves_fewer_activation_bytes(arch):
    """Batch 8 at 64x64 (float32): recompute keeps the blocks' inputs only; the expanded tensors
    (and every tensor saved inside a block) are gone from the saved set."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, 64, 64)
    stored = saved_activation_bytes(getattr(mk, arch)(backend="cuda").train(), x)
    recomputed = saved_activation_bytes(getattr(mk, arch)(backend="cuda", recompute=True).train(), x)
    assert recomputed < 0.25 * stored, (recomputed, stored)


@pytest.mark.parametrize("impl", ["ours", "torchvision"])
def test_saved_activation_bytes_keeps_nothing_alive(impl):
    """The measured forward's graph dies with the call: nothing it saved, and no parameter (which
    its AccumulateGrad nodes reference), outlives the model. bench model measures saved_mb between
    a variant's warm-up and the next variant's peak memory; a graph kept alive by a pack hook's
    reference cycle had added one whole forward's activations to every later row's peak."""
    model = (mk.mobilenet_v3_small(backend="cuda") if impl == "ours" else torchvision.models.mobilenet_v3_small()).train()
    param = weakref.ref(next(model.parameters()))
    assert saved_activation_bytes(model, torch.randn(2, 3, 32, 32)) > 0
    del model
    gc.collect()
    assert param() is None, "the measured forward's graph still holds the model's parameters"


def test_recompute_only_when_training_with_gradients():
    """Eval mode and no_grad run the block directly (nothing to recompute); the output is the same."""
    block, _ = block_pair("v3-se-residual-k5", "cuda", recompute=True)
    x = block_input("v3-se-residual-k5")
    hooks = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: hooks.append(t) or t, lambda t: t):
        with torch.no_grad():
            block.train()(x)
    assert not hooks
    block.eval()
    with torch.no_grad():
        folded = block(x)
    assert_close_scaled(folded, block(x).detach(), rtol=1e-10)


def test_set_recompute_and_builders():
    model = mk.mobilenet_v3_small(width_mult=0.25, recompute=True)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidualV3)]
    assert blocks and all(b.recompute for b in blocks)
    assert set_recompute(model, False) is model and not any(b.recompute for b in blocks)
    assert all(b.recompute for b in set_recompute(mk.mobilenet_v2(width_mult=0.25), True).modules()
               if isinstance(b, InvertedResidual))
    with pytest.raises(TypeError, match="recompute"):
        set_recompute(model, 1)
    with pytest.raises(TypeError, match="recompute"):
        InvertedResidual(8, 8, 1, 6, recompute="yes")
    assert "recompute=True" in repr(InvertedResidual(8, 8, 1, 6, recompute=True))


# ---------------------------------------------------------------------------------------------
# torch.compile and channels_last


@pytest.mark.parametrize("mode", ["eval", "train", "train-recompute"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend, mode):
    skip_unless_usable(backend, "cpu")
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = InvertedResidualV3(8, 16, 8, 3, 1, 1, "hardswish", 8, backend=backend)
    randomize_bn_parameters(block)
    reference = copy.deepcopy(block)
    block.train(mode != "eval")
    reference.train(mode != "eval")
    block.recompute = mode == "train-recompute"
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    tol = dict(rtol=1e-4, atol=1e-4)
    if mode == "eval":
        with torch.no_grad():  # folded, in the graph
            torch.testing.assert_close(compiled(x), reference(x), **tol)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = compiled(xa), reference(xb)
    torch.testing.assert_close(y, y_ref, **tol)
    g = torch.randn_like(y_ref)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    for (name, p), q in zip(block.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **tol, msg=name)
    for a, b in zip(block.buffers(), reference.buffers()):  # running statistics updated once
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("mode", ["eval-folded", "eval", "train", "train-recompute"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["v2-expand-residual", "v3-se-residual-k5"])
def test_channels_last_in_channels_last_out(case, backend, mode):
    skip_unless_usable(backend, "cpu")
    block, _ = block_pair(case, backend, recompute=mode == "train-recompute")
    block.train(mode.startswith("train"))
    reference = copy.deepcopy(block)
    x = block_input(case, size=6)
    with torch.set_grad_enabled(mode != "eval-folded"):
        y = block(x.contiguous(memory_format=torch.channels_last))
        y_ref = reference(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_close_scaled(y, y_ref, rtol=1e-7)


@pytest.mark.parametrize("mode", ["eval-folded", "train", "train-recompute"])
@pytest.mark.parametrize("case", ["v2-expand-residual", "v3-se-residual-k5"])
def test_autocast_bfloat16(case, mode):
    """Under CPU autocast (bf16 activations, fp32 weights and statistics) the block runs in bf16,
    folded or not, and stays within bf16 rounding of the fp32 block."""
    skip_unless_usable("cuda", "cpu")
    block, _ = block_pair(case, "cuda", recompute=mode == "train-recompute")
    block.float().train(mode != "eval-folded")
    reference = copy.deepcopy(block)
    x = block_input(case).bfloat16()  # as the previous layer's output is under autocast (and the residual)
    with torch.set_grad_enabled(mode != "eval-folded"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = block(x)
        y_ref = reference(x.float())
    assert y.dtype == torch.bfloat16
    assert_close_scaled(y.float(), y_ref, rtol=5e-2)
    if mode != "eval-folded":
        y.float().sum().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in block.parameters())
        for a, b in zip(block.buffers(), reference.buffers()):  # fp32 statistics, counted once
            assert a.dtype == b.dtype
            assert_close_scaled(a.float(), b.float(), rtol=5e-2)


# ---------------------------------------------------------------------------------------------
# convert(): torchvision blocks


@pytest.mark.parametrize("case", CASES)
def test_from_torchvision_shares_parameters_and_modes(case):
    torch.manual_seed(0)
    tv = torchvision_block(case)
    randomize_bn_parameters(tv)
    tv.eval()
    expanded_side = tv.conv[0] if case in V2_CASES else tv.block[0]
    expanded_side.train()  # a mixed-mode block stays mixed
    params, buffers = list(tv.parameters()), list(tv.buffers())
    keys = list(tv.state_dict())
    ours = mk.convert(tv, backend="cuda")  # a bare block: a new module, the old one unchanged
    assert type(ours) is (InvertedResidual if case in V2_CASES else InvertedResidualV3)
    assert type(tv) is not type(ours) and not [m for m in tv.modules() if isinstance(m, BatchNormAct2d)]
    assert list(ours.state_dict()) == keys
    assert all(a is b for a, b in zip(ours.parameters(), params)) and len(list(ours.parameters())) == len(params)
    assert all(a is b for a, b in zip(ours.buffers(), buffers)) and len(list(ours.buffers())) == len(buffers)
    first = ours.conv[0] if case in V2_CASES else ours.block[0]
    assert first.training and first[1].training and not ours.training
    assert all(m.backend == "cuda" for m in ours.modules() if hasattr(m, "backend"))
    ours.double()
    tv.double()
    x = block_input(case)
    with torch.no_grad():
        assert_close_scaled(ours(x), tv(x), rtol=1e-7)


def test_unsupported_torchvision_block_is_left_to_the_generic_conversion():
    """A block with another norm layer (here GroupNorm) is not ours to run: convert() leaves it,
    converting only what it knows inside it."""
    tv = mobilenetv2.InvertedResidual(8, 8, 1, 6, norm_layer=lambda c: nn.GroupNorm(2, c))
    model = nn.Sequential(tv)
    mk.convert(model, backend="torch")
    assert model[0] is tv and type(tv) is mobilenetv2.InvertedResidual
    assert not InvertedResidual.supports(tv) and not InvertedResidualV3.supports(tv)
    with pytest.raises(ValueError, match="module"):
        InvertedResidual.from_torchvision(tv)
    with pytest.raises(ValueError, match="module"):
        InvertedResidualV3.from_torchvision(mobilenetv2.InvertedResidual(8, 8, 1, 6))
