// Host emulation stand-in for <c10/cuda/CUDAException.h> (see ../../cuda_runtime.h): there is no
// launch to check.
#pragma once

#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
#define C10_CUDA_CHECK(EXPR) \
  do {                       \
    (void)(EXPR);            \
  } while (0)
