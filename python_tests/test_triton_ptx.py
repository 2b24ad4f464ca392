"""What our Triton kernels compile to on sm_90, checked without a GPU: Triton compiles a kernel to
PTX for a named target in a process without the interpreter (the tests' own processes run Triton
under TRITON_INTERPRET=1, whose kernels cannot be compiled).

16-byte loads at every MobileNet channel count: Triton specializes an integer argument as a
multiple of 16 or not at all, so a channels_last offset ``pixel * C + c`` with C = 120 (8 bf16
channels to a 16-byte vector, not 16; V3-Large also has 40, 72, 184 and 200) was taken as
unaligned and loaded an element at a time: GPU run 6 timed the Triton k5 depthwise forward of
120 x 28² at 10x cuDNN's time. The kernels now take the power of two dividing C as a constexpr."""

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
from mobilenet_kernels.triton import batch_norm_act as B, depthwise_conv2d as D, squeeze_excite as S

def compile_loads(kernel, types, consts, values):
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if n.endswith("_ptr") or (n in values and values[n] % 16 == 0)}
    source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=consts, attrs=attrs)
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
    return re.findall(r"ld\.global\S*", ptx)

found = {}
N, H = 256, 28
for C in json.loads(sys.argv[1]):
    block_p, block_c = D._blocks(N * H * H, C, True, 25, torch.bfloat16)
    found[f"depthwise k5 C={C}"] = compile_loads(
        D._depthwise_conv2d_fwd_kernel,
        {"x_ptr": "*bf16", "w_ptr": "*fp32", "b_ptr": "*fp32", "y_ptr": "*bf16", "stats_ptr": "*fp32"},
        dict(KH=5, KW=5, SH=1, SW=1, DH=1, DW=1, HAS_BIAS=True, ACT=3, STATS=False, ROUND_BF16=False,
             CHANNELS_LAST=True, PIX64=False, BLOCK_P=block_p, BLOCK_C=block_c, C_MULT=B._channel_multiple(C)),
        {"C": C})
    block_m, block_c = B._blocks(N * H * H, C)
    found[f"batch_norm_act eval C={C}"] = compile_loads(
        B._batch_norm_act_eval_fwd_kernel,
        {"x_ptr": "*bf16", "y_ptr": "*bf16", "mean_ptr": "*fp32", "var_ptr": "*fp32", "w_ptr": "*fp32",
         "b_ptr": "*fp32", "eps": "fp32"},
        dict(HAS_WEIGHT=True, HAS_BIAS=True, ACT=3, BLOCK_M=block_m, BLOCK_C=block_c,
             MULT=B._channel_multiple(C, 1), stride_c=1),
        {"M": N * H * H, "C": C, "HW": H * H, "stride_n": H * H * C, "stride_p": C})
    found[f"squeeze_excite apply C={C}"] = compile_loads(
        S._se_apply_kernel,
        {"x_ptr": "*bf16", "s_ptr": "*fp32", "add_ptr": "*fp32", "y_ptr": "*bf16"},
        dict(HAS_ADD=False, BLOCK_M=64, BLOCK_C=64, MULT=B._channel_multiple(C, 1), stride_c=1),
        {"M": N * H * H, "C": C, "HW": H * H, "stride_n": H * H * C, "stride_p": C})
print(json.dumps(found))
"""


def test_channels_last_kernels_load_16_byte_vectors():
    """The depthwise forward (k5), the BatchNorm eval forward and the squeeze-excite apply pass, bf16
    channels_last at C = 120, 72 (multiples of 8, not 16) and 960: every global load a vector."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", _SCRIPT, "[120, 72, 960]"], env=env, capture_output=True, text=True,
                         timeout=600)
    if run.returncode != 0 and "GPUTarget" in run.stderr:
        pytest.skip(f"this triton cannot compile for CUDA here: {run.stderr[-300:]}")
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(found) == 9
    for case, loads in found.items():
        assert loads and all(re.search(r"\.v[248]\.", ld) for ld in loads), (case, sorted(set(loads)))
