"""Op registrations (fakes, Triton kernels; every op's autograd is C++, csrc/autograd.cpp). Importing this
module registers them all."""

from .._extension import LOADED

if LOADED:
    from . import (batch_norm_act, depthwise_conv2d, inverted_residual, pointwise_conv2d,  # noqa: F401
                   pointwise_depthwise, squeeze_excite)
