// Host emulation (see cuda_runtime.h): CUDA's bfloat16 type is ATen's, bit for bit.
#pragma once
#include <c10/util/BFloat16.h>
using __nv_bfloat16 = c10::BFloat16;
