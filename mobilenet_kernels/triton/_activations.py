"""Activations and their derivatives for Triton kernels; codes as in mobilenet_kernels/activations.py.

Written with tl.where so that NaN propagates as in PyTorch, and with PyTorch's conventions at the
kinks (see csrc/mk_common.h, which these mirror).
"""

import triton
import triton.language as tl


@triton.jit
def _div(x, y):
    """IEEE-rounded division, as ATen computes it: Triton's plain fp32 ``/`` is approximate on GPUs."""
    if x.dtype == tl.float32:
        q = tl.math.div_rn(x, y)
    else:
        q = x / y
    return q


@triton.jit
def act_forward(z, ACT: tl.constexpr):
    if ACT == 0:  # identity
        out = z
    elif ACT == 1:  # relu
        out = tl.where(z < 0, 0.0, z)
    elif ACT == 2:  # relu6
        out = tl.where(z < 0, 0.0, tl.where(z > 6, 6.0, z))
    elif ACT == 3:  # hardswish
        t = z + 3
        out = _div(z * tl.where(t < 0, 0.0, tl.where(t > 6, 6.0, t)), 6.0)
    elif ACT == 4:  # hardsigmoid
        t = z + 3
        out = _div(tl.where(t < 0, 0.0, tl.where(t > 6, 6.0, t)), 6.0)
    elif ACT == 5:  # sigmoid
        out = 1 / (1 + tl.exp(-z))
    else:  # silu
        out = z / (1 + tl.exp(-z))
    return out


@triton.jit
def act_derivative(z, ACT: tl.constexpr):
    if ACT == 0:
        d = tl.full(z.shape, 1.0, z.dtype)
    elif ACT == 1:
        d = tl.where(z > 0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where((z > 0) & (z < 6), 1.0, 0.0)
    elif ACT == 3:
        d = tl.where(z <= -3, 0.0, tl.where(z >= 3, 1.0, _div(z, 3.0) + 0.5))
    elif ACT == 4:
        d = tl.where((z > -3) & (z < 3), 1.0 / 6.0, 0.0)  # an fp32 1/6, as ATen uses even for double
    elif ACT == 5:
        s = 1 / (1 + tl.exp(-z))
        d = s * (1 - s)
    else:
        s = 1 / (1 + tl.exp(-z))
        d = s * (1 + z * (1 - s))
    return d.to(z.dtype)
