"""Determinism (issue 9): under torch.use_deterministic_algorithms(True) every op of the kernel
backends ("cuda": the C++ CPU kernels on CPU tensors, the CUDA kernels on GPU tensors; "triton")
gives bitwise identical outputs, gradients and running statistics from run to run: forward and
backward of batch_norm_act (eval, training), depthwise_conv2d, its statistics variant, the fused
depthwise conv + BatchNorm + activation (eval, training), an inverted residual's expand + depthwise
layers in training (pointwise_depthwise_bn_act_train: both BatchNorms' running statistics) and
squeeze_excite (pointwise_conv2d and inverted_residual_eval: in their own test files).

The C++ CPU kernels that do their own arithmetic also give the same bits whatever the number of
threads: their reductions split the work by shape, never by thread count. Those whose CPU path runs
its GEMMs through ATen's BLAS (pointwise_conv2d and the ops built on it: BLAS_OPS) do not: MKL's
GEMM gives other bits at another thread count, inside a parallel region too (torch.mm itself at 1
and 2 threads, 2026-11-28); they are repeatable at a given thread count (the first test).
"""

from __future__ import annotations

import pytest
import torch

import mobilenet_kernels as mk
import mobilenet_kernels.functional as MF

from conftest import skip_unless_usable
from op_helpers import assert_bitwise_repeatable, make_input

KERNEL_BACKENDS = ["cuda", "triton"]
OPS = ["bn_eval", "bn_train", "dw", "dw_stats", "dwbn_eval", "dwbn_train", "pw_dw", "se"]
BLAS_OPS = {"pw_dw"}  # the expand conv's GEMMs (the C++ CPU pointwise kernels call ATen's BLAS)
ns = torch.ops.mobilenet_kernels


def shape_for(backend: str, device: str) -> tuple[int, int, int, int]:
    """Big enough to span several tiles/chunks of every reduction (and several threads on CPU);
    tiny for the Triton interpreter."""
    if backend == "triton" and device == "cpu":
        return (2, 6, 5, 5)
    return (8, 40, 19, 19) if device == "cpu" else (32, 96, 28, 28)


def make_run(op: str, backend: str, shape, layout: str, device: str):
    """A function that runs ``op`` forward and backward on fixed inputs and returns every result:
    output(s), the gradients of every differentiable input, and the running statistics it updated
    (starting from the same values each time)."""
    torch.manual_seed(0)
    N, C, H, W = shape
    x = make_input(shape, layout, torch.float32, device)
    mean0, var0 = torch.randn(C, device=device) * 0.1, torch.rand(C, device=device) + 0.5
    gamma, beta = torch.rand(C, device=device) + 0.5, torch.randn(C, device=device)
    w = torch.randn(C, 1, 3, 3, device=device) / 3
    cb = torch.randn(C, device=device)
    S = max(1, C // 4)
    se = (torch.randn(S, C, 1, 1, device=device) / C**0.5, torch.randn(S, device=device),
          torch.randn(C, S, 1, 1, device=device) * 2 / S**0.5, torch.randn(C, device=device))
    we = torch.randn(C, C // 2 + 1, 1, 1, device=device) / C**0.5  # pw_dw's expand conv from C // 2 + 1 channels
    grad_hw = ((H - 1) // 2 + 1, (W - 1) // 2 + 1) if op == "dw" else (H, W)  # dw runs at stride 2
    grad = make_input((N, C, *grad_hw), layout, torch.float32, device)

    def run():
        rm, rv = mean0.clone(), var0.clone()
        leaves = []
        if op in ("bn_eval", "bn_train"):
            leaves = [t.detach().clone().requires_grad_() for t in (x, gamma, beta)]
            y = MF.batch_norm_act(leaves[0], rm, rv, leaves[1], leaves[2], op == "bn_train", 0.1, 1e-5, "hardswish",
                                  backend=backend)
        elif op == "dw":
            leaves = [t.detach().clone().requires_grad_() for t in (x, w, cb)]
            y = MF.depthwise_conv2d(*leaves, 2, 1, 1, activation="relu6", backend=backend)
        elif op == "dw_stats":  # forward only: the conv and its epilogue statistics
            suffix = "" if backend == "cuda" else "_triton"
            return getattr(ns, "depthwise_conv2d_stats" + suffix)(x, w, [1, 1], [1, 1], [1, 1])
        elif op in ("dwbn_eval", "dwbn_train"):
            leaves = [t.detach().clone().requires_grad_() for t in (x, w, gamma, beta)]
            y = MF.depthwise_conv2d_bn_act(leaves[0], leaves[1], None, 1, 1, 1, rm, rv, leaves[2], leaves[3],
                                           op == "dwbn_train", 0.1, 1e-5, "hardswish", backend=backend)
        elif op == "pw_dw":
            x_in = x[:, : we.shape[1]].contiguous(memory_format=torch.channels_last if layout == "channels_last"
                                                  else torch.contiguous_format)
            leaves = [t.detach().clone().requires_grad_() for t in (x_in, we, w, gamma, beta)]
            rm2, rv2 = mean0.clone(), var0.clone()
            y = MF.pointwise_depthwise_bn_act_train(leaves[0], leaves[1], leaves[2], 1, 1, 1, rm, rv, leaves[3],
                                                    leaves[4], rm2, rv2, leaves[3], leaves[4], 0.1, 0.1, 1e-5,
                                                    "hardswish", backend=backend)
            return (y.detach(), *torch.autograd.grad(y, leaves, grad), rm, rv, rm2, rv2)
        else:
            leaves = [t.detach().clone().requires_grad_() for t in (x, *se)]
            y = MF.squeeze_excite(*leaves, activation="relu", scale_activation="hardsigmoid", backend=backend)
        grads = torch.autograd.grad(y, leaves, grad)
        return (y.detach(), *grads, rm, rv)

    return run


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_forward_and_backward_are_bitwise_repeatable(backend, op, layout, device):
    skip_unless_usable(backend, device)
    run = make_run(op, backend, shape_for(backend, device), layout, device)
    assert_bitwise_repeatable(run)


def _with_threads(n: int, run):
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return run()
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("op", [op for op in OPS if op not in BLAS_OPS])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cpp_cpu_kernels_give_the_same_bits_for_any_thread_count(op, layout):
    """One thread or two: the same bits (the reductions' partials are per shape-derived chunk,
    merged in a fixed order). The shape gives every kernel several chunks to share out."""
    skip_unless_usable("cuda", "cpu")
    run = make_run(op, "cuda", (8, 40, 33, 33), layout, "cpu")
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        results = {n: _with_threads(n, run) for n in (1, 2)}
    finally:
        torch.use_deterministic_algorithms(previous)
    for i, (a, b) in enumerate(zip(results[1], results[2])):
        assert torch.equal(a, b), f"result {i} differs between 1 and 2 threads"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_model_training_step_is_bitwise_repeatable(backend, device):
    """Two training steps (forward, backward, SGD) of MobileNetV3-Small from the same weights and
    batch: the same loss, gradients, parameters and running statistics, bit for bit."""
    skip_unless_usable(backend, device)
    if backend == "triton" and device == "cpu":
        pytest.skip("a whole model is too slow for the Triton interpreter; the op-level cases cover Triton here")
    size, batch = (32, 4) if device == "cpu" else (64, 8)
    threads = torch.get_num_threads()
    if device == "cpu":  # the thread-count case above covers threads; one keeps this fast on a busy machine
        torch.set_num_threads(1)
    torch.manual_seed(0)
    initial = mk.mobilenet_v3_small(width_mult=0.25, num_classes=10, dropout=0.0, backend=backend).state_dict()
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.randint(0, 10, (batch,), device=device)

    def run():
        model = mk.mobilenet_v3_small(width_mult=0.25, num_classes=10, dropout=0.0, backend=backend).to(device)
        model.load_state_dict(initial)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        out = []
        for _ in range(2):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), target)
            loss.backward()
            out += [loss.detach()] + [p.grad.clone() for p in model.parameters()]
            opt.step()
        return out + [t.clone() for t in model.state_dict().values()]

    try:
        assert_bitwise_repeatable(run)
    finally:
        torch.set_num_threads(threads)
