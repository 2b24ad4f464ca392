"""MobileNetV3 (Howard et al., "Searching for MobileNetV3", ICCV 2019).

Layer for layer the torchvision models (``torchvision.models.mobilenet_v3_large`` / ``_small``),
with every BatchNorm + activation pair (and every BatchNorm with no activation) as one
:class:`~mobilenet_kernels.nn.BatchNormAct2d`. The state_dict keys and shapes are torchvision's for
every combination of arguments, so ``model.load_state_dict(tv_model.state_dict())`` works both ways.
The blocks are :class:`mobilenet_kernels.nn.InvertedResidualV3` (here also under torchvision's name,
``InvertedResidual``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Optional

import torch
from torch import Tensor, nn

from ..nn import ConvBNAct, InvertedResidualV3
from ..running_stats import run_deferred
from ._layers import (
    _make_divisible,
    check_dropout,
    check_num_classes,
    check_width_mult,
    init_weights,
)

__all__ = ["InvertedResidualConfig", "InvertedResidual", "MobileNetV3", "mobilenet_v3_large", "mobilenet_v3_small"]

# BatchNorm settings of the TensorFlow reference (decay 0.99 is momentum 0.01 in PyTorch terms).
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


class InvertedResidualConfig:
    """One row of the MobileNetV3 paper's Tables 1 (Large) and 2 (Small): a "bneck" block.

    ``activation`` is the paper's NL column: "RE" (ReLU) or "HS" (h-swish). Channel counts are
    scaled by ``width_mult`` and rounded to a multiple of 8.
    """

    def __init__(
        self,
        input_channels: int,
        kernel: int,
        expanded_channels: int,
        out_channels: int,
        use_se: bool,
        activation: str,
        stride: int,
        dilation: int,
        width_mult: float,
    ):
        if activation not in ("RE", "HS"):
            raise ValueError(f"activation: expected 'RE' or 'HS', got {activation!r}")
        self.input_channels = self.adjust_channels(input_channels, width_mult)
        self.kernel = kernel
        self.expanded_channels = self.adjust_channels(expanded_channels, width_mult)
        self.out_channels = self.adjust_channels(out_channels, width_mult)
        self.use_se = use_se
        self.use_hs = activation == "HS"
        self.stride = stride
        self.dilation = dilation

    @staticmethod
    def adjust_channels(channels: int, width_mult: float) -> int:
        return _make_divisible(channels * width_mult, 8)


def _bneck(cnf: InvertedResidualConfig, *, backend: Optional[str], recompute: bool) -> InvertedResidualV3:
    """The block of one config row, as torchvision builds it: SE ``_make_divisible(exp / 4, 8)`` wide."""
    squeeze_channels = _make_divisible(cnf.expanded_channels // 4, 8) if cnf.use_se else None
    return InvertedResidualV3(
        cnf.input_channels, cnf.expanded_channels, cnf.out_channels, cnf.kernel, cnf.stride, cnf.dilation,
        "hardswish" if cnf.use_hs else "relu", squeeze_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM, backend=backend,
        recompute=recompute,
    )


# torchvision's name for the V3 block (mobilenet_kernels.nn.InvertedResidual is V2's).
InvertedResidual = InvertedResidualV3


class MobileNetV3(nn.Module):
    """MobileNetV3 with torchvision's layout (``features``, ``avgpool``, ``classifier``) and state_dict.

    Args:
        inverted_residual_setting: the bneck rows (see :func:`mobilenet_v3_large` / ``_small``).
        last_channel: channels of the penultimate (Linear) layer.
        num_classes: number of output classes (>= 1).
        dropout: dropout probability before the final Linear layer.
        backend: kernel backend of every BatchNormAct2d (None: the fastest usable one).
        recompute: every block recomputes its expanded tensors in backward instead of storing
            them (training activation memory; see :class:`mobilenet_kernels.nn.InvertedResidualV3`).

    BatchNorm uses eps=1e-3 and momentum=0.01 throughout, like torchvision and the TF reference.
    """

    def __init__(
        self,
        inverted_residual_setting: list[InvertedResidualConfig],
        last_channel: int,
        num_classes: int = 1000,
        dropout: float = 0.2,
        *,
        backend: Optional[str] = None,
        recompute: bool = False,
    ) -> None:
        super().__init__()
        check_num_classes(num_classes)
        check_dropout(dropout)
        if not inverted_residual_setting:
            raise ValueError("inverted_residual_setting: should not be empty")
        if not (
            isinstance(inverted_residual_setting, Sequence)
            and all(isinstance(s, InvertedResidualConfig) for s in inverted_residual_setting)
        ):
            raise TypeError("inverted_residual_setting: should be a list of InvertedResidualConfig")

        conv = partial(ConvBNAct, eps=_BN_EPS, momentum=_BN_MOMENTUM, backend=backend)
        layers: list[nn.Module] = []

        # building first layer: conv2d 3x3, stride 2, h-swish (first row of Tables 1 and 2)
        firstconv_output_channels = inverted_residual_setting[0].input_channels
        layers.append(conv(3, firstconv_output_channels, kernel_size=3, stride=2, activation="hardswish"))

        # building inverted residual blocks
        for cnf in inverted_residual_setting:
            layers.append(_bneck(cnf, backend=backend, recompute=recompute))

        # building last several layers: conv2d 1x1, h-swish
        lastconv_input_channels = inverted_residual_setting[-1].out_channels
        lastconv_output_channels = 6 * lastconv_input_channels
        layers.append(conv(lastconv_input_channels, lastconv_output_channels, kernel_size=1, activation="hardswish"))

        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        # The paper's two final "conv2d 1x1, NBN" rows as Linear layers, like torchvision.
        self.classifier = nn.Sequential(
            nn.Linear(lastconv_output_channels, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )

        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = run_deferred(self.features, x)  # the BatchNorms' running-statistics updates together
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _mobilenet_v3_conf(
    arch: str, width_mult: float = 1.0, reduced_tail: bool = False, dilated: bool = False
) -> tuple[list[InvertedResidualConfig], int]:
    check_width_mult(width_mult)
    reduce_divider = 2 if reduced_tail else 1
    dilation = 2 if dilated else 1

    bneck_conf = partial(InvertedResidualConfig, width_mult=width_mult)
    adjust_channels = partial(InvertedResidualConfig.adjust_channels, width_mult=width_mult)

    if arch == "mobilenet_v3_large":
        # MobileNetV3 paper, Table 1 (MobileNetV3-Large). Columns: input channels, kernel,
        # exp size, #out, SE, NL, s, dilation. Comments: the table's input resolution.
        inverted_residual_setting = [
            bneck_conf(16, 3, 16, 16, False, "RE", 1, 1),  # 112^2 x 16
            bneck_conf(16, 3, 64, 24, False, "RE", 2, 1),  # 112^2 x 16, C1
            bneck_conf(24, 3, 72, 24, False, "RE", 1, 1),  # 56^2 x 24
            bneck_conf(24, 5, 72, 40, True, "RE", 2, 1),  # 56^2 x 24, C2
            bneck_conf(40, 5, 120, 40, True, "RE", 1, 1),  # 28^2 x 40
            bneck_conf(40, 5, 120, 40, True, "RE", 1, 1),  # 28^2 x 40
            bneck_conf(40, 3, 240, 80, False, "HS", 2, 1),  # 28^2 x 40, C3
            bneck_conf(80, 3, 200, 80, False, "HS", 1, 1),  # 14^2 x 80
            bneck_conf(80, 3, 184, 80, False, "HS", 1, 1),  # 14^2 x 80
            bneck_conf(80, 3, 184, 80, False, "HS", 1, 1),  # 14^2 x 80
            bneck_conf(80, 3, 480, 112, True, "HS", 1, 1),  # 14^2 x 80
            bneck_conf(112, 3, 672, 112, True, "HS", 1, 1),  # 14^2 x 112
            bneck_conf(112, 5, 672, 160 // reduce_divider, True, "HS", 2, dilation),  # 14^2 x 112, C4
            # 7^2 x 160 (twice)
            bneck_conf(160 // reduce_divider, 5, 960 // reduce_divider, 160 // reduce_divider, True, "HS", 1, dilation),
            bneck_conf(160 // reduce_divider, 5, 960 // reduce_divider, 160 // reduce_divider, True, "HS", 1, dilation),
        ]
        last_channel = adjust_channels(1280 // reduce_divider)  # C5: conv2d 1x1, NBN, 1280
    elif arch == "mobilenet_v3_small":
        # MobileNetV3 paper, Table 2 (MobileNetV3-Small), same columns.
        inverted_residual_setting = [
            bneck_conf(16, 3, 16, 16, True, "RE", 2, 1),  # 112^2 x 16, C1
            bneck_conf(16, 3, 72, 24, False, "RE", 2, 1),  # 56^2 x 16, C2
            bneck_conf(24, 3, 88, 24, False, "RE", 1, 1),  # 28^2 x 24
            bneck_conf(24, 5, 96, 40, True, "HS", 2, 1),  # 28^2 x 24, C3
            bneck_conf(40, 5, 240, 40, True, "HS", 1, 1),  # 14^2 x 40
            bneck_conf(40, 5, 240, 40, True, "HS", 1, 1),  # 14^2 x 40
            bneck_conf(40, 5, 120, 48, True, "HS", 1, 1),  # 14^2 x 40
            bneck_conf(48, 5, 144, 48, True, "HS", 1, 1),  # 14^2 x 48
            bneck_conf(48, 5, 288, 96 // reduce_divider, True, "HS", 2, dilation),  # 14^2 x 48, C4
            # 7^2 x 96 (twice)
            bneck_conf(96 // reduce_divider, 5, 576 // reduce_divider, 96 // reduce_divider, True, "HS", 1, dilation),
            bneck_conf(96 // reduce_divider, 5, 576 // reduce_divider, 96 // reduce_divider, True, "HS", 1, dilation),
        ]
        last_channel = adjust_channels(1024 // reduce_divider)  # C5: conv2d 1x1, NBN, 1024
    else:
        raise ValueError(f"arch: unsupported model type {arch!r}")

    return inverted_residual_setting, last_channel


def mobilenet_v3_large(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    reduced_tail: bool = False,
    dilated: bool = False,
    dropout: float = 0.2,
    backend: Optional[str] = None,
    recompute: bool = False,
) -> MobileNetV3:
    """MobileNetV3-Large (5,483,032 parameters at the defaults), with torchvision's state_dict.

    ``reduced_tail`` halves the channels of the last stage (paper section 6.1.2, for detection and
    segmentation); ``dilated`` makes the last stage's depthwise convs dilation 2 and stride 1
    (output stride 16, for segmentation). ``backend`` is passed to every BatchNormAct2d, ``recompute``
    to every block (see :func:`mobilenet_kernels.models.set_recompute`).
    """
    setting, last_channel = _mobilenet_v3_conf("mobilenet_v3_large", width_mult, reduced_tail, dilated)
    return MobileNetV3(setting, last_channel, num_classes=num_classes, dropout=dropout, backend=backend,
                       recompute=recompute)


def mobilenet_v3_small(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    reduced_tail: bool = False,
    dilated: bool = False,
    dropout: float = 0.2,
    backend: Optional[str] = None,
    recompute: bool = False,
) -> MobileNetV3:
    """MobileNetV3-Small (2,542,856 parameters at the defaults), with torchvision's state_dict.

    Arguments as for :func:`mobilenet_v3_large`.
    """
    setting, last_channel = _mobilenet_v3_conf("mobilenet_v3_small", width_mult, reduced_tail, dilated)
    return MobileNetV3(setting, last_channel, num_classes=num_classes, dropout=dropout, backend=backend,
                       recompute=recompute)
