"""The one activation set shared by every op, module and kernel.

The integer codes are the ones the C++/CUDA kernels (csrc/mk_common.h, ``Act``) and the Triton
kernels (``mobilenet_kernels/triton/_activations.py``) use; keep the three in step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, int] = {
    "identity": 0,
    "relu": 1,
    "relu6": 2,
    "hardswish": 3,
    "hardsigmoid": 4,
    "sigmoid": 5,
    "silu": 6,
}

_TORCH_FUNCTIONS = {
    "identity": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
}

# nn.Module types that convert() recognises after a BatchNorm, mapped to our names.
MODULE_TO_NAME: dict[type, str] = {
    nn.Identity: "identity",
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Sigmoid: "sigmoid",
    nn.SiLU: "silu",
}


def check_activation(name: str, arg: str = "activation") -> str:
    """Return ``name`` if it is a known activation, else raise ValueError naming ``arg``."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"{arg}: unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return name


def activation_code(name: str) -> int:
    return ACTIVATIONS[check_activation(name)]


def apply_activation(x: torch.Tensor, name: str) -> torch.Tensor:
    """The PyTorch reference of activation ``name``."""
    return _TORCH_FUNCTIONS[check_activation(name)](x)


_TORCH_FUNCTIONS_INPLACE = {
    "identity": lambda x: x,
    "relu": torch.relu_,
    "relu6": lambda x: F.hardtanh_(x, 0.0, 6.0),
    "hardswish": lambda x: F.hardswish(x, inplace=True),
    "hardsigmoid": lambda x: F.hardsigmoid(x, inplace=True),
    "sigmoid": torch.sigmoid_,
    "silu": lambda x: F.silu(x, inplace=True),
}


def apply_activation_(x: torch.Tensor, name: str) -> torch.Tensor:
    """:func:`apply_activation` in place on ``x`` (returned): the same PyTorch functions."""
    return _TORCH_FUNCTIONS_INPLACE[check_activation(name)](x)


def activation_name(module: nn.Module | None) -> str | None:
    """Our name for an activation module (None -> 'identity'), or None if we do not know it."""
    if module is None:
        return "identity"
    return MODULE_TO_NAME.get(type(module))


def activation_derivative(z: torch.Tensor, name: str) -> torch.Tensor:
    """d activation / dz at the pre-activation ``z``, with the kernels' (and ATen's) conventions at
    the kinks: relu' = 0 at 0; relu6' = 0 at 0 and 6; hardswish' = 0 for z <= -3, 1 for z >= 3;
    hardsigmoid' = 1/6 (rounded to float32, as ATen does) only on (-3, 3)."""
    check_activation(name)
    one, zero = torch.ones_like(z), torch.zeros_like(z)
    if name == "identity":
        return one
    if name == "relu":
        return torch.where(z > 0, one, zero)
    if name == "relu6":
        return torch.where((z > 0) & (z < 6), one, zero)
    if name == "hardswish":
        return torch.where(z <= -3, zero, torch.where(z >= 3, one, z / 3 + 0.5))
    if name == "hardsigmoid":
        return torch.where((z > -3) & (z < 3), torch.full_like(z, float(torch.tensor(1 / 6, dtype=torch.float32))), zero)
    s = torch.sigmoid(z)
    if name == "sigmoid":
        return s * (1 - s)
    return s * (1 + z * (1 - s))  # silu
