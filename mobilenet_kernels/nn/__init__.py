"""Modules built on mobilenet_kernels ops, with torchvision-compatible state_dicts."""

from .batch_norm_act import BatchNormAct2d

__all__ = ["BatchNormAct2d"]
