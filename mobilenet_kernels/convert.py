"""convert(): swap our fused modules (inverted-residual blocks, BatchNorm + activation, depthwise conv,
squeeze-excite) into an existing model, in place."""

from __future__ import annotations

from typing import Optional

from torch import nn

from .activations import activation_name
from .backends import check_backend
from .nn import BatchNormAct2d, ConvBNAct, DepthwiseConv2d, InvertedResidual, InvertedResidualV3, SqueezeExcitation

__all__ = ["convert"]


def _plain_sequential(module: nn.Module) -> bool:
    """An nn.Sequential (or subclass, e.g. torchvision's Conv2dNormActivation) that runs its
    children one after the other: only there is "BatchNorm at i, activation at i+1" a real pair."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


_BLOCKS = (InvertedResidual, InvertedResidualV3)


def _our_block(module: nn.Module, backend: Optional[str]) -> Optional[nn.Module]:
    """Our block for a torchvision MobileNetV2/V3 InvertedResidual, sharing its parameters; else None."""
    for cls in _BLOCKS:
        if cls.supports(module):
            return cls.from_torchvision(module, backend)
    return None


def convert(model: nn.Module, backend: Optional[str] = None) -> nn.Module:
    """Replace the BatchNorms of ``model`` by :class:`~mobilenet_kernels.nn.BatchNormAct2d`, in place.

    Works on any model (torchvision's MobileNets, ResNets, your own), and returns the same object:

    * Every ``torchvision.models.mobilenetv2.InvertedResidual`` / ``mobilenetv3.InvertedResidual``
      (exactly those classes, built from nn.Conv2d, nn.BatchNorm2d, activations we know and
      torchvision's SqueezeExcitation) becomes our :class:`~mobilenet_kernels.nn.InvertedResidual` /
      :class:`~mobilenet_kernels.nn.InvertedResidualV3`: its ``Conv2dNormActivation`` entries become
      ``ConvBNAct`` (conv, BatchNormAct2d holding the activation; the activation module is dropped:
      it has no state, so the keys stay), with BatchNorm folding in eval mode and the ``recompute``
      option (:func:`mobilenet_kernels.models.set_recompute`) like our models' blocks.
    * In every ``nn.Sequential`` (recursively; including subclasses that keep Sequential's
      ``forward``, such as torchvision's ``Conv2dNormActivation``), an ``nn.BatchNorm2d`` at index
      ``i`` followed at ``i + 1`` by an activation module we know (nn.ReLU, ReLU6, Hardswish,
      Hardsigmoid, Sigmoid, SiLU, Identity) becomes ``BatchNormAct2d(activation=<that one>)`` and the
      activation becomes ``nn.Identity()``: indices, and therefore state_dict keys, are unchanged.
    * Every other ``nn.BatchNorm2d`` (not followed by a known activation, or a named child of any
      module, or in a ModuleList/ModuleDict) becomes ``BatchNormAct2d(activation="identity")``.
    * Every depthwise ``nn.Conv2d`` (groups == in_channels == out_channels, numeric zero padding)
      becomes a :class:`~mobilenet_kernels.nn.DepthwiseConv2d` on our depthwise kernels. (Our own
      models go further and fuse each depthwise conv with its BatchNorm and activation.)
    * Every ``torchvision.ops.SqueezeExcitation`` (exactly that class, with 1x1 biased fc layers and
      activations we know) becomes a :class:`~mobilenet_kernels.nn.SqueezeExcitation` sharing its
      ``fc1``/``fc2``.
    * Existing BatchNormAct2d / DepthwiseConv2d / SqueezeExcitation modules (our blocks' included) get
      their ``backend`` set to ``backend``.
    * Everything else is left alone, including subclasses of nn.BatchNorm2d (SyncBatchNorm-style or
      frozen variants: only ``type(m) is nn.BatchNorm2d`` is converted), BatchNorm1d/3d, LayerNorm,
      and activations that do not directly follow a BatchNorm2d in a Sequential.

    The new modules share the very Parameter and buffer objects of the BatchNorms they replace
    (nothing is copied), so the state_dict keys and values are unchanged and an optimizer built
    before convert() keeps working; the train/eval mode of each module is kept. Forward hooks
    registered on a replaced BatchNorm or activation module are not carried over.

    A bare ``nn.BatchNorm2d`` or torchvision InvertedResidual passed as ``model`` cannot be replaced
    in place; for those the result is a new BatchNormAct2d / block sharing its parameters (the only
    cases where the returned object differs; the module passed in is left unchanged).

    ``backend`` ("torch" | "triton" | "cuda" | None: the fastest usable) is checked first: an unknown
    name raises ValueError naming ``backend`` before anything changes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    check_backend(backend)
    if type(model) is nn.BatchNorm2d:
        return BatchNormAct2d.from_batch_norm(model, "identity", backend)
    block = _our_block(model, backend)
    if block is not None:
        return block

    for module in list(model.modules()):  # blocks first: their BatchNorms are converted with them
        for key, child in list(module._modules.items()):
            block = None if child is None else _our_block(child, backend)
            if block is not None:
                module._modules[key] = block
    for module in list(model.modules()):
        if isinstance(module, (BatchNormAct2d, DepthwiseConv2d, SqueezeExcitation)):
            module.backend = backend
            continue
        if _plain_sequential(module):
            children = list(module._modules.items())
            for (key, child), (next_key, next_child) in zip(children, children[1:]):
                if type(child) is not nn.BatchNorm2d or next_child is None:
                    continue
                name = activation_name(next_child)
                if name is None:
                    continue
                module._modules[key] = BatchNormAct2d.from_batch_norm(child, name, backend)
                identity = nn.Identity()
                identity.train(next_child.training)
                module._modules[next_key] = identity
        for key, child in list(module._modules.items()):
            if type(child) is nn.BatchNorm2d:
                module._modules[key] = BatchNormAct2d.from_batch_norm(child, "identity", backend)
            elif DepthwiseConv2d.supports(child) and not isinstance(module, ConvBNAct):
                # (a ConvBNAct of our models already runs its depthwise conv fused with its BatchNorm)
                module._modules[key] = DepthwiseConv2d.from_conv(child, backend)
            elif SqueezeExcitation.supports(child):
                module._modules[key] = SqueezeExcitation.from_torchvision(child, backend)
    return model
