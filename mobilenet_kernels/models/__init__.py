"""MobileNet V1, V2 and V3 built on our fused modules.

V2 and V3 have exactly torchvision's state_dict (keys and shapes, for every combination of
arguments), so torchvision checkpoints load with ``strict=True`` and ours load into torchvision.
Every BatchNorm is a :class:`~mobilenet_kernels.nn.BatchNormAct2d` holding the activation that
follows it; the builders pass ``backend`` down to each of them and never branch on it.
V2 and V3 are built from :class:`mobilenet_kernels.nn.InvertedResidual` / ``InvertedResidualV3``;
``recompute=True`` (or :func:`set_recompute`) trades their training activation memory for a
recomputation in backward.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..backends import check_backend
from ..nn import set_recompute
from .mobilenet_v1 import MobileNetV1, mobilenet_v1
from .mobilenet_v2 import MobileNetV2, mobilenet_v2
from .mobilenet_v3 import MobileNetV3, mobilenet_v3_large, mobilenet_v3_small


def set_backend(model: nn.Module, backend: Optional[str]) -> nn.Module:
    """Set ``backend`` ("torch" | "triton" | "cuda" | None) on every submodule of ``model`` that has a
    ``backend`` attribute (our BatchNormAct2d and future fused modules), in place; returns ``model``.

    Raises ValueError naming ``backend`` for an unknown name (checked before anything changes).
    """
    check_backend(backend)
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = backend
    return model


__all__ = [
    "MobileNetV1",
    "MobileNetV2",
    "MobileNetV3",
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "set_backend",
    "set_recompute",
]
