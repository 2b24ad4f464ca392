"""Modules built on mobilenet_kernels ops, with torchvision-compatible state_dicts."""

from .batch_norm_act import BatchNormAct2d
from .depthwise_conv2d import DepthwiseConv2d
from .squeeze_excite import SqueezeExcitation
from .sync_batch_norm import SyncBatchNormAct2d, convert_sync_batchnorm

__all__ = ["BatchNormAct2d", "DepthwiseConv2d", "SqueezeExcitation", "SyncBatchNormAct2d", "convert_sync_batchnorm"]
