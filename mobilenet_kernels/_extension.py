"""Loads the compiled extension ``mobilenet_kernels._C`` (all op schemas, C++ CPU and CUDA kernels).

The package still imports without it, with only the "torch" backend usable, so that a broken build
shows up as a clear message from ``python -m mobilenet_kernels check`` rather than an ImportError.
"""

from __future__ import annotations

import ctypes
import os

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


def library_defining(symbol: str) -> str | None:
    """The file of the shared library where ``_C``'s own symbol lookup finds ``symbol`` (Linux),
    e.g. ``library_defining("__cxa_throw")``: a C++ runtime symbol found in ``_C`` itself means a
    static copy of libstdc++ lives there (see setup.py: it crashed our error messages on a GPU image).
    None when ``_C`` is not loaded, the platform has no dladdr, or nothing defines the symbol."""
    if not LOADED:
        return None

    class DlInfo(ctypes.Structure):
        _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                    ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]

    try:
        address = ctypes.cast(getattr(ctypes.CDLL(_C.__file__), symbol), ctypes.c_void_p).value
        dladdr = ctypes.CDLL(None).dladdr
    except (AttributeError, OSError):
        return None
    info = DlInfo()
    if not dladdr(ctypes.c_void_p(address), ctypes.byref(info)) or not info.fname:
        return None
    return os.path.realpath(info.fname.decode())
