"""MobileNet (V1) (Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications", 2017, arXiv:1704.04861).

torchvision has no V1; this one follows the paper's Table 1 and uses the same layout and
conventions as our (torchvision-compatible) V2/V3: ``features`` (ConvBNAct blocks), ``avgpool``,
``classifier`` (Dropout, Linear), torchvision's weight initialisation, PyTorch's default BatchNorm
settings (eps=1e-5, momentum=0.1, as torchvision's V2).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..running_stats import run_deferred
from ._layers import ConvBNAct, _make_divisible, check_dropout, check_num_classes, check_width_mult, init_weights

__all__ = ["DepthwiseSeparableConv", "MobileNetV1", "mobilenet_v1"]

# MobileNet paper, Table 1 (input 224x224x3), after the first "Conv / s2, 3x3x3x32" layer: the 13
# depthwise-separable units as (output channels of the pointwise conv, stride of the depthwise conv).
# The table lists the 13th depthwise conv ("Conv dw / s2, 7x7x1024") with stride 2, but its input
# and output are both 7x7: a known typo; it is stride 1 here, as in every reference implementation.
_V1_SETTING: list[tuple[int, int]] = [
    # c, s            table row (input size)
    (64, 1),  # Conv dw / s1 112x112x32,  Conv / s1 1x1x32x64
    (128, 2),  # Conv dw / s2 112x112x64,  Conv / s1 1x1x64x128
    (128, 1),  # Conv dw / s1 56x56x128,   Conv / s1 1x1x128x128
    (256, 2),  # Conv dw / s2 56x56x128,   Conv / s1 1x1x128x256
    (256, 1),  # Conv dw / s1 28x28x256,   Conv / s1 1x1x256x256
    (512, 2),  # Conv dw / s2 28x28x256,   Conv / s1 1x1x256x512
    (512, 1),  # 5x: Conv dw / s1 14x14x512, Conv / s1 1x1x512x512
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),  # Conv dw / s2 14x14x512,  Conv / s1 1x1x512x1024
    (1024, 1),  # Conv dw / s1 (table: s2, typo) 7x7x1024, Conv / s1 1x1x1024x1024
]


class DepthwiseSeparableConv(nn.Sequential):
    """One depthwise-separable unit of the paper's Figure 3: ``Sequential(dw, pw)`` with
    ``dw = ConvBNAct(3x3 depthwise, stride)`` and ``pw = ConvBNAct(1x1)``, each BatchNorm fused with
    its ReLU. Keys: ``0.0.weight`` (dw conv), ``0.1.*`` (dw BN), ``1.0.weight`` (pw conv), ``1.1.*``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, backend: Optional[str] = None) -> None:
        if stride not in (1, 2):
            raise ValueError(f"stride: expected 1 or 2, got {stride}")
        super().__init__(
            ConvBNAct(
                in_channels, in_channels, kernel_size=3, stride=stride, groups=in_channels, activation="relu", backend=backend
            ),
            ConvBNAct(in_channels, out_channels, kernel_size=1, activation="relu", backend=backend),
        )
        self.out_channels = out_channels


class MobileNetV1(nn.Module):
    """MobileNet V1 (paper Table 1): conv 3x3/s2 to 32 channels, 13 depthwise-separable units,
    global average pooling, dropout, fully connected layer. Every BatchNorm is followed by ReLU
    (the paper's; not ReLU6, which only the later TF releases used) and fused with it.

    Args:
        num_classes: number of output classes (>= 1).
        width_mult: the paper's width multiplier alpha (> 0), applied to the channels of every conv
            (section 3.3). Channels are ``_make_divisible(c * alpha, 8)``; at the paper's alphas
            1.0, 0.75, 0.5, 0.25 this equals ``int(c * alpha)`` (Keras, TF-slim) and gives
            4,231,976 / 2,585,560 / 1,331,592 / 470,072 parameters (with 1000 classes), i.e. the
            paper's Table 6 counts (4.2M / 2.6M / 1.3M / 0.5M).
        dropout: dropout probability before the Linear layer. Default 0.001: the reference
            implementations' value (TF-slim ``dropout_keep_prob=0.999``, Keras ``dropout=1e-3``);
            the paper uses "very little or no" regularisation (section 4).
        backend: kernel backend of every BatchNormAct2d (None: the fastest usable one).

    The paper's resolution multiplier rho (section 3.4) is simply the input size: the network is
    fully convolutional up to an adaptive global average pool, so any input size (e.g. the paper's
    224, 192, 160, 128) works with the same weights and gives ``(N, num_classes)`` logits.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.001,
        *,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        check_width_mult(width_mult)
        check_dropout(dropout)

        def channels(c: int) -> int:
            return _make_divisible(c * width_mult, 8)

        input_channel = channels(32)
        # Table 1, first row: Conv / s2, 3x3x3x32
        features: list[nn.Module] = [ConvBNAct(3, input_channel, kernel_size=3, stride=2, activation="relu", backend=backend)]
        for c, s in _V1_SETTING:
            output_channel = channels(c)
            features.append(DepthwiseSeparableConv(input_channel, output_channel, s, backend=backend))
            input_channel = output_channel
        self.features = nn.Sequential(*features)
        self.last_channel = input_channel

        # Table 1, last rows: Avg Pool / s1 7x7 (adaptive here), FC / s1 1024x1000, (softmax in the loss)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(self.last_channel, num_classes),
        )

        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = run_deferred(self.features, x)  # the BatchNorms' running-statistics updates together
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def mobilenet_v1(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    dropout: float = 0.001,
    backend: Optional[str] = None,
) -> MobileNetV1:
    """MobileNet V1 (4,231,976 parameters at the defaults); see :class:`MobileNetV1`.

    ``width_mult`` is the paper's alpha; the resolution multiplier rho is the input size you feed
    (any size). ``backend`` is passed to every BatchNormAct2d.
    """
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult, dropout=dropout, backend=backend)
