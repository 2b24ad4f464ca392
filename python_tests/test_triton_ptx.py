"""What our Triton kernels compile to on sm_90, checked without a GPU: Triton compiles a kernel to
PTX for a named target in a process without the interpreter (the tests' own processes run Triton
under TRITON_INTERPRET=1, whose kernels cannot be compiled).

16-byte loads at every MobileNet channel count (mobilenet_kernels/triton/_alignment.py): Triton
specializes an integer argument as a multiple of 16 or not at all, so a channels_last offset
``pixel * C + c`` with C = 120 (8 bf16 channels to a 16-byte vector, not 16; V3-Large also has 24,
40, 72, 184 and 200) was taken as unaligned and loaded an element at a time: GPU run 6 timed the
Triton k5 depthwise forward of 120 x 28² at 10x cuDNN's time, and the pointwise GEMMs at K = 40
fed their dots from scalar loads with no cp.async pipelining. The kernels now take the power of
two dividing each channel count as a constexpr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Compiles each (kernel, C) for sm_90 as a launch at 256 x 28² bf16 channels_last would specialize
# it (16-byte aligned pointers; an integer a multiple of 16 where it is one) and prints the global
# loads of its PTX per case.
_SCRIPT = r"""
import inspect, json, sys
import re
import torch, triton
from triton.backends.compiler import GPUTarget
from mobilenet_kernels.triton import (batch_norm_act as B, depthwise_conv2d as D, inverted_residual as I,
                                     pointwise_conv2d as P, squeeze_excite as S)
from mobilenet_kernels.triton._alignment import channel_multiple as cm

def compile_loads(kernel, types, consts, values, warps=4):
    names = list(inspect.signature(kernel.fn).parameters)
    consts = {**consts, **{n: 1 for n, v in values.items() if v == 1}}  # Triton's specialization of 1
    signature = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if n.endswith("_ptr") or (n in values and values[n] % 16 == 0)}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=attrs)
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}).asm["ptx"]
    return re.findall(r"ld\.global\S*|cp\.async\.c[ag]\.shared\.global\S*", ptx)

found = {}
N, H = 256, 28
no_input_bn = dict(X_BN=False, X_HAS_WEIGHT=False, X_HAS_BIAS=False, X_ACT=0)
input_bn = dict(X_BN=True, X_HAS_WEIGHT=True, X_HAS_BIAS=True, X_ACT=3)
input_bn_types = {"xbn_mean_ptr": "*fp32", "xbn_var_ptr": "*fp32", "xbn_w_ptr": "*fp32", "xbn_b_ptr": "*fp32",
                  "xbn_eps": "fp32"}
for C in json.loads(sys.argv[1]):
    block_p, block_c = D._blocks(N * H * H, C, True, 25, torch.bfloat16)
    found[f"depthwise k5 C={C}"] = compile_loads(
        D._depthwise_conv2d_fwd_kernel,
        {"x_ptr": "*bf16", "w_ptr": "*fp32", "b_ptr": "*fp32", "y_ptr": "*bf16", "stats_ptr": "*fp32"},
        dict(KH=5, KW=5, SH=1, SW=1, DH=1, DW=1, HAS_BIAS=True, ACT=3, STATS=False, ROUND_BF16=False,
             CHANNELS_LAST=True, PIX64=False, BLOCK_P=block_p, BLOCK_C=block_c, C_MULT=cm(C), **no_input_bn),
        {"C": C})
    # the training forward of an inverted residual's dw conv (k3 s1, statistics), the expand
    # BatchNorm + activation applied to its input where it is loaded
    block_p, block_c = D._blocks(N * H * H, C, True, 9, torch.bfloat16)
    found[f"depthwise statistics + input BatchNorm k3 C={C}"] = compile_loads(
        D._depthwise_conv2d_fwd_kernel,
        {"x_ptr": "*bf16", "w_ptr": "*fp32", "b_ptr": "*fp32", "y_ptr": "*bf16", "stats_ptr": "*fp32",
         **input_bn_types},
        dict(KH=3, KW=3, SH=1, SW=1, DH=1, DW=1, HAS_BIAS=False, ACT=0, STATS=True, ROUND_BF16=False,
             CHANNELS_LAST=True, PIX64=False, BLOCK_P=block_p, BLOCK_C=block_c, C_MULT=cm(C), **input_bn),
        {"C": C, "ITERS": 4})
    # the fused dw conv + BatchNorm + activation training backward (k3 s1: grad_input and
    # grad_weight, BatchNorm's grad_input computed from grad_output and z at every tap load), as an
    # inverted residual runs it: the expand BatchNorm + activation applied to x where it is loaded
    block_p, block_c = D._blocks(N * H * H, C, True, 9, torch.bfloat16)
    found[f"depthwise backward + both BatchNorms k3 C={C}"] = compile_loads(
        D._depthwise_conv2d_bwd_kernel,
        {"gy_ptr": "*bf16", "x_ptr": "*bf16", "w_ptr": "*fp32", "gx_ptr": "*bf16", "partial_ptr": "*fp32",
         "z_ptr": "*bf16", "mean_ptr": "*fp32", "var_ptr": "*fp32", "bnw_ptr": "*fp32", "bnb_ptr": "*fp32",
         "sum_gxhat_ptr": "*fp32", "sum_g_ptr": "*fp32", "eps": "fp32", **input_bn_types},
        dict(KH=3, KW=3, SH=1, SW=1, DH=1, DW=1, GRAD_INPUT=True, GRAD_WEIGHT=True, TAPS=16, BN_DX=True,
             HAS_WEIGHT=True, HAS_BIAS=True, ACT=3, ROUND_BF16=False, CHANNELS_LAST=True, PIX64=False,
             BLOCK_P=block_p, BLOCK_C=block_c, C_MULT=cm(C), **input_bn),
        {"C": C, "H": H, "W": H, "OH": H, "OW": H, "PH": 1, "PW": 1, "HQ": H, "WQ": H, "Q": N * H * H, "ITERS": 4,
         "M": N * H * H})
    block_m, block_c = B._blocks(N * H * H, C)
    found[f"batch_norm_act eval C={C}"] = compile_loads(
        B._batch_norm_act_eval_fwd_kernel,
        {"x_ptr": "*bf16", "y_ptr": "*bf16", "mean_ptr": "*fp32", "var_ptr": "*fp32", "w_ptr": "*fp32",
         "b_ptr": "*fp32", "eps": "fp32"},
        dict(HAS_WEIGHT=True, HAS_BIAS=True, ACT=3, BLOCK_M=block_m, BLOCK_C=block_c,
             MULT=cm(C, 1), stride_c=1),
        {"M": N * H * H, "C": C, "HW": H * H, "stride_n": H * H * C, "stride_p": C})
    found[f"squeeze_excite apply C={C}"] = compile_loads(
        S._se_apply_kernel,
        {"x_ptr": "*bf16", "s_ptr": "*fp32", "add_ptr": "*fp32", "y_ptr": "*bf16"},
        dict(HAS_ADD=False, BLOCK_M=64, BLOCK_C=64, MULT=cm(C, 1), stride_c=1),
        {"M": N * H * H, "C": C, "HW": H * H, "stride_n": H * H * C, "stride_p": C})

# The 1x1 GEMMs as a block with C hidden channels runs them (K input -> Co output channels):
# forward (x . W^T, bias, residual), grad_input (g . W) and the split-M weight gradient.
M, Ci = N * H * H, 40
half = {"x_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*fp32", "r_ptr": "*bf16", "y_ptr": "*bf16", "stats_ptr": "*fp32"}
for C in json.loads(sys.argv[1]):
    for what, K, Co, trans in (("pointwise forward", Ci, C, True), ("pointwise grad_input", C, Ci, False)):
        block_m, block_n, block_k, warps = P._gemm_blocks(M, K, Co, torch.bfloat16, False)
        found[f"{what} {K}->{Co}"] = compile_loads(
            P._pointwise_conv2d_fwd_kernel, half,
            dict(HAS_BIAS=trans, HAS_RESIDUAL=trans, ACT=3 if trans else 0, STATS=False, ROUND=0, IEEE=False,
                 TRANS_W=trans, K_MULT=cm(K), N_MULT=cm(Co), X_MULT=cm(K), Y_MULT=cm(Co), BLOCK_M=block_m,
                 BLOCK_N=block_n, BLOCK_K=block_k),
            dict(M=M, HW=H * H, K=K, Co=Co, ITERS=1, stride_xn=H * H * K, stride_xp=K, stride_xk=1,
                 stride_w=K if trans else Co, stride_yn=H * H * Co, stride_yp=Co, stride_yc=1), warps)
    found[f"pointwise grad_weight {Ci}->{C}"] = compile_loads(
        P._pointwise_conv2d_wgrad_kernel, {"g_ptr": "*bf16", "x_ptr": "*bf16", "pw_ptr": "*fp32", "pb_ptr": "*fp32"},
        dict(GRAD_BIAS=True, IEEE=False, CO_MULT=cm(C), CI_MULT=cm(Ci), G_MULT=cm(C), X_MULT=cm(Ci), BLOCK_M=128,
             BLOCK_CO=P._block(C, 64), BLOCK_CI=P._block(Ci, 64)),
        dict(M=M, HW=H * H, Co=C, Ci=Ci, ITERS=4, stride_gn=H * H * C, stride_gp=C, stride_gc=1,
             stride_xn=H * H * Ci, stride_xp=Ci, stride_xc=1))
    # The whole block Ci -> C -> Ci, k5 s1 with the residual, eval (BatchNorm folded); with a
    # squeeze-excite, its pass 1 (POOL: per-tile channel sums) and pass 2 (SCALED) too.
    th, tw, halo_w, halo_n, halo_p = I._tile(H, H, 1, 5, 1)
    for what, pool, scaled in (("", False, False), (" SE pass 1", True, False), (" SE pass 2", False, True)):
        found[f"inverted_residual {Ci}->{C}->{Ci}{what}"] = compile_loads(
            I._inverted_residual_eval_kernel,
            {"x_ptr": "*bf16", "we_ptr": "*bf16", "be_ptr": "*fp32", "wd_ptr": "*fp32", "bd_ptr": "*fp32",
             "wp_ptr": "*bf16", "bp_ptr": "*fp32", "y_ptr": "*bf16", "scratch_ptr": "*fp32", "scale_ptr": "*fp32",
             "part_ptr": "*fp32"},
            dict(KS=5, STRIDE=1, DIL=1, TH=th, TW=tw, HALO_W=halo_w, HALO_N=halo_n, HALO_P=halo_p, HAS_EXPAND=True,
                 RESIDUAL=True, ACT=3, IEEE=False, POOL=pool, SCALED=scaled, CIN_MULT=cm(Ci), HID_MULT=cm(C),
                 CO_MULT=cm(Ci), X_MULT=cm(Ci), Y_MULT=cm(Ci), BLOCK_P=max(16, triton.next_power_of_2(th * tw)),
                 BLOCK_H=32, BLOCK_K=64, BLOCK_CO=64),
            dict(N=N, Cin=Ci, Chid=C, Cout=Ci, H=H, W=H, OH=H, OW=H, PAD=2, TILES_H=H // th, TILES_W=H // tw,
                 sxn=H * H * Ci, sxc=1, sxh=H * Ci, sxw=Ci, syn=H * H * Ci, syc=1, syh=H * Ci, syw=Ci))
print(json.dumps(found))
"""


# A kernel's scalar loads that are not per-pixel traffic: the block kernel's project bias, loaded
# once per program one channel per thread.
_ONCE_PER_PROGRAM = {"inverted_residual": 1}


def test_channels_last_kernels_load_16_byte_vectors():
    """The depthwise forward (k5), its statistics variant with the input BatchNorm applied (k3)
    and backward fused with both BatchNorms' (k3), the BatchNorm eval forward, the squeeze-excite apply pass, the
    pointwise GEMMs (forward, grad_input, grad_weight) and the whole-block kernel (and its two
    squeeze-excite passes), bf16 channels_last at C = 120, 72 (multiples of 8, not 16) and 960 (the
    GEMMs from and the blocks around 40 channels): every global load of activations and weights a
    vector or a 16-byte cp.async."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", _SCRIPT, "[120, 72, 960]"], env=env, capture_output=True, text=True,
                         timeout=600)
    if run.returncode != 0 and "GPUTarget" in run.stderr:
        pytest.skip(f"this triton cannot compile for CUDA here: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(found) == 12 + 3 * 7
    for case, loads in found.items():
        scalar = [ld for ld in loads if ld.startswith("ld.") and not re.search(r"\.v[248]\.", ld)]
        allowed = next((n for prefix, n in _ONCE_PER_PROGRAM.items() if case.startswith(prefix)), 0)
        assert loads and len(scalar) <= allowed, (case, sorted(set(loads)))
        assert all(".cg." in ld for ld in loads if ld.startswith("cp.async")), (case, sorted(set(loads)))
