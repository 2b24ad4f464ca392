"""The layer shapes the op benchmarks sweep: read off torchvision's models by forward hooks, so they
are the real MobileNet layers (at any input resolution) rather than a synthetic grid."""

from __future__ import annotations

import torch

# Models the op sweeps take their layers from (torchvision has no MobileNetV1).
MODELS = ("mobilenet_v3_large", "mobilenet_v3_small", "mobilenet_v2")


def _torchvision_model(model_name: str) -> torch.nn.Module:
    import torchvision

    if model_name not in MODELS:
        raise ValueError(f"model: {model_name!r} is not one of {', '.join(MODELS)}")
    return getattr(torchvision.models, model_name)().eval()


def batch_norm_layers(model_name: str, resolution: int = 224) -> list[tuple[int, int, int, str]]:
    """(C, H, W, activation) of every BatchNorm (+ the activation after it) in a torchvision model,
    duplicates dropped, in forward order."""
    from ..activations import activation_name

    model = _torchvision_model(model_name)
    found = []
    for seq in model.modules():
        if isinstance(seq, torch.nn.Sequential):
            children = list(seq)
            for i, child in enumerate(children):
                if type(child) is torch.nn.BatchNorm2d:
                    nxt = children[i + 1] if i + 1 < len(children) else None
                    act = activation_name(nxt) or "identity"
                    child.register_forward_hook(
                        lambda m, inp, out, act=act: found.append((out.shape[1], out.shape[2], out.shape[3], act))
                    )
    with torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    return list(dict.fromkeys(found))


def depthwise_layers(model_name: str, resolution: int = 224) -> list[tuple]:
    """(C, H, W, k, stride, padding, dilation, activation) of every depthwise conv in a torchvision
    model, H/W being its input size and activation the one after its BatchNorm; duplicates dropped."""
    from ..activations import activation_name

    model = _torchvision_model(model_name)
    found = []
    for seq in model.modules():
        if not isinstance(seq, torch.nn.Sequential):
            continue
        children = list(seq)
        for i, conv in enumerate(children):
            depthwise = isinstance(conv, torch.nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels > 1
            if depthwise:
                act = (activation_name(children[i + 2]) if i + 2 < len(children) else None) or "identity"
                conv.register_forward_hook(
                    lambda m, inp, out, act=act: found.append(
                        (m.in_channels, inp[0].shape[2], inp[0].shape[3], m.kernel_size[0], m.stride[0], m.padding[0],
                         m.dilation[0], act)
                    )
                )
    with torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    return list(dict.fromkeys(found))


def squeeze_excite_layers(model_name: str, resolution: int = 224) -> list[tuple[int, int, int, int]]:
    """(C, H, W, S) of every SqueezeExcitation block in a torchvision model (S: squeeze channels),
    duplicates dropped, in forward order."""
    from torchvision.ops import SqueezeExcitation

    model = _torchvision_model(model_name)
    found = []
    for m in model.modules():
        if isinstance(m, SqueezeExcitation):
            m.register_forward_hook(
                lambda m, inp, out: found.append((out.shape[1], out.shape[2], out.shape[3], m.fc1.out_channels))
            )
    with torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    return list(dict.fromkeys(found))
