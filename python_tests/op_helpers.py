"""Helpers shared by the op tests: inputs in every layout, error measures, determinism."""

import torch


def make_input(shape, layout, dtype, device):
    x = torch.randn(shape, dtype=torch.float64, device=device) * 2 + 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # a sliced, non-dense view
        N, C, H, W = shape
        x = torch.randn(N, C, H, 2 * W, dtype=torch.float64, device=device)[..., ::2]
    return x.to(dtype)


def assert_bitwise_repeatable(run):
    """Two runs of ``run()`` under torch.use_deterministic_algorithms(True) give identical bits."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = run(), run()
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_within_2x_torch(ours, torchs, refs, names, context=""):
    """The low-precision bound of every op: for each output, our error against the float64
    reference is at most twice PyTorch's own error on the same inputs in the same dtype (plus 1e-6 of
    the reference's scale, for outputs PyTorch computes exactly)."""
    for what, a, t, r in zip(names, ours, torchs, refs, strict=True):
        e_ours, e_torch = max_err(a, r), max_err(t, r)
        assert e_ours <= 2 * e_torch + 1e-6 * r.abs().max().item(), (
            f"{what}: error {e_ours:.3g} vs torch's {e_torch:.3g} {context}"
        )


def float64_tolerance(act: str, device: str) -> dict:
    """Tolerance for a float64 comparison against PyTorch's own activation. ATen's CUDA hardswish
    and hardsigmoid multiply by a float32 1/6 even for float64 tensors (relative error 2^-25 ~ 3e-8,
    seen on an H200), while our kernels divide in float64: against them on CUDA, allow 1e-7."""
    tol = 1e-7 if act in ("hardswish", "hardsigmoid") and device == "cuda" else 1e-9
    return dict(rtol=tol, atol=tol)
