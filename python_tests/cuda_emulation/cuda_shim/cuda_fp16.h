// Host emulation (see cuda_runtime.h): CUDA's 16-bit float type is ATen's, bit for bit.
#pragma once
#include <c10/util/Half.h>
using __half = c10::Half;
