"""The inverted-residual blocks of MobileNetV2 and V3, with torchvision's state_dict keys.

Both run the same forward: the "expanded side" (1x1 expand conv + BN + act, depthwise conv + BN +
act, squeeze-excite) and then the linear 1x1 projection + BN, plus the residual.

- Inference: in eval mode, with no gradient needed, every BatchNorm is folded into the conv before
  it (nn.conv_bn_act). Where a whole-block kernel is known to pay (Triton; "cuda" on CPU tensors
  for k3 and k5 blocks with an expand conv; "cuda" on CUDA tensors once
  USE_CUDA_BLOCK_KERNEL is set) the block runs as that one kernel
  (functional.inverted_residual_eval: the expanded tensor never reaches memory; a block with
  squeeze-excite runs it twice, the first pass emitting only the pooled means). Otherwise the 1x1
  convs run as GEMMs with the bias and the activation (expand) or the residual add (project) in
  their epilogue (functional.pointwise_conv2d), the depthwise conv with the fold in its weights
  and the activation in its epilogue. Folds are cached while no parameter or running statistic
  changes, and traced into the graph under torch.compile.
- Training: the 1x1 convs' GEMM epilogues emit the BatchNorm statistics
  (functional.pointwise_conv2d_bn_act), as the depthwise conv's do. On a GPU (and with Triton on
  CPU tensors) the expand and depthwise layers run as one op
  (functional.pointwise_depthwise_bn_act_train): the depthwise kernels apply the expand BatchNorm
  + activation where they load its input, so that output is neither written nor kept for backward.
- ``recompute=True`` keeps only the block's input for backward and recomputes the
  expanded tensors (see :meth:`_InvertedResidualBase.forward`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from .. import backends
from .. import functional as MF
from ..activations import activation_name, check_activation
from .batch_norm_act import BatchNormAct2d
from .conv_bn_act import ConvBNAct, _is_depthwise, _is_pointwise, conv_bn_act, folded_conv_weights
from .depthwise_conv2d import DepthwiseConv2d
from .squeeze_excite import SqueezeExcitation

# The CUDA C++ whole-block kernel (csrc/cuda/inverted_residual.cu) passed its GPU tests on an H200
# (benchmarks/results/gpu_tests_run3_h200.json) but took 5-8x the op-by-op block's time at batch
# 256 (benchmarks/results/inverted_residual_h200.json), its 1x1 GEMMs on CUDA cores; the
# tensor-core variant for fp16/bf16 that followed is untimed. So eval blocks on CUDA tensors with
# the "cuda" backend run op by op unless this is set. Flip the default once a committed benchmark
# (bench_block: its cuda and cuda_ops columns) shows the kernel faster.
USE_CUDA_BLOCK_KERNEL = False


def _check_recompute(recompute: bool) -> bool:
    if not isinstance(recompute, bool):
        raise TypeError(f"recompute: expected a bool, got {type(recompute).__name__}")
    return recompute


@contextlib.contextmanager
def _scratch_running_stats(module: nn.Module) -> Iterator[None]:
    """Within the block, every BatchNorm's running statistics (and num_batches_tracked) are
    replaced by copies, which are dropped on exit.

    The checkpoint's recomputation runs the BatchNorms in training mode a second time; they use the
    batch statistics either way, so their outputs are the same, but each would update its running
    statistics and count the batch again. With copies in place they run exactly the same code (so
    the same tensors are saved for backward, which checkpoint checks: turning
    ``track_running_stats`` off instead would change what F.batch_norm saves) and the real
    statistics see one update per step."""
    swapped = []
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            real = {name: t for name, t in m._buffers.items() if t is not None}
            m._buffers.update({name: t.clone() for name, t in real.items()})
            swapped.append((m, real))
    try:
        yield
    finally:
        for m, real in swapped:
            m._buffers.update(real)


class _InvertedResidualBase(nn.Module):
    """What both flavours share: the forward (with recompute) and the torchvision conversion helpers.
    Subclasses set ``use_res_connect``, ``recompute`` and implement :meth:`_parts`."""

    use_res_connect: bool
    recompute: bool

    def _parts(self) -> tuple[list[nn.Module], nn.Conv2d, nn.BatchNorm2d]:
        """(the expanded side's modules in order, the projection conv, its BatchNorm)."""
        raise NotImplementedError

    def _body(self, input: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        expanded_side, conv, bn = self._parts()
        h = self._expand_depthwise_train(expanded_side, input)
        if h is None:
            h = input
        else:
            expanded_side = expanded_side[2:]
        for layer in expanded_side:
            h = layer(h)
        return conv_bn_act(conv, bn, h, residual)

    @staticmethod
    def _expand_depthwise_train(expanded_side: list[nn.Module], input: Tensor) -> Optional[Tensor]:
        """The expand and depthwise ConvBNActs in training mode as one op
        (functional.pointwise_depthwise_bn_act_train: the expand BatchNorm's output is neither kept
        for backward nor, with Triton, written), where that applies, else None: both BatchNorms plain
        BatchNormAct2d (a SyncBatchNormAct2d synchronizes its statistics itself) in training mode
        with one eps and activation, the "triton" backend or "cuda" on a CUDA tensor, a 1x1 expand
        conv and a depthwise conv, both without bias, with numeric padding and zeros padding mode.

        Not for "cuda" on CPU tensors: there the op is the per-layer kernels' sequence with the
        expand BatchNorm's output recomputed in backward, one apply pass more per step (a V2
        training step on 2 CPU threads, batch 8, 160², took 1.12x the per-layer time): memory for
        time, as ``recompute`` trades more."""
        if len(expanded_side) < 2 or input.dim() != 4:
            return None
        expand, dw = expanded_side[0], expanded_side[1]
        if not (isinstance(expand, ConvBNAct) and isinstance(dw, ConvBNAct)):
            return None
        (expand_conv, expand_bn), (dw_conv, dw_bn) = expand, dw
        if not (type(expand_bn) is BatchNormAct2d and type(dw_bn) is BatchNormAct2d and expand_bn.training
                and dw_bn.training):
            return None
        if (expand_bn.activation, expand_bn.eps, expand_bn.backend) != (dw_bn.activation, dw_bn.eps, dw_bn.backend):
            return None
        name = backends.resolve(dw_bn.backend, input)
        if not (name == "triton" or (name == "cuda" and input.is_cuda)):
            return None
        if not (_is_pointwise(expand_conv) and _is_depthwise(dw_conv) and expand_conv.bias is None
                and dw_conv.bias is None and dw_conv.padding_mode == "zeros" and isinstance(dw_conv.padding, tuple)):
            return None
        expand_mean, expand_var, _, expand_momentum, expand_counts = expand_bn._batch_norm_args()
        dw_mean, dw_var, _, dw_momentum, dw_counts = dw_bn._batch_norm_args()
        out = MF.pointwise_depthwise_bn_act_train(
            input, expand_conv.weight, dw_conv.weight, dw_conv.stride, dw_conv.padding, dw_conv.dilation,
            expand_mean, expand_var, expand_bn.weight, expand_bn.bias, dw_mean, dw_var, dw_bn.weight, dw_bn.bias,
            expand_momentum, dw_momentum, dw_bn.eps, dw_bn.activation, backend=dw_bn.backend)
        expand_bn._count_batch(expand_counts)
        dw_bn._count_batch(dw_counts)
        return out

    def _whole_block_eval(self, input: Tensor) -> Optional[Tensor]:
        """The block as one kernel that keeps the expanded tensor on chip
        (functional.inverted_residual_eval; with a squeeze-excite after the depthwise conv, two
        passes of it), where that applies, else None: eval mode with no gradient needed (every
        BatchNorm folded: folded_conv_weights), a depthwise conv with a square odd kernel and "same"
        padding, 1x1 expand/project convs, one activation on the expanded side, and a backend with a
        whole-block kernel for the input's device that is known to pay (Triton; "cuda" on CPU
        tensors for k3 and k5 blocks with an expand conv; "cuda" on CUDA tensors with
        USE_CUDA_BLOCK_KERNEL)."""
        expanded_side, project_conv, project_bn = self._parts()
        se = None
        if expanded_side and isinstance(expanded_side[-1], SqueezeExcitation):
            *expanded_side, se = expanded_side
        if input.dim() != 4 or not 1 <= len(expanded_side) <= 2 or (torch.is_grad_enabled() and input.requires_grad):
            return None
        if se is not None and torch.is_grad_enabled() and any(p.requires_grad for p in se.parameters()):
            return None
        if not all(isinstance(m, ConvBNAct) and isinstance(m[1], BatchNormAct2d) for m in expanded_side):
            return None
        *expand, dw = expanded_side
        dw_conv, dw_bn = dw[0], dw[1]
        if not isinstance(project_bn, BatchNormAct2d) or project_bn.activation != "identity":
            return None
        name = backends.resolve(dw_bn.backend, input)
        k, dilation, stride = dw_conv.kernel_size[0], dw_conv.dilation[0], dw_conv.stride[0]
        # The C++ CPU block kernel runs the depthwise op's direct channels-last code
        # (csrc/cpu/depthwise_direct.h) over its expanded rows: with an expand conv it measured
        # faster than op by op for k3 (V2's blocks) and about 10% faster on average for k5 (V3-Large's
        # k5 shapes without SE, 1 and 2 threads, batch 1 and 8; the widest at par). Without an expand
        # conv it was at par on average (slower at batch 1 for 16 channels), so those run op by op;
        # k7 has not been timed. Blocks with squeeze-excite (two passes, the second reading back the
        # first's depthwise output) measured 1.07-1.16x the op-by-op block on average, the widest
        # (672 hidden channels) at 0.82-0.99x (benchmarks/results/inverted_residual_cpu*.json).
        cpu_kernel_pays = name == "cuda" and input.device.type == "cpu" and bool(expand) and k in (3, 5)
        cuda_kernel_pays = name == "cuda" and input.device.type == "cuda" and USE_CUDA_BLOCK_KERNEL
        if not (name == "triton" or cpu_kernel_pays or cuda_kernel_pays) or project_conv.out_channels > 512:
            return None
        if not (_is_depthwise(dw_conv) and dw_conv.kernel_size == (k, k) and k % 2 == 1
                and dw_conv.dilation == (dilation, dilation) and dw_conv.stride == (stride, stride)
                and dw_conv.padding == ((k - 1) // 2 * dilation,) * 2 and dw_conv.padding_mode == "zeros"):
            return None
        if not (_is_pointwise(project_conv) and all(_is_pointwise(m[0]) for m in expand)):
            return None
        if any(m[1].activation != dw_bn.activation for m in expand):
            return None
        dtype = MF.autocast_dtype(input)
        pairs = [(m[0], m[1]) for m in (*expand, dw)] + [(project_conv, project_bn)]
        folds = [folded_conv_weights(conv, bn, dtype) for conv, bn in pairs]
        if any(f is None for f in folds):
            return None
        (we, be) = folds[0] if expand else (None, None)
        (wd, bd), (wp, bp) = folds[-2], folds[-1]
        cast = lambda t: None if t is None else t.to(dtype or input.dtype)  # noqa: E731  (no copy under autocast)
        se_kwargs = {}
        if se is not None:
            se_kwargs = dict(se=(se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias), se_activation=se.activation,
                             se_scale_activation=se.scale_activation)
        return MF.inverted_residual_eval(input, cast(we), cast(be), cast(wd), cast(bd), cast(wp), cast(bp), stride,
                                         dilation, activation=dw_bn.activation, residual=self.use_res_connect,
                                         backend=dw_bn.backend, **se_kwargs)

    def forward(self, input: Tensor) -> Tensor:
        """The block. With ``recompute`` (training mode, gradients on), the whole body runs under
        ``torch.utils.checkpoint`` (non-reentrant): backward keeps only the block's input and
        recomputes the expanded tensors when it reaches the block. The projection is inside the
        checkpoint too, since its conv saves its (expanded) input for the weight gradient. The
        recomputation runs with scratch copies of the running statistics (_scratch_running_stats),
        so they are updated once per step. Under torch.compile the checkpoint is traced as a region
        to recompute, where the statistics updates are graph mutations that run once, in the
        forward graph (and context_fn is not supported), so no scratch copies are needed there."""
        if self.recompute and self.training and torch.is_grad_enabled():
            if torch.compiler.is_compiling():
                out = checkpoint(self._body, input, use_reentrant=False)
            else:
                out = checkpoint(self._body, input, use_reentrant=False,
                                 context_fn=lambda: (contextlib.nullcontext(), _scratch_running_stats(self)))
            return out + input if self.use_res_connect else out
        if not self.training:
            out = self._whole_block_eval(input)
            if out is not None:
                return out
        return self._body(input, input if self.use_res_connect else None)

    def extra_repr(self) -> str:
        return f"recompute={self.recompute}"

    @staticmethod
    def _torchvision_conv_norm_act(module: nn.Module) -> Optional[tuple[nn.Conv2d, nn.BatchNorm2d, str]]:
        """(conv, bn, activation name) of a torchvision ``Conv2dNormActivation`` (conv, BatchNorm2d,
        known activation or none) that we can run, else None."""
        if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
            return None
        children = list(module.children())
        if len(children) not in (2, 3):
            return None
        conv, bn = children[:2]
        activation = activation_name(children[2]) if len(children) == 3 else "identity"
        if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d or activation is None:
            return None
        if _is_depthwise(conv) and not DepthwiseConv2d.supports(conv):
            return None
        return conv, bn, activation

    @classmethod
    def _conv_bn_act_from_torchvision(cls, module: nn.Module, backend: Optional[str]) -> ConvBNAct:
        conv, bn, activation = cls._torchvision_conv_norm_act(module)
        return ConvBNAct.from_conv_bn(conv, BatchNormAct2d.from_batch_norm(bn, activation, backend), module.training)

    @staticmethod
    def _sequential_like(old: nn.Sequential, modules: list[nn.Module]) -> nn.Sequential:
        new = nn.Sequential(*modules)
        new.training = old.training
        return new


class InvertedResidual(_InvertedResidualBase):
    """MobileNetV2's bottleneck residual block (Sandler et al. 2018, Table 1): 1x1 expansion conv +
    ReLU6 (absent when ``expand_ratio == 1``), 3x3 depthwise conv + ReLU6, 1x1 linear projection; a
    residual connection when the stride is 1 and the channel count is unchanged.

    torchvision's ``torchvision.models.mobilenetv2.InvertedResidual`` layer for layer:
    ``self.conv`` keeps its indices (``conv.<i>`` are ConvBNAct blocks, ``.0`` conv and ``.1``
    BatchNorm; the last two entries are the projection Conv2d and its BatchNorm, a BatchNormAct2d
    with ``activation="identity"``: the linear bottleneck), so state_dicts load both ways. See the
    module docstring for inference folding and ``recompute``.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, *, backend: Optional[str] = None,
                 recompute: bool = False) -> None:
        super().__init__()
        self.stride = stride
        if stride not in (1, 2):
            raise ValueError(f"stride: expected 1 or 2, got {stride}")
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup

        layers: list[nn.Module] = []
        if expand_ratio != 1:
            # pw
            layers.append(ConvBNAct(inp, hidden_dim, kernel_size=1, activation="relu6", backend=backend))
        layers.extend(
            [
                # dw
                ConvBNAct(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim, activation="relu6", backend=backend),
                # pw-linear
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                BatchNormAct2d(oup, activation="identity", backend=backend),
            ]
        )
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1
        self.recompute = _check_recompute(recompute)

    def _parts(self) -> tuple[list[nn.Module], nn.Conv2d, nn.BatchNorm2d]:
        *expanded_side, conv, bn = self.conv
        return expanded_side, conv, bn

    @classmethod
    def supports(cls, module: nn.Module) -> bool:
        """Whether ``module`` is a ``torchvision.models.mobilenetv2.InvertedResidual`` (exactly that
        class) built from plain nn.Conv2d / nn.BatchNorm2d and activations we know."""
        try:
            from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionBlock
        except ImportError:  # torchvision is optional at runtime
            return False
        if type(module) is not TorchvisionBlock or len(module.conv) < 3:
            return False
        *expanded_side, conv, bn = module.conv
        return (
            all(cls._torchvision_conv_norm_act(m) is not None for m in expanded_side)
            and type(conv) is nn.Conv2d
            and type(bn) is nn.BatchNorm2d
        )

    @classmethod
    def from_torchvision(cls, module: nn.Module, backend: Optional[str] = None) -> "InvertedResidual":
        """Our block holding ``module``'s very Parameter and buffer objects (no copy): the same
        state_dict keys, and each submodule keeps its train/eval mode."""
        if not cls.supports(module):
            raise ValueError(f"module: expected a torchvision MobileNetV2 InvertedResidual we can run, got "
                             f"{type(module).__name__}")
        *expanded_side, conv, bn = module.conv
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.stride = module.stride
        new.use_res_connect = module.use_res_connect
        layers = [cls._conv_bn_act_from_torchvision(m, backend) for m in expanded_side]
        layers += [conv, BatchNormAct2d.from_batch_norm(bn, "identity", backend)]
        new.conv = cls._sequential_like(module.conv, layers)
        new.out_channels = module.out_channels
        new._is_cn = module._is_cn
        new.recompute = False
        new.training = module.training
        return new


class InvertedResidualV3(_InvertedResidualBase):
    """MobileNetV3's "bneck" block (Howard et al. 2019, section 5): optional 1x1 expansion conv
    (absent when ``expanded_channels == in_channels``), depthwise ``kernel_size`` conv (stride 1 and
    ``dilation`` when dilated), each with ``activation`` ("relu" or "hardswish"), optional
    squeeze-and-excite (``squeeze_channels`` wide, ReLU and hard-sigmoid), 1x1 linear projection; a
    residual connection when ``stride == 1`` and ``in_channels == out_channels``. BatchNorm eps and
    momentum default to the V3 values (1e-3, 0.01).

    torchvision's ``torchvision.models.mobilenetv3.InvertedResidual`` layer for layer: ``self.block``
    keeps its indices (ConvBNAct entries, ``.0`` conv and ``.1`` BatchNorm, and the
    SqueezeExcitation's ``fc1``/``fc2``), so state_dicts load both ways. See the module docstring for
    inference folding and ``recompute``.
    """

    def __init__(
        self,
        in_channels: int,
        expanded_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        activation: str = "relu",
        squeeze_channels: Optional[int] = None,
        *,
        eps: float = 1e-3,
        momentum: float = 0.01,
        backend: Optional[str] = None,
        recompute: bool = False,
    ) -> None:
        super().__init__()
        if not (1 <= stride <= 2):
            raise ValueError(f"stride: expected 1 or 2, got {stride}")
        check_activation(activation)
        self.use_res_connect = stride == 1 and in_channels == out_channels

        def conv(cin: int, cout: int, **kwargs) -> ConvBNAct:
            return ConvBNAct(cin, cout, eps=eps, momentum=momentum, backend=backend, **kwargs)

        layers: list[nn.Module] = []
        if expanded_channels != in_channels:
            layers.append(conv(in_channels, expanded_channels, kernel_size=1, activation=activation))
        layers.append(conv(expanded_channels, expanded_channels, kernel_size=kernel_size,
                           stride=1 if dilation > 1 else stride, dilation=dilation, groups=expanded_channels,
                           activation=activation))
        if squeeze_channels is not None:
            layers.append(SqueezeExcitation(expanded_channels, squeeze_channels, "relu", "hardsigmoid",
                                            backend=backend))
        layers.append(conv(expanded_channels, out_channels, kernel_size=1, activation="identity"))

        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels
        self._is_cn = stride > 1
        self.recompute = _check_recompute(recompute)

    def _parts(self) -> tuple[list[nn.Module], nn.Conv2d, nn.BatchNorm2d]:
        *expanded_side, project = self.block
        return expanded_side, project[0], project[1]

    @classmethod
    def supports(cls, module: nn.Module) -> bool:
        """Whether ``module`` is a ``torchvision.models.mobilenetv3.InvertedResidual`` (exactly that
        class) built from plain nn.Conv2d / nn.BatchNorm2d, activations we know and
        ``torchvision.ops.SqueezeExcitation``, with a linear projection."""
        try:
            from torchvision.models.mobilenetv3 import InvertedResidual as TorchvisionBlock
        except ImportError:
            return False
        if type(module) is not TorchvisionBlock or len(module.block) < 2:
            return False
        *expanded_side, project = module.block
        project_parts = cls._torchvision_conv_norm_act(project)
        return (
            all(cls._torchvision_conv_norm_act(m) is not None or SqueezeExcitation.supports(m) for m in expanded_side)
            and project_parts is not None
            and project_parts[2] == "identity"
        )

    @classmethod
    def from_torchvision(cls, module: nn.Module, backend: Optional[str] = None) -> "InvertedResidualV3":
        """Our block holding ``module``'s very Parameter and buffer objects (no copy): the same
        state_dict keys, and each submodule keeps its train/eval mode."""
        if not cls.supports(module):
            raise ValueError(f"module: expected a torchvision MobileNetV3 InvertedResidual we can run, got "
                             f"{type(module).__name__}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.use_res_connect = module.use_res_connect
        layers = [SqueezeExcitation.from_torchvision(m, backend) if SqueezeExcitation.supports(m)
                  else cls._conv_bn_act_from_torchvision(m, backend) for m in module.block]
        new.block = cls._sequential_like(module.block, layers)
        new.out_channels = module.out_channels
        new._is_cn = module._is_cn
        new.recompute = False
        new.training = module.training
        return new


def set_recompute(model: nn.Module, recompute: bool = True) -> nn.Module:
    """Set ``recompute`` on every inverted-residual block of ``model`` (ours, or converted by
    ``convert()``), in place; returns ``model``. Raises TypeError for a non-bool ``recompute``."""
    _check_recompute(recompute)
    for module in model.modules():
        if isinstance(module, _InvertedResidualBase):
            module.recompute = recompute
    return model


__all__ = ["InvertedResidual", "InvertedResidualV3", "set_recompute"]
