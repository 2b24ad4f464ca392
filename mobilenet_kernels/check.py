"""``python -m mobilenet_kernels check``: versions, built and usable backends, and a quick
correctness self-test of every usable backend against the torch reference."""

from __future__ import annotations

import os
import platform
import sys

import torch


def _enable_triton_interpreter_on_cpu_only_machines() -> None:
    """Without a GPU, Triton can only run under its interpreter; switch it on so that the Triton
    kernels are self-tested too. Only possible before triton is first imported."""
    from . import backends

    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        backends.refresh_from_environment()


def versions() -> dict[str, str]:
    from . import __version__

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    info = {
        "mobilenet_kernels": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "torch CUDA": str(torch.version.cuda),
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    return info


def _self_test_cases():
    """(shape, memory_format, activation, dtype): small, odd shapes in both layouts."""
    return [
        ((2, 16, 7, 7), torch.contiguous_format, "hardswish", torch.float32),
        ((3, 13, 5, 3), torch.channels_last, "relu6", torch.float32),
        ((1, 24, 1, 1), torch.contiguous_format, "hardsigmoid", torch.float32),
        ((2, 40, 4, 4), torch.channels_last, "relu", torch.bfloat16),
    ]


def self_test(backend: str, device: str) -> tuple[bool, float]:
    """Every op, forward + backward, vs the float64 torch reference: (ok, worst error over its
    tolerance). float32 cases are held to float32 tolerances, so cuDNN runs them in IEEE float32."""
    from .reference import ieee_fp32

    with ieee_fp32():
        results = [test(backend, device) for test in (_self_test_batch_norm_act, _self_test_depthwise,
                                                        _self_test_squeeze_excite)]
    return all(ok for ok, _ in results), max(err for _, err in results)


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).abs() / (1 + ref.double().abs())).max().item() if ref.numel() else 0.0


def _self_test_depthwise(backend: str, device: str) -> tuple[bool, float]:
    """depthwise_conv2d (k3 s1, k5 s2, both layouts, odd C and sizes) and dw conv + BN + act in
    training, forward + backward, vs the float64 reference."""
    from . import functional as MF
    from .reference import depthwise_conv2d_bn_act_ref, depthwise_conv2d_ref

    gen = torch.Generator().manual_seed(1)
    worst, ok = 0.0, True
    cases = [((2, 16, 7, 7), 3, 1, torch.contiguous_format, "relu6", torch.float32),
             ((2, 13, 9, 6), 5, 2, torch.channels_last, "hardswish", torch.float32),
             ((2, 24, 8, 8), 3, 2, torch.channels_last, "relu", torch.bfloat16)]
    for shape, k, s, fmt, act, dtype in cases:
        C, p = shape[1], k // 2
        x = torch.randn(shape, generator=gen).to(device, dtype).contiguous(memory_format=fmt).requires_grad_()
        w = (torch.randn(C, 1, k, k, generator=gen) / k).to(device, dtype).requires_grad_()
        b = torch.randn(C, generator=gen).to(device, dtype)
        bn_w, bn_b = (torch.randn(C, generator=gen).to(device) for _ in range(2))
        y = MF.depthwise_conv2d(x, w, b, s, p, 1, activation=act, backend=backend)
        y2 = MF.depthwise_conv2d_bn_act(x, w, None, s, p, 1, None, None, bn_w, bn_b, True, 0.1, 1e-5, act,
                                        backend=backend)
        grads = torch.autograd.grad((y.float().sum(), (y2.float() * y2.float()).sum()), (x, w))
        x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        y64 = depthwise_conv2d_ref(x64, w64, b.double(), s, p, 1, act)
        y264 = depthwise_conv2d_bn_act_ref(x64, w64, None, s, p, 1, None, None, bn_w.double(), bn_b.double(), True,
                                           0.1, 1e-5, act)
        grads64 = torch.autograd.grad((y64.sum(), (y264 * y264).sum()), (x64, w64))
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        for ours, ref in ((y, y64), (y2, y264), *zip(grads, grads64)):
            scale = max(1.0, ref.abs().max().item())  # gradients summed over many terms: judge on their scale
            err = _rel_err(ours / scale, ref / scale) / tol
            worst = max(worst, err)
            ok &= err <= 1
        ok &= y.is_contiguous(memory_format=fmt) and y2.is_contiguous(memory_format=fmt)
    return ok, worst


def _self_test_squeeze_excite(backend: str, device: str) -> tuple[bool, float]:
    """squeeze_excite (both layouts, odd C, 1x1 and odd planes, bf16 with fp32 parameters), forward +
    backward (input and all four parameters), vs the float64 reference."""
    from . import functional as MF
    from .reference import squeeze_excite_ref

    gen = torch.Generator().manual_seed(2)
    worst, ok = 0.0, True
    cases = [((2, 16, 7, 7), 8, torch.contiguous_format, ("relu", "hardsigmoid"), torch.float32),
             ((3, 13, 5, 3), 4, torch.channels_last, ("hardswish", "sigmoid"), torch.float32),
             ((2, 24, 1, 1), 8, torch.channels_last, ("relu", "hardsigmoid"), torch.bfloat16)]
    for shape, S, fmt, (act, sact), dtype in cases:
        C = shape[1]
        x = torch.randn(shape, generator=gen).to(device, dtype).contiguous(memory_format=fmt).requires_grad_()
        params = [(torch.randn(*size, generator=gen) / fan**0.5).to(device).requires_grad_()
                  for size, fan in (((S, C, 1, 1), C), ((S,), 1), ((C, S, 1, 1), S), ((C,), 1))]
        y = MF.squeeze_excite(x, *params, activation=act, scale_activation=sact, backend=backend)
        grads = torch.autograd.grad(y.float().sum(), (x, *params))
        x64, *p64 = (t.detach().double().requires_grad_() for t in (x, *params))
        y64 = squeeze_excite_ref(x64, *p64, act, sact)
        grads64 = torch.autograd.grad(y64.sum(), (x64, *p64))
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        for ours, ref in ((y, y64), *zip(grads, grads64)):
            scale = max(1.0, ref.abs().max().item())
            err = _rel_err(ours / scale, ref / scale) / tol
            worst = max(worst, err)
            ok &= err <= 1
        ok &= y.is_contiguous(memory_format=fmt)
    return ok, worst


def _self_test_batch_norm_act(backend: str, device: str) -> tuple[bool, float]:
    """batch_norm_act forward + backward, eval and training (with the running-stat update), vs the
    float64 torch reference; returns (ok, worst relative error)."""
    from . import functional as MF
    from .reference import batch_norm_act_ref

    gen = torch.Generator().manual_seed(0)
    worst, ok = 0.0, True
    for training in (False, True):
        for shape, fmt, act, dtype in _self_test_cases():
            C = shape[1]
            if training and shape[0] * shape[2] * shape[3] == 1:
                continue  # one value per channel: training mode rejects it, as PyTorch does
            x = torch.randn(shape, generator=gen).to(device, dtype).contiguous(memory_format=fmt).requires_grad_()
            mean, bias, weight = (torch.randn(C, generator=gen).to(device) for _ in range(3))
            var = (torch.rand(C, generator=gen) + 0.5).to(device)
            mean64, var64 = mean.double(), var.double()
            weight.requires_grad_()
            y = MF.batch_norm_act(x, mean, var, weight, bias, training, 0.1, 1e-5, act, backend=backend)
            gx, gw = torch.autograd.grad(y, (x, weight), torch.ones_like(y))
            x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
            y64 = batch_norm_act_ref(x64, mean64, var64, w64, bias.double(), training, 0.1, 1e-5, act)
            gx64, gw64 = torch.autograd.grad(y64, (x64, w64), torch.ones_like(y64))
            tol = 1e-4 if dtype == torch.float32 else 3e-2
            for ours, ref in ((y, y64), (gx, gx64), (gw, gw64), (mean, mean64), (var, var64)):
                err = _rel_err(ours, ref) / tol
                worst = max(worst, err)
                ok &= err <= 1
            ok &= y.is_contiguous(memory_format=fmt)
    return ok, worst


def run_check() -> int:
    _enable_triton_interpreter_on_cpu_only_machines()
    from . import _extension, backends

    print("mobilenet_kernels check")
    for key, value in versions().items():
        print(f"  {key:<18} {value}")
    print("\nbuilt")
    print(f"  {'extension _C':<18} {'yes' if _extension.LOADED else 'NO: ' + str(_extension.LOAD_ERROR)}")
    print(f"  {'C++ CPU kernels':<18} {'yes' if _extension.CPU_BUILT else 'no'}")
    print(f"  {'CUDA kernels':<18} {'yes' if _extension.CUDA_BUILT else 'no (nvcc absent at install, or MK_SKIP_CUDA_BUILD=1)'}")
    print(f"  {'Triton':<18} {'yes' if backends.TRITON_INSTALLED else 'no'}"
          f"{' (interpreter: TRITON_INTERPRET=1)' if backends.TRITON_INTERPRET else ''}")

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print("\nself-test: batch_norm_act (eval, training), depthwise_conv2d (alone; + BN + act in training) and")
    print("squeeze_excite, forward + backward, vs the float64 torch reference")
    failures = 0
    for device in devices:
        for name in backends.BACKENDS:
            reason = backends.unusable_reason(name, device)
            if reason is not None:
                print(f"  {device:<5} {name:<7} skipped: {reason}")
                continue
            try:
                ok, err = self_test(name, device)
            except Exception as exc:  # a kernel that raises is a failure to report, not a crash
                failures += 1
                print(f"  {device:<5} {name:<7} FAIL  ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                continue
            failures += not ok
            print(f"  {device:<5} {name:<7} {'PASS' if ok else 'FAIL'}  (worst error / tolerance {err:.2f})")
    print("\nOK" if failures == 0 else f"\n{failures} backend(s) FAILED")
    return 0 if failures == 0 else 1
