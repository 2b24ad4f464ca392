"""Backends are chosen by name; models and modules only pass the name down.

- ``"torch"``: the pure-PyTorch reference (always there).
- ``"triton"``: Triton kernels; on CUDA tensors, or on CPU tensors under the Triton interpreter
  (``TRITON_INTERPRET=1`` set before triton is imported; slow, meant for tests).
- ``"cuda"``: the compiled extension ``mobilenet_kernels._C``: CUDA kernels on CUDA tensors,
  C++ kernels on CPU tensors.

``backend=None`` picks the fastest usable one for the tensor's device: "cuda", then "triton", then
"torch" on a GPU; "cuda" (the C++ kernels), then "torch" on the CPU.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from . import _extension

BACKENDS = ("torch", "triton", "cuda")

TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def refresh_from_environment() -> None:
    """Re-read TRITON_INTERPRET (for a caller that sets it before triton is first imported)."""
    global TRITON_INTERPRET
    TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

_PREFERENCE = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cuda", "torch")}


def check_backend(name: str | None, arg: str = "backend") -> str | None:
    """Return ``name`` if it is None or a known backend name, else raise ValueError naming it."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"{arg}: unknown backend {name!r}; expected one of {', '.join(BACKENDS)} or None")
    return name


def unusable_reason(name: str, device_type: str) -> str | None:
    """Why backend ``name`` cannot run on ``device_type`` here, or None if it can."""
    check_backend(name)
    if device_type not in ("cpu", "cuda"):
        return f"tensors on device type {device_type!r} are not supported (cpu and cuda are)"
    if name == "torch":
        return None
    if name == "cuda":
        if not _extension.LOADED:
            return f"the extension mobilenet_kernels._C failed to load: {_extension.LOAD_ERROR}"
        if device_type == "cuda" and not _extension.CUDA_BUILT:
            return "the CUDA kernels were not built (no nvcc at install time, or MK_SKIP_CUDA_BUILD=1)"
        if device_type == "cpu" and not _extension.CPU_BUILT:
            return "the C++ CPU kernels were not built (MK_SKIP_CPU_KERNELS=1 at install time)"
        return None
    if not TRITON_INSTALLED:
        return "triton is not installed"
    if not _extension.LOADED:
        return f"the extension mobilenet_kernels._C (which holds the op schemas) failed to load: {_extension.LOAD_ERROR}"
    if device_type == "cpu" and not TRITON_INTERPRET:
        return "Triton runs on CPU tensors only under the interpreter: set TRITON_INTERPRET=1 before importing triton"
    if device_type == "cuda" and TRITON_INTERPRET:
        return "TRITON_INTERPRET=1 is set, so Triton kernels cannot run on CUDA tensors in this process"
    return None


def available(device: str | torch.device = "cpu") -> list[str]:
    """The backends usable for tensors on ``device``."""
    device_type = torch.device(device).type
    return [name for name in BACKENDS if unusable_reason(name, device_type) is None]


def resolve(backend: str | None, tensor: torch.Tensor) -> str:
    """The backend to run for ``tensor``: ``backend`` itself if usable, or the default when None."""
    check_backend(backend)
    device_type = tensor.device.type
    if backend is None:
        for name in _PREFERENCE.get(device_type, ("torch",)):
            if unusable_reason(name, device_type) is None:
                return name
        return "torch"
    reason = unusable_reason(backend, device_type)
    if reason is not None:
        raise RuntimeError(f"backend {backend!r} cannot run on {device_type} tensors here: {reason}")
    return backend
