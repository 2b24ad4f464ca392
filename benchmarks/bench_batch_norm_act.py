"""Benchmark batch_norm_act over the BatchNorm+activation layers of MobileNetV2 and V3-Large:
our backends vs PyTorch eager (F.batch_norm + activation) and torch.compile, eval or training.

    python benchmarks/bench_batch_norm_act.py                 # GPU: batch 256 at 224²; CPU: a small set
    python benchmarks/bench_batch_norm_act.py --training --dtype bfloat16 --layout nhwc --out DIR

Reports p20/p50/p80 ms, GB/s and % of the card's HBM peak where known, and speed-up over eager.
Bytes are those of our algorithm's passes over the activation (x, y, dy, dx of one size S):
eval forward 2S (read x, write y), eval fwd+bwd 5S; training forward 3S (statistics pass reads x,
apply pass reads x and writes y), training fwd+bwd 8S (+ reduction pass reads x, dy; dx pass reads
x, dy and writes dx).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_speedups, batch_norm_layers, execute, geomean, measure, peak_bandwidth  # noqa: E402

import mobilenet_kernels.functional as MF  # noqa: E402
from mobilenet_kernels import backends  # noqa: E402
from mobilenet_kernels.activations import apply_activation  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def providers(device: str, with_autotune: bool, training: bool) -> dict:
    def eager(x, m, v, w, b, act):
        return apply_activation(F.batch_norm(x, m, v, w, b, training, 0.1, 1e-5), act)

    found = {"eager": eager}
    # dynamic=False and a large cache: one static graph per shape, as a fixed-shape model would get
    # (the default recompile limit of 8 silently fell back to eager after the 8th shape).
    found["torch_compile"] = torch.compile(eager, dynamic=False)
    if with_autotune:
        found["torch_compile_max_autotune"] = torch.compile(eager, mode="max-autotune-no-cudagraphs", dynamic=False)
    for name in ("cuda", "triton"):
        if name in backends.available(device):
            found[name] = lambda x, m, v, w, b, act, _n=name: MF.batch_norm_act(
                x, m, v, w, b, training, 0.1, 1e-5, act, backend=_n
            )
    return found


def run(args, rows: list[dict], copy_bw: float | None) -> None:
    """Append one row per case to ``rows`` (filled in place so an interrupted run keeps its rows)."""
    device = args.device
    layers = []
    for model in args.models:
        layers += [(model, *layer) for layer in batch_norm_layers(model, args.resolution)]
    seen = set()
    peak = peak_bandwidth(device)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda it, **k: it  # noqa: E731
    cases = [(l, dt, lay, mode) for l in layers for dt in args.dtype for lay in args.layout for mode in args.mode]
    provs = providers(device, with_autotune=device == "cuda" and not args.no_autotune, training=args.training)
    passes = {(False, "forward"): 2, (False, "full"): 5, (True, "forward"): 3, (True, "full"): 8}
    for (model, C, H, W, act), dtype_name, layout, mode in tqdm(cases, desc="batch_norm_act", disable=args.quiet):
        key = (C, H, W, act, dtype_name, layout, mode)
        if key in seen:
            continue
        seen.add(key)
        dtype = DTYPES[dtype_name]
        x = torch.randn(args.batch, C, H, W, device=device, dtype=dtype)
        if layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
        m, w, b = (torch.randn(C, device=device) for _ in range(3))
        v = torch.rand(C, device=device) + 0.5
        grad = torch.randn_like(x)
        bytes_moved = x.numel() * x.element_size() * passes[(args.training, mode)]
        row = {"model": model, "C": C, "H": H, "W": W, "activation": act, "batch": args.batch, "dtype": dtype_name,
               "layout": layout, "mode": mode, "training": args.training, "bytes": bytes_moved}
        for name, fn in provs.items():
            if mode == "forward":
                call = lambda fn=fn: fn(x, m, v, w, b, act)  # noqa: E731
            else:
                xg = x.detach().requires_grad_()
                call = lambda fn=fn, xg=xg: torch.autograd.grad(fn(xg, m, v, w, b, act), xg, grad)  # noqa: E731
            measure(row, name, call, device, bytes_moved, peak, copy_bw)
        add_speedups(row, provs)
        rows.append(row)


def main(argv=None) -> int:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if gpu else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", nargs="+", default=["mobilenet_v3_large", "mobilenet_v2"])
    p.add_argument("--batch", type=int, default=256 if gpu else 8)
    p.add_argument("--resolution", type=int, default=224 if gpu else 64)
    p.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"] if gpu else ["float32"], choices=list(DTYPES))
    p.add_argument("--layout", nargs="+", default=["nhwc", "nchw"] if gpu else ["nhwc"], choices=["nhwc", "nchw"])
    p.add_argument("--mode", nargs="+", default=["forward", "full"], choices=["forward", "full"])
    p.add_argument("--training", action="store_true", help="training mode (batch statistics) instead of eval")
    p.add_argument("--no-autotune", action="store_true", help="skip torch.compile max-autotune (slow to compile)")
    p.add_argument("--out", default="mk_results")
    p.add_argument("--name", default=None, help="file name stem (default batch_norm_act_{eval,train})")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.batch <= 0:
        p.error("--batch: must be positive")
    if args.device == "cuda" and not gpu:
        p.error("--device cuda: no CUDA device")

    args.name = args.name or f"batch_norm_act_{'train' if args.training else 'eval'}"
    columns = ["model", "C", "H", "W", "activation", "dtype", "layout", "mode", "eager_p50_ms", "cuda_p50_ms",
               "triton_p50_ms", "torch_compile_p50_ms", "cuda_GBps", "cuda_pct_peak", "cuda_pct_copy",
               "cuda_speedup_vs_eager", "triton_speedup_vs_eager", "cuda_speedup_vs_compile"]
    return execute(args, run, "batch_norm_act", summarize, columns, training=args.training)


def summarize(rows: list[dict]) -> dict:
    summary = {}
    for name in ("cuda", "triton", "torch_compile", "torch_compile_max_autotune"):
        g = geomean([r.get(f"{name}_speedup_vs_eager") for r in rows])
        if g:
            summary[f"{name}_geomean_speedup_vs_eager"] = g
    return summary

if __name__ == "__main__":
    sys.exit(main())
