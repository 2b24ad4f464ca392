"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018).

Layer for layer the torchvision model (``torchvision.models.mobilenet_v2``), with every
BatchNorm + ReLU6 pair (and every BatchNorm with no activation) as one
:class:`~mobilenet_kernels.nn.BatchNormAct2d`. The state_dict keys and shapes are torchvision's for
every combination of arguments, so ``model.load_state_dict(tv_model.state_dict())`` works both ways.
The blocks are :class:`mobilenet_kernels.nn.InvertedResidual` (also importable from here).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..nn import ConvBNAct, InvertedResidual
from ..running_stats import run_deferred
from ._layers import _make_divisible, check_dropout, check_num_classes, check_width_mult, init_weights

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]


class MobileNetV2(nn.Module):
    """MobileNetV2 with torchvision's layout (``features``, ``classifier``) and state_dict.

    Args:
        num_classes: number of output classes (>= 1).
        width_mult: width multiplier applied to every layer's channels (> 0), rounded with
            ``_make_divisible(c * width_mult, round_nearest)``; the last conv's 1280 channels are only
            ever widened (``max(1.0, width_mult)``), as in the paper.
        inverted_residual_setting: rows ``[t, c, n, s]`` (expansion, channels, repeats, stride of the
            first repeat); default the paper's Table 2.
        round_nearest: channels are rounded to a multiple of this (1 turns rounding off).
        dropout: dropout probability before the final Linear layer.
        backend: kernel backend of every BatchNormAct2d (None: the fastest usable one).
        recompute: every block recomputes its expanded tensors in backward instead of storing
            them (training activation memory; see :class:`mobilenet_kernels.nn.InvertedResidual`).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        inverted_residual_setting: Optional[list[list[int]]] = None,
        round_nearest: int = 8,
        dropout: float = 0.2,
        *,
        backend: Optional[str] = None,
        recompute: bool = False,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        check_width_mult(width_mult)
        check_dropout(dropout)
        if not isinstance(round_nearest, int) or round_nearest < 1:
            raise ValueError(f"round_nearest: expected an integer >= 1, got {round_nearest!r}")

        input_channel = 32
        last_channel = 1280

        if inverted_residual_setting is None:
            # MobileNetV2 paper, Table 2 (input 224x224x3).
            inverted_residual_setting = [
                # t, c, n, s
                [1, 16, 1, 1],  # 112x112x32 -> 112x112x16
                [6, 24, 2, 2],  # -> 56x56x24
                [6, 32, 3, 2],  # -> 28x28x32
                [6, 64, 4, 2],  # -> 14x14x64
                [6, 96, 3, 1],  # -> 14x14x96
                [6, 160, 3, 2],  # -> 7x7x160
                [6, 320, 1, 1],  # -> 7x7x320
            ]
        if len(inverted_residual_setting) == 0 or any(len(row) != 4 for row in inverted_residual_setting):
            raise ValueError(
                f"inverted_residual_setting: expected a non-empty list of [t, c, n, s] rows, got {inverted_residual_setting}"
            )

        # building first layer: conv2d 3x3, stride 2, 32 channels (Table 2, first row)
        input_channel = _make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvBNAct(3, input_channel, stride=2, activation="relu6", backend=backend)]
        # building inverted residual blocks
        for t, c, n, s in inverted_residual_setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(InvertedResidual(input_channel, output_channel, stride, expand_ratio=t, backend=backend,
                                                 recompute=recompute))
                input_channel = output_channel
        # building last several layers: conv2d 1x1, 1280 channels (Table 2)
        features.append(ConvBNAct(input_channel, self.last_channel, kernel_size=1, activation="relu6", backend=backend))
        self.features = nn.Sequential(*features)

        # building classifier (the paper's final 1x1 conv "k" as a Linear layer, like torchvision)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(self.last_channel, num_classes),
        )

        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = run_deferred(self.features, x)  # the BatchNorms' running-statistics updates together
        # Cannot use "squeeze" as batch-size can be 1
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v2(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    round_nearest: int = 8,
    dropout: float = 0.2,
    backend: Optional[str] = None,
    recompute: bool = False,
) -> MobileNetV2:
    """MobileNetV2 (3,504,872 parameters at the defaults), with torchvision's state_dict.

    ``backend`` ("torch" | "triton" | "cuda" | None) is passed to every BatchNormAct2d; change it later
    with :func:`mobilenet_kernels.models.set_backend`. ``recompute`` is passed to every block; change
    it later with :func:`mobilenet_kernels.models.set_recompute`.
    """
    return MobileNetV2(
        num_classes=num_classes, width_mult=width_mult, round_nearest=round_nearest, dropout=dropout, backend=backend,
        recompute=recompute,
    )
