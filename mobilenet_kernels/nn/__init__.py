"""Modules built on mobilenet_kernels ops, with torchvision-compatible state_dicts."""

from .batch_norm_act import BatchNormAct2d
from .conv_bn_act import ConvBNAct
from .depthwise_conv2d import DepthwiseConv2d
from .inverted_residual import InvertedResidual, InvertedResidualV3, set_recompute
from .squeeze_excite import SqueezeExcitation
from .sync_batch_norm import SyncBatchNormAct2d, convert_sync_batchnorm

__all__ = [
    "BatchNormAct2d",
    "ConvBNAct",
    "DepthwiseConv2d",
    "InvertedResidual",
    "InvertedResidualV3",
    "SqueezeExcitation",
    "SyncBatchNormAct2d",
    "convert_sync_batchnorm",
    "set_recompute",
]
