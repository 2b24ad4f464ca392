"""Depthwise diagnostics for one GPU run: where does the CUDA kernels' time go?

Times, per reference layer (bf16, channels_last, batch 256): the forward by cuDNN (F.conv2d), our
CUDA op called directly (torch.ops, no Python wrapper), our functional API (checks + autograd
wrapper), and the Triton op; the weight gradient alone and the backward (grad_input and
grad_weight: the tiled kernels unless MK_DW_TILED=0) by cuDNN (aten.convolution_backward)
and by our CUDA backward op; with triton.testing.do_bench (L2 flushed) and do_bench_cudagraph
(launch gaps removed).
Run it with MK_DW_TILED=0 (the default kernels; MK_DW_ROW_REUSE=0 as well for the generic one
instead of the stride-1 row-reuse kernel) and unset (the shared-memory tiled kernels of
csrc/cuda/depthwise_tiled.cuh at strides 1 and 2, the default; MK_DW_TILED=1 is the same), and
MK_DW_STAGES=1 (the tiled kernels with one staging buffer instead of two: stage, wait, compute);
the rows carry the settings and the CUDA op's largest difference from cuDNN (cuda_max_abs_diff; both
round an fp32 sum to bf16 once, so a few bf16 ulps of the output at most; cuda_wgrad_max_rel_diff:
the weight gradient's, relative to cuDNN's largest |grad_weight|; cuda_bwd_max_rel_diff: the larger
of grad_input's and grad_weight's, likewise). Prints a table and
writes OUT/diag_depthwise.json (appending to an existing file, so the runs end up side by side).

    python benchmarks/diag_depthwise.py OUT [--ncu [--variants cudnn cuda_op ...]]
    # --ncu: one launch of each variant (or of those named) per layer, untimed, for ncu
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

import mobilenet_kernels.functional as MF
from mobilenet_kernels.benchmarking.core import environment

LAYERS = [(144, 56, 3, 1), (144, 56, 3, 2), (32, 112, 3, 1), (576, 14, 3, 1), (120, 28, 5, 1), (960, 7, 5, 1)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ncu", action="store_true", help="one launch of each variant per layer, no timing")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                        help="with --ncu: launch only these variants (cudnn, cuda_op, cuda_wgrad, cuda_bwd, ...)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("diag_depthwise: no CUDA device, nothing to do")
        return 0
    import triton.testing

    reuse = os.environ.get("MK_DW_ROW_REUSE", "1")
    tiled = os.environ.get("MK_DW_TILED", "1")  # the CUDA code's default when unset: tiled
    stages = os.environ.get("MK_DW_STAGES", "2")  # likewise: double-buffered
    ns = torch.ops.mobilenet_kernels
    rows = []
    for C, H, k, s in LAYERS:
        x = torch.randn(args.batch, C, H, H, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        w = torch.randn(C, 1, k, k, device="cuda", dtype=torch.bfloat16)
        p = k // 2
        OH = (H + 2 * p - k) // s + 1
        gy = torch.randn(args.batch, C, OH, OH, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last)
        variants = {
            "cudnn": lambda: F.conv2d(x, w, None, s, p, 1, C),
            "cuda_op": lambda: ns.depthwise_conv2d(x, w, None, [s, s], [p, p], [1, 1], "identity"),
            "cuda_functional": lambda: MF.depthwise_conv2d(x, w, None, s, p, 1, backend="cuda"),
            "triton_op": lambda: ns.depthwise_conv2d_triton(x, w, None, [s, s], [p, p], [1, 1], "identity"),
            "cudnn_wgrad": lambda: torch.ops.aten.convolution_backward(
                gy, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], C, [False, True, False])[1],
            "cuda_wgrad": lambda: ns.depthwise_conv2d_backward(gy, x, w, [s, s], [p, p], [1, 1],
                                                                [False, True, False])[1],
            "cudnn_bwd": lambda: torch.ops.aten.convolution_backward(
                gy, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], C, [True, True, False])[:2],
            "cuda_bwd": lambda: ns.depthwise_conv2d_backward(gy, x, w, [s, s], [p, p], [1, 1],
                                                              [True, True, False])[:2],
        }
        if args.ncu:
            unknown = set(args.variants or ()) - set(variants)
            if unknown:
                parser.error(f"--variants: unknown {sorted(unknown)}; known: {sorted(variants)}")
            for name, fn in variants.items():
                if args.variants is None or name in args.variants:
                    fn()
            torch.cuda.synchronize()
            continue
        out = variants["cudnn"]()
        nbytes = (x.numel() + out.numel()) * x.element_size()
        diff = (variants["cuda_op"]().float() - out.float()).abs().max().item()
        gw_ref = variants["cudnn_wgrad"]().float()
        wdiff = ((variants["cuda_wgrad"]().float() - gw_ref).abs().max() / gw_ref.abs().max()).item()
        gx_ref, gw_ref2 = (t.float() for t in variants["cudnn_bwd"]())
        gx, gw = (t.float() for t in variants["cuda_bwd"]())
        bdiff = max(((gx - gx_ref).abs().max() / gx_ref.abs().max()).item(),
                    ((gw - gw_ref2).abs().max() / gw_ref2.abs().max()).item())
        row = dict(C=C, H=H, k=k, stride=s, batch=args.batch, row_reuse=reuse, tiled=tiled, stages=stages,
                   bytes=nbytes,
                   cuda_max_abs_diff=diff, cuda_wgrad_max_rel_diff=wdiff, cuda_bwd_max_rel_diff=bdiff)
        for name, fn in variants.items():
            row[f"{name}_ms"] = triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
            with torch.cuda.stream(torch.cuda.Stream()):
                row[f"{name}_graph_ms"] = triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median")
        rows.append(row)
        print(" ".join(f"{key}={val:.4g}" if isinstance(val, float) else f"{key}={val}" for key, val in row.items()), flush=True)
    if rows:
        path = os.path.join(args.out, "diag_depthwise.json")
        record = json.load(open(path)) if os.path.exists(path) else {
            "environment": environment("cuda"), "op": "depthwise_conv2d_diagnostics", "rows": []}
        record["rows"] += rows
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
