"""SqueezeExcitation on our squeeze_excite kernels, with torchvision's state_dict keys."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as MF
from ..activations import activation_name, check_activation
from ..backends import check_backend


def _torchvision_class():
    try:
        from torchvision.ops import SqueezeExcitation
    except ImportError:  # torchvision is optional at runtime
        return None
    return SqueezeExcitation


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation (Hu et al. 2018) as MobileNetV3 uses it:
    ``x * scale_activation(fc2(activation(fc1(avgpool(x)))))``, run by
    :func:`mobilenet_kernels.functional.squeeze_excite` (one pooling pass, one excite step per
    image, one scaling pass; backward likewise).

    Parameters and state_dict keys (``fc1.weight``, ``fc1.bias``, ``fc2.weight``, ``fc2.bias``) are
    those of ``torchvision.ops.SqueezeExcitation``; ``activation`` / ``scale_activation`` are given
    by name ("relu", "silu", "hardswish" / "hardsigmoid", "sigmoid"). ``backend`` picks the kernels
    by name (None: the fastest usable).
    """

    def __init__(self, input_channels: int, squeeze_channels: int, activation: str = "relu",
                 scale_activation: str = "hardsigmoid", *, backend: str | None = None, device=None, dtype=None) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1, device=device, dtype=dtype)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1, device=device, dtype=dtype)
        self.activation = check_activation(activation, "activation")
        self.scale_activation = check_activation(scale_activation, "scale_activation")
        self.backend = check_backend(backend)

    @staticmethod
    def supports(module: nn.Module) -> bool:
        """Whether ``module`` is a ``torchvision.ops.SqueezeExcitation`` (exactly that class) whose
        activations we know."""
        cls = _torchvision_class()
        return (
            cls is not None
            and type(module) is cls
            and all(type(fc) is nn.Conv2d and fc.kernel_size == (1, 1) and fc.groups == 1 and fc.bias is not None
                    and fc.stride == (1, 1) and fc.padding == (0, 0) for fc in (module.fc1, module.fc2))
            and activation_name(module.activation) is not None
            and activation_name(module.scale_activation) is not None
        )

    @classmethod
    def from_torchvision(cls, module: nn.Module, backend: str | None = None) -> "SqueezeExcitation":
        """A SqueezeExcitation sharing ``module``'s fc1/fc2 (no copy), in the same train/eval mode."""
        if not cls.supports(module):
            raise ValueError(f"module: expected a torchvision.ops.SqueezeExcitation with known activations, got {module}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.fc1, new.fc2 = module.fc1, module.fc2
        new.activation = activation_name(module.activation)
        new.scale_activation = activation_name(module.scale_activation)
        new.backend = check_backend(backend)
        new.train(module.training)
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return MF.squeeze_excite(input, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                                 activation=self.activation, scale_activation=self.scale_activation,
                                 backend=self.backend)

    def extra_repr(self) -> str:
        return f"activation={self.activation}, scale_activation={self.scale_activation}, backend={self.backend}"
