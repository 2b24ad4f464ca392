"""Loads the compiled extension ``mobilenet_kernels._C`` (all op schemas, C++ CPU and CUDA kernels).

The package still imports without it, with only the "torch" backend usable, so that a broken build
shows up as a clear message from ``python -m mobilenet_kernels check`` rather than an ImportError.
"""

from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (importing it registers the TORCH_LIBRARY schemas and kernels)

    LOAD_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    LOAD_ERROR = exc

LOADED = LOAD_ERROR is None
NAMESPACE = "mobilenet_kernels"


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``mobilenet_kernels::op`` has a kernel for ``dispatch_key`` ("CPU" or "CUDA")."""
    if not LOADED:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", dispatch_key)


# Probed once, on an op every build has: a CUDA kernel exists only where nvcc built csrc/cuda.
CPU_BUILT = has_kernel("batch_norm_act_eval", "CPU")
CUDA_BUILT = has_kernel("batch_norm_act_eval", "CUDA")
