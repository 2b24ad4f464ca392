"""Helpers shared by the MobileNet models: channel rounding, argument checks, initialisation.

Every BatchNorm of a model is a :class:`~mobilenet_kernels.nn.BatchNormAct2d` that also applies
the activation that follows it (``"identity"`` where none does), so a model never holds a separate
activation module after a BatchNorm and never branches on the backend: it only passes ``backend``
down to each BatchNormAct2d. The layers themselves (ConvBNAct, the inverted-residual blocks) are in
:mod:`mobilenet_kernels.nn`.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..nn import ConvBNAct  # noqa: F401  (re-exported: it lived here before moving to mobilenet_kernels.nn)


def _make_divisible(v: float, divisor: int, min_value: Optional[int] = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``min_value``, default
    ``divisor``), without going down by more than 10%.

    The rule of the TensorFlow reference (tensorflow/models research/slim/nets/mobilenet/mobilenet.py),
    identical to ``torchvision.models._utils._make_divisible``, so channel counts match torchvision's.
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    # Make sure that rounding down does not go down by more than 10%.
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def check_width_mult(width_mult: float) -> float:
    if not isinstance(width_mult, (int, float)) or isinstance(width_mult, bool) or not width_mult > 0:
        raise ValueError(f"width_mult: expected a number > 0, got {width_mult!r}")
    return width_mult


def check_num_classes(num_classes: int) -> int:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes: expected an integer >= 1, got {num_classes!r}")
    return num_classes


def check_dropout(dropout: float) -> float:
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout!r}")
    return dropout


def init_weights(model: nn.Module) -> None:
    """torchvision's MobileNet initialisation: Kaiming-normal (fan_out) convs with zero bias,
    BatchNorm weight 1 and bias 0, Linear weight N(0, 0.01) with zero bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


__all__ = [
    "ConvBNAct",
    "_make_divisible",
    "init_weights",
    "check_width_mult",
    "check_num_classes",
    "check_dropout",
]
