"""Alignment hints: 16-byte vector loads and stores at every MobileNet channel count.

Triton specializes an integer argument as a multiple of 16 or not at all. So a channels_last offset
``pixel * C + c`` with C = 120 (8 bf16 channels to a 16-byte vector, not 16; V3-Large also has 24,
40, 72, 184 and 200) is taken as unaligned and loaded an element at a time: GPU run 6 timed the
Triton k5 depthwise forward of 120 x 28² at 10x cuDNN's time, and its sm_90 PTX had 226 scalar
global loads per program against 77 vector ones at C = 960. The pointwise GEMMs at K = 40 or
Co = 120 lost more: scalar loads feed their tl.dot, with no cp.async pipelining at all.

The fix, in every kernel the same: the launcher passes ``channel_multiple`` (a power of two that
divides the value) as a constexpr, and the kernel rewrites the value as ``multiple(v, MULT)``:
``(v // MULT) * MULT``, the same value, which Triton's alignment analysis sees as a multiple of
MULT (``tl.multiple_of`` has no effect on a scalar argument there). python_tests/test_triton_ptx.py
compiles the kernels for sm_90 and checks that their global loads are vectors.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl


def channel_multiple(C: int, stride_c: int = 1) -> int:
    """The largest power of two up to 16 dividing ``C`` where C is a row stride (channels_last:
    stride_c 1, so every pixel stride is a multiple of C), else 1 (NCHW: the pixel strides include
    a unit one, which no hint may claim more of). An NCHW tensor of one pixel per image has
    stride_c 1 too; its pixel index is always 0, so the hint holds wherever it is used. Also the
    multiple of a plain value (a matrix's row length): ``channel_multiple(v)``."""
    return math.gcd(C, 16) if stride_c == 1 and C > 0 else 1


@triton.jit
def multiple(v, MULT: tl.constexpr):
    """``v``, which the launcher knows to be a multiple of MULT, in a form Triton sees as one."""
    if MULT > 1:
        v = (v // MULT) * MULT
    return v
