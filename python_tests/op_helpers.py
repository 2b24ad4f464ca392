"""Helpers shared by the op tests: inputs in every layout, error measures, determinism, argument
checks."""

import pytest
import torch

from mobilenet_kernels.activations import apply_activation


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


def exact_activation(z: torch.Tensor, act: str) -> torch.Tensor:
    """``apply_activation(z, act)``, but exact in float64 on every device, for references built from
    a pre-activation: ATen's CUDA hardswish and hardsigmoid multiply by a float32 1/6 even for
    float64 tensors. Elementwise that error stays within ``float64_tolerance``; after a residual add
    it does not: hardswish(z) = 4.3 and a residual of -4.05 leave 0.25 with an absolute error of
    1.3e-7, 5e-7 of the result (GPU run 7, the pointwise property test on an H200). Same gradients
    as ATen's, kinks included (clamp passes the gradient at its bounds as hardswish_backward does,
    hardtanh not, as hardsigmoid_backward)."""
    if z.dtype != torch.float64 or act not in ("hardswish", "hardsigmoid"):
        return apply_activation(z, act)
    if act == "hardswish":
        return z * (z + 3).clamp(0, 6) / 6
    return torch.nn.functional.hardtanh(z + 3, 0.0, 6.0) / 6


def float64_tolerance(act: str, device: str) -> dict:
    """Tolerance for a float64 comparison of outputs and gradients through ``act``. ATen multiplies
    by a float32 1/6 even for float64 tensors (relative error 2^-25 ~ 3e-8): on CUDA in hardswish
    and hardsigmoid (seen on an H200), and in hardsigmoid's backward on every device, CPU included,
    which our kernels match bit for bit (mk_common.h::act_derivative); against an exact float64
    reference (exact_activation) or another dtype's path, allow 1e-7 there. Elsewhere 1e-9."""
    loose = act == "hardsigmoid" or (act == "hardswish" and device == "cuda")
    tol = 1e-7 if loose else 1e-9
    return dict(rtol=tol, atol=tol)


def assert_stats_of(out, mean, var, msg=None):
    """``mean`` and ``var`` (a statistics op's) are the per-channel mean and biased variance of its
    stored output ``out``, computed in float64 (rtol 1e-5 for the mean, 1e-4 for the variance; atol
    1e-5)."""
    ref_var, ref_mean = torch.var_mean(out.double(), dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean.double(), ref_mean, rtol=1e-5, atol=1e-5, msg=msg)
    torch.testing.assert_close(var.double(), ref_var, rtol=1e-4, atol=1e-5, msg=msg)


def assert_output_mask_skips_outputs(backward):
    """``backward(mask)`` (a backward op with three outputs and an output mask, its other arguments
    bound) computes only the outputs its mask asks for: each as with the full mask, the others
    empty."""
    full = backward([True, True, True])
    for mask in ([True, False, False], [False, True, False], [False, False, True]):
        part = backward(mask)
        for m, p_, f in zip(mask, part, full):
            if m:
                torch.testing.assert_close(p_, f)
            else:
                assert p_.numel() == 0


def assert_bad_arguments_name_the_argument(call, good, cases, case):
    """``cases[case]`` is (change, exception type, pattern): ``call(**{**good, **change})``, the
    keyword arguments ``good`` (which ``call`` accepts) with ``change`` applied, raises that
    exception with a message matching the pattern (the name of the bad argument)."""
    change, exc, match = cases[case]
    assert set(change) <= set(good), f"{change}: not arguments of the good call"
    args = {**good, **change}
    with pytest.raises(exc, match=match):
        call(**args)

