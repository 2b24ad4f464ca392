// ISA dispatch shared by the C++ CPU kernels. A kernel is a struct K whose run(begin, end) is
// always inlined, so its loops are compiled twice: for the baseline ISA of the build (no -march)
// and, on x86, for AVX2 + FMA (a target-attribute clone); the clone is chosen at run time.
// Tasks [0, tasks) are independent: each kernel fixes its own summation order per task, so results
// do not depend on how at::parallel_for splits them over threads.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

// MK_NO_AVX2_CLONES (setup.py's build knob of the same name): the baseline only, less compile
// time (a depthwise forward unit 27 % less), for builds that time the GPU kernels
// (benchmarks/gpu_suite.sh).
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && \
    !defined(MK_NO_AVX2_CLONES)
#define MK_AVX2_CLONES 1
#endif

namespace mobilenet_kernels {
namespace cpu {

inline bool use_avx2() {
#ifdef MK_AVX2_CLONES
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

template <class K>
void run_baseline(const K& k, int64_t begin, int64_t end) {
  k.run(begin, end);
}

#ifdef MK_AVX2_CLONES
template <class K>
__attribute__((target("avx2,fma"))) void run_avx2(const K& k, int64_t begin, int64_t end) {
  k.run(begin, end);
}
#endif

// Runs k over tasks [0, tasks) on at::parallel_for; `grain` tasks make a chunk worth a thread.
template <class K>
void parallel_run(const K& k, int64_t tasks, int64_t grain = 1) {
  const bool avx2 = use_avx2();
  at::parallel_for(0, tasks, std::max<int64_t>(1, grain), [&](int64_t begin, int64_t end) {
#ifdef MK_AVX2_CLONES
    if (avx2) return run_avx2(k, begin, end);
#endif
    (void)avx2;
    run_baseline(k, begin, end);
  });
}

}  // namespace cpu
}  // namespace mobilenet_kernels
