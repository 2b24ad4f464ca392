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


def activation_name(module: nn.Module | None) -> str | None:
    """Our name for an activation module (None -> 'identity'), or None if we do not know it."""
    if module is None:
        return "identity"
    return MODULE_TO_NAME.get(type(module))
