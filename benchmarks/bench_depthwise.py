"""Benchmark depthwise_conv2d over the depthwise layers of MobileNetV2 and V3-Large: our backends vs
PyTorch eager (cuDNN / native) and torch.compile (default, and max-autotune unless --no-autotune),
plus the fused dw conv + BatchNorm + activation in training against the unfused eager sequence.

    python benchmarks/bench_depthwise.py                      # GPU: batch 256 at 224²; CPU: a small set
    python benchmarks/bench_depthwise.py --batch 1 32 256 --dtype bfloat16 float32 --layout nhwc nchw

Ops (--op): ``conv`` (depthwise_conv2d alone; modes forward and full = forward + backward) and
``conv_bn_act_train`` (dw conv + BN in training + activation; mode full).
Bytes are the fewest any implementation must move (each tensor read or written once): conv forward
x + y; conv forward + backward x + y + (dy + x + dx); training conv+BN+act forward + backward
x + y + (dy + x + dx). GB/s and % of the card's HBM peak and of the measured copy bandwidth follow.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_speedups, depthwise_layers, execute, geomean, measure, peak_bandwidth  # noqa: E402

import mobilenet_kernels.functional as MF  # noqa: E402
from mobilenet_kernels import backends  # noqa: E402
from mobilenet_kernels.activations import apply_activation  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def conv_providers(device: str, with_autotune: bool, with_compile: bool = True) -> dict:
    def eager(x, w, geom, act):
        return F.conv2d(x, w, None, *geom, groups=x.shape[1])

    found = {"eager": eager}
    if with_compile:
        found["torch_compile"] = torch.compile(eager, dynamic=False)
    if with_compile and with_autotune:
        found["torch_compile_max_autotune"] = torch.compile(eager, mode="max-autotune-no-cudagraphs", dynamic=False)
    for name in ("cuda", "triton"):
        if name in backends.available(device):
            found[name] = lambda x, w, geom, act, _n=name: MF.depthwise_conv2d(x, w, None, *geom, backend=_n)
    return found


def conv_bn_act_providers(device: str, with_autotune: bool) -> dict:
    def eager(x, w, geom, act, bn):
        z = F.conv2d(x, w, None, *geom, groups=x.shape[1])
        return apply_activation(F.batch_norm(z, bn[0], bn[1], bn[2], bn[3], True, 0.1, 1e-5), act)

    found = {"eager": eager, "torch_compile": torch.compile(eager, dynamic=False)}
    if with_autotune:
        found["torch_compile_max_autotune"] = torch.compile(eager, mode="max-autotune-no-cudagraphs", dynamic=False)
    for name in ("cuda", "triton"):
        if name in backends.available(device):
            found[name] = lambda x, w, geom, act, bn, _n=name: MF.depthwise_conv2d_bn_act(
                x, w, None, *geom, bn[0], bn[1], bn[2], bn[3], True, 0.1, 1e-5, act, backend=_n
            )
    return found


def run(args, rows: list[dict], copy_bw: float | None) -> None:
    """Append one row per case to ``rows`` (in place, so an interrupted run keeps its rows)."""
    device = args.device
    layers = []
    for model in args.models:
        layers += [(model, *layer) for layer in depthwise_layers(model, args.resolution)]
    peak = peak_bandwidth(device)
    autotune = device == "cuda" and not args.no_autotune
    provs = {"conv": conv_providers(device, autotune, not args.no_compile_conv),
             "conv_bn_act_train": conv_bn_act_providers(device, autotune)}
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda it, **k: it  # noqa: E731
    cases = [
        (layer, batch, dt, lay, op, mode)
        for layer in layers for batch in args.batch for dt in args.dtype for lay in args.layout for op in args.op
        for mode in (args.mode if op == "conv" else ["full"])
    ]
    seen = set()
    for (model, C, H, W, k, s, p, d, act), batch, dtype_name, layout, op, mode in tqdm(cases, desc="depthwise",
                                                                                    disable=args.quiet):
        key = (C, H, W, k, s, p, d, act, batch, dtype_name, layout, op, mode)
        if key in seen:
            continue
        seen.add(key)
        dtype = DTYPES[dtype_name]
        x = torch.randn(batch, C, H, W, device=device, dtype=dtype)
        if layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(C, 1, k, k, device=device, dtype=dtype) / k
        geom = ((s, s), (p, p), (d, d))
        OH, OW = (H + 2 * p - d * (k - 1) - 1) // s + 1, (W + 2 * p - d * (k - 1) - 1) // s + 1
        in_bytes, out_bytes = x.numel() * x.element_size(), batch * C * OH * OW * x.element_size()
        bytes_moved = in_bytes + out_bytes if mode == "forward" else 2 * in_bytes + 2 * out_bytes + in_bytes
        bn = (torch.zeros(C, device=device), torch.ones(C, device=device), torch.randn(C, device=device),
              torch.randn(C, device=device))
        grad = torch.randn(batch, C, OH, OW, device=device, dtype=dtype)
        if layout == "nhwc":
            grad = grad.contiguous(memory_format=torch.channels_last)
        row = {"model": model, "C": C, "H": H, "W": W, "k": k, "stride": s, "padding": p, "dilation": d,
               "activation": act, "batch": batch, "dtype": dtype_name, "layout": layout, "op": op, "mode": mode,
               "bytes": bytes_moved}
        for name, fn in provs[op].items():
            extra = (bn,) if op == "conv_bn_act_train" else ()
            if mode == "forward":
                call = lambda fn=fn, extra=extra: fn(x, w, geom, act, *extra)  # noqa: E731
            else:
                xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
                call = lambda fn=fn, extra=extra, xg=xg, wg=wg: torch.autograd.grad(  # noqa: E731
                    fn(xg, wg, geom, act, *extra), (xg, wg), grad)
            measure(row, name, call, device, bytes_moved, peak, copy_bw)
        add_speedups(row, provs[op])
        rows.append(row)


def summarize(rows: list[dict]) -> dict:
    """Geometric-mean speed-ups per (op, mode, dtype, layout, provider)."""
    summary = {}
    groups = sorted({(r["op"], r["mode"], r["dtype"], r["layout"]) for r in rows})
    for op, mode, dtype, layout in groups:
        sel = [r for r in rows if (r["op"], r["mode"], r["dtype"], r["layout"]) == (op, mode, dtype, layout)]
        for name in ("cuda", "triton", "torch_compile", "torch_compile_max_autotune"):
            for ref in ("eager", "compile"):
                g = geomean([r.get(f"{name}_speedup_vs_{ref}") for r in sel])
                if g:
                    summary[f"{op}/{mode}/{dtype}/{layout}/{name}_vs_{ref}"] = g
    return summary


def main(argv=None) -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if gpu else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", nargs="+", default=["mobilenet_v3_large", "mobilenet_v2"])
    p.add_argument("--batch", nargs="+", type=int, default=[256] if gpu else [8])
    p.add_argument("--resolution", type=int, default=224 if gpu else 64)
    p.add_argument("--dtype", nargs="+", default=["bfloat16"] if gpu else ["float32"], choices=list(DTYPES))
    p.add_argument("--layout", nargs="+", default=["nhwc", "nchw"] if gpu else ["nhwc"], choices=["nhwc", "nchw"])
    p.add_argument("--mode", nargs="+", default=["forward", "full"], choices=["forward", "full"])
    p.add_argument("--op", nargs="+", default=["conv", "conv_bn_act_train"], choices=["conv", "conv_bn_act_train"])
    p.add_argument("--no-autotune", action="store_true", help="skip torch.compile max-autotune (slow to compile)")
    p.add_argument("--no-compile-conv", action="store_true",
                   help="no torch.compile rows for the lone conv (Inductor hands a conv to ATen: compile ~ eager)")
    p.add_argument("--out", default="mk_results")
    p.add_argument("--name", default="depthwise")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if min(args.batch) <= 0:
        p.error("--batch: must be positive")
    if args.device == "cuda" and not gpu:
        p.error("--device cuda: no CUDA device")
    columns = ["model", "C", "H", "W", "k", "stride", "batch", "dtype", "layout", "op", "mode", "eager_p50_ms",
               "cuda_p50_ms", "triton_p50_ms", "torch_compile_p50_ms", "torch_compile_max_autotune_p50_ms", "cuda_GBps",
               "cuda_pct_peak", "cuda_pct_copy", "cuda_speedup_vs_eager", "triton_speedup_vs_eager",
               "cuda_speedup_vs_compile"]
    return execute(args, run, "depthwise_conv2d", summarize, columns)

if __name__ == "__main__":
    sys.exit(main())
