"""inverted_residual_eval over the inverted-residual blocks of MobileNets (eval, BatchNorm folded
into the convs): our backends vs PyTorch eager (the folded block op by op,
reference.inverted_residual_eval_ref: 1x1 F.conv2d + act, depthwise F.conv2d + act, the
squeeze-excite where the block has one (mean, two 1x1 convs, multiply), 1x1 F.conv2d (+ the skip
connection)) and torch.compile of that. Inference only: forward under torch.no_grad()
(the mode setting is ignored; rows say "forward"). Each of our backends runs the block as one
kernel that keeps the expanded tensor on chip (Triton; "cuda": csrc/cpu/inverted_residual.cpp on the
CPU, csrc/cuda/inverted_residual.cu on a GPU).

Bytes (row "bytes", the % of peak and GB/s of every provider) are the whole block's minimum, each
tensor read or written once (e = the element size; x: N Cin H W, y: N Cout OH OW): e (x + y +
the weights and biases (Chid Cin + Chid if there is an expand conv, Chid k² + Chid, Cout Chid +
Cout, and the squeeze-excite's 2 S Chid + S + Chid)), plus a second read of x for a block with a
squeeze-excite (our kernels' pass 1 recomputes the hidden tensors from it). Row "unfused_bytes" is
what the op-by-op sequence must move: the expand conv writes the hidden tensor (N Chid H W) and the
dw conv reads it back, the dw conv writes its output (N Chid OH OW) and the project conv reads it
back (with a squeeze-excite between: read to pool, read and written to scale, 3 more), and the skip
connection reads x a second time: e (x + 2 hidden + (2 or 5) hidden_out + y (+ x) + weights) (no
hidden term for a block without an expand conv).
The table shows both in MB; unfused_MB / MB is the HBM traffic a fused kernel saves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from .. import functional as MF
from ..reference import inverted_residual_eval_ref
from .core import DTYPES, compiled_providers, layer_cases, measure_cases
from .shapes import inverted_residual_layers

if TYPE_CHECKING:
    from .ops import OpSettings

COLUMNS = ["model", "Cin", "Chid", "Cout", "H", "W", "k", "stride", "activation", "residual", "squeeze", "batch",
           "dtype", "layout", "MB", "unfused_MB", "eager_p50_ms", "cuda_p50_ms", "cuda_ops_p50_ms", "triton_p50_ms",
           "triton_ops_p50_ms", "torch_compile_p50_ms",
           "torch_compile_max_autotune_p50_ms", "triton_GBps", "triton_pct_peak", "triton_pct_copy", "cuda_GBps",
           "cuda_pct_peak", "cuda_speedup_vs_eager", "triton_speedup_vs_eager", "cuda_speedup_vs_compile",
           "triton_speedup_vs_compile"]
GROUP_BY = ("mode", "dtype", "layout", "batch")
OPTIONS: dict = {}


def eager(x, we, be, wd, bd, wp, bp, stride, dilation, act, residual, se=None):
    """The folded block op by op in eager PyTorch: F.conv2d + act, depthwise F.conv2d + act, the
    squeeze-excite (``se``: its four parameters, or None), F.conv2d (+ x)."""
    return inverted_residual_eval_ref(x, we, be, wd, bd, wp, bp, stride, dilation, act, residual,
                                      *(se if se is not None else (None,) * 4))


def providers(compile_modes: list[str], backends: list[str]) -> dict[str, Callable]:
    """``fn(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, stride,
    dilation, activation, residual, se)`` per provider: eager, torch.compile per mode, each of our
    ``backends`` (the whole-block op) and, as ``<backend>_ops``, each of them op by op;
    expand_weight/bias None for a block without an expand conv, se the squeeze-excite's
    (fc1_weight, fc1_bias, fc2_weight, fc2_bias) or None."""
    found = {"eager": eager, **compiled_providers(eager, compile_modes)}
    for name in backends:
        found[name] = lambda x, we, be, wd, bd, wp, bp, s, d, act, res, se, _n=name: MF.inverted_residual_eval(
            x, we, be, wd, bd, wp, bp, s, d, activation=act, residual=res, se=se, backend=_n)
    for name in backends:
        found[f"{name}_ops"] = lambda *args, _n=name: ours_op_by_op(*args, backend=_n)
    return found


def ours_op_by_op(x, we, be, wd, bd, wp, bp, stride, dilation, act, residual, se, *, backend):
    """The block op by op on our kernels, as the modules run it where the whole-block kernel does not
    pay (provider ``<backend>_ops``): pointwise_conv2d with bias and act, depthwise_conv2d with bias
    and act, squeeze_excite, pointwise_conv2d with bias and the residual."""
    h = x if we is None else MF.pointwise_conv2d(x, we, be, activation=act, backend=backend)
    pad = (wd.shape[-1] - 1) // 2 * dilation
    h = MF.depthwise_conv2d(h, wd, bd, stride, pad, dilation, activation=act, backend=backend)
    if se is not None:
        h = MF.squeeze_excite(h, *se, backend=backend)
    return MF.pointwise_conv2d(h, wp, bp, residual=x if residual else None, backend=backend)


def case(provs: dict[str, Callable], layer: tuple, batch: int, dtype_name: str, layout: str,
         device: str) -> tuple[dict, dict[str, Callable[[], object]]]:
    """One case: its row (what was timed, the block's and the op-by-op bytes) and a zero-argument
    call per provider (under torch.no_grad()). ``layer`` is one of shapes.inverted_residual_layers:
    (Cin, Chid, Cout, H, W, k, stride, dilation, activation, residual, squeeze); Chid == Cin: no
    expand conv; squeeze 0: no squeeze-excite."""
    Cin, Chid, Cout, H, W, k, stride, dilation, act, residual, squeeze = layer
    dtype = DTYPES[dtype_name]
    x = torch.randn(batch, Cin, H, W, device=device, dtype=dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    expand = Chid != Cin
    rand = lambda *shape, scale=1.0: torch.randn(*shape, device=device, dtype=dtype) * scale  # noqa: E731
    we, be = (rand(Chid, Cin, 1, 1, scale=Cin**-0.5), rand(Chid)) if expand else (None, None)
    params = (we, be, rand(Chid, 1, k, k, scale=1 / k), rand(Chid), rand(Cout, Chid, 1, 1, scale=Chid**-0.5),
              rand(Cout))
    se = None
    if squeeze:
        se = (rand(squeeze, Chid, 1, 1, scale=Chid**-0.5), rand(squeeze), rand(Chid, squeeze, 1, 1,
              scale=squeeze**-0.5), rand(Chid))
    pad = (k - 1) // 2 * dilation
    OH, OW = (H + 2 * pad - dilation * (k - 1) - 1) // stride + 1, (W + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    e = x.element_size()
    x_bytes, y_bytes = x.numel() * e, batch * Cout * OH * OW * e
    weight_bytes = sum(t.numel() * e for t in (*params, *(se or ())) if t is not None)
    hidden, hidden_out = batch * Chid * H * W * e if expand else 0, batch * Chid * OH * OW * e
    bytes_moved = x_bytes * (2 if squeeze else 1) + y_bytes + weight_bytes
    unfused = (x_bytes + 2 * hidden + (5 if squeeze else 2) * hidden_out + y_bytes + (x_bytes if residual else 0)
               + weight_bytes)
    row = {"Cin": Cin, "Chid": Chid, "Cout": Cout, "H": H, "W": W, "k": k, "stride": stride, "dilation": dilation,
           "activation": act, "residual": residual, "squeeze": squeeze, "batch": batch, "dtype": dtype_name,
           "layout": layout,
           "mode": "forward", "bytes": bytes_moved, "unfused_bytes": unfused, "MB": bytes_moved / 1e6,
           "unfused_MB": unfused / 1e6}

    def no_grad(fn):
        def call():
            with torch.no_grad():
                return fn(x, *params, stride, dilation, act, residual, se)

        return call

    return row, {name: no_grad(fn) for name, fn in provs.items()}


def sweep(s: "OpSettings", rows: list[dict], copy_bw: float | None) -> None:
    """Append one row per case to ``rows`` (in place, so an interrupted run keeps its rows)."""
    provs = providers(s.compile, s.backends)
    layers = [(model, layer) for model in s.models for layer in inverted_residual_layers(model, s.resolution)]
    measure_cases(s, rows, copy_bw, "inverted_residual", layer_cases(layers, s.batch, s.dtype, s.layout),
                  lambda layer, batch, dtype_name, layout: case(provs, layer, batch, dtype_name, layout, s.device))
