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


def _inverted_residual_types() -> tuple[type, ...]:
    from torchvision.models import mobilenetv2, mobilenetv3

    return mobilenetv2.InvertedResidual, mobilenetv3.InvertedResidual


def _is_pointwise(m: torch.nn.Module) -> bool:
    """A dense 1x1 conv of stride 1 (an expand or project conv, or the last conv of a model)."""
    return (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1
            and m.padding == (0, 0))


def pointwise_layers(model_name: str, resolution: int = 224) -> list[tuple[int, int, int, int, str, bool]]:
    """(Cin, Cout, H, W, activation, residual) of every 1x1 conv (stride 1, groups 1) in a torchvision
    model that is followed by a BatchNorm: the expand and project convs of the inverted-residual
    blocks and the models' last 1x1 conv (the squeeze-excite convs have no BatchNorm: not taken).
    H/W are its input size, activation the one after its BatchNorm ("identity" for a projection),
    residual True for the project conv of a block with a skip connection (use_res_connect), whose
    output the residual add follows. Duplicates dropped, forward order."""
    from ..activations import activation_name

    model = _torchvision_model(model_name)
    # The project conv of a block with a skip connection: its last conv.
    residual_convs = {id([c for c in block.modules() if isinstance(c, torch.nn.Conv2d)][-1])
                      for block in model.modules()
                      if isinstance(block, _inverted_residual_types()) and block.use_res_connect}
    found = []
    for seq in model.modules():
        if not isinstance(seq, torch.nn.Sequential):
            continue
        children = list(seq)
        for i, conv in enumerate(children):
            if _is_pointwise(conv) and i + 1 < len(children) and type(children[i + 1]) is torch.nn.BatchNorm2d:
                act = (activation_name(children[i + 2]) if i + 2 < len(children) else None) or "identity"
                conv.register_forward_hook(
                    lambda m, inp, out, act=act, res=id(conv) in residual_convs: found.append(
                        (m.in_channels, m.out_channels, inp[0].shape[2], inp[0].shape[3], act, res)
                    )
                )
    with torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    return list(dict.fromkeys(found))


def inverted_residual_layers(model_name: str, resolution: int = 224) -> list[tuple]:
    """(Cin, Chid, Cout, H, W, k, stride, dilation, activation, residual, squeeze) of every
    inverted-residual block in a torchvision model (torchvision.models.mobilenetv2/v3
    InvertedResidual): H/W its input size, Chid the expanded channels (Chid == Cin: the block has no
    expand conv and starts with the depthwise one), k/stride/dilation the depthwise conv's,
    activation the one after the depthwise conv's BatchNorm (the expand conv has the same one),
    residual its use_res_connect, squeeze the squeeze-excite's channels (0: no squeeze-excite).
    Duplicates dropped, forward order."""
    from torchvision.ops import SqueezeExcitation

    from ..activations import activation_name

    model = _torchvision_model(model_name)
    found = []
    for block in model.modules():
        if not isinstance(block, _inverted_residual_types()):
            continue
        se = next((m for m in block.modules() if isinstance(m, SqueezeExcitation)), None)
        convs = [m for m in block.modules()
                 if isinstance(m, torch.nn.Conv2d) and not (se is not None and m in (se.fc1, se.fc2))]
        dw = next(c for c in convs if c.groups == c.in_channels == c.out_channels > 1)
        seq = next(s for s in block.modules() if isinstance(s, torch.nn.Sequential) and len(s) and s[0] is dw)
        act = (activation_name(seq[2]) if len(seq) > 2 else None) or "identity"
        if (dw.in_channels == convs[0].in_channels) == (convs[0] is not dw):
            raise AssertionError(f"{model_name}: a block whose expand conv keeps the channel count: {block}")
        block.register_forward_hook(
            lambda m, inp, out, dw=dw, project=convs[-1], act=act, se=se: found.append(
                (inp[0].shape[1], dw.in_channels, project.out_channels, inp[0].shape[2], inp[0].shape[3],
                 dw.kernel_size[0], dw.stride[0], dw.dilation[0], act, bool(m.use_res_connect),
                 se.fc1.out_channels if se is not None else 0)
            )
        )
    with torch.no_grad():
        model(torch.zeros(1, 3, resolution, resolution))
    return list(dict.fromkeys(found))
