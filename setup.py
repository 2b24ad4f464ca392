"""Build mobilenet_kernels._C: C++ CPU kernels always, CUDA kernels whenever nvcc is found.

Whether this machine has a GPU is irrelevant: our build boxes have nvcc and no GPU, and the CUDA
sources must still compile there. Knobs (one prefix, plus the standard torch ones):

  MK_SKIP_CUDA_BUILD=1   build the C++ CPU kernels only, even where nvcc exists
  MK_FORCE_CUDA_BUILD=1  fail instead of falling back when nvcc cannot be found
  MK_DEBUG=1             -O0 -g (and -lineinfo for nvcc)
  MK_NO_AVX2_CLONES=1    the C++ CPU kernels for the baseline ISA only, without their AVX2 + FMA
                         clones: less compile time (a depthwise forward unit 27 % less), slower CPU
                         kernels
  MK_SKIP_CPU_KERNELS=1  with the CUDA build, leave out the C++ CPU kernels (csrc/cpu: ~60 % of the
                         build's compile time); the "cuda" backend then runs on CUDA tensors only.
                         For a GPU machine's build that tests and times the CUDA kernels only (the
                         GPU suite's); ignored without nvcc, where they are all there is to build
  TORCH_CUDA_ARCH_LIST   e.g. "9.0"; default "8.0;9.0" when no GPU is visible
  MAX_JOBS, NVCC_THREADS parallelism of ninja / nvcc
  MK_BUILD_LOG=PATH      copy ninja's log (each unit's start and end, ms) to PATH after the build:
                         `pip install -e .` builds in a temporary directory that it then deletes
                         (the GPU suite prints the slowest units from it)
"""

import glob
import os
import shutil
import site
import sys
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _log(msg):
    print(f"mobilenet_kernels setup: {msg}", file=sys.stderr, flush=True)


def _find_cuda_home():
    """CUDA_HOME/CUDA_PATH, else the toolkit that holds `nvcc` on PATH, else /usr/local/cuda*."""
    def is_toolkit(home):
        return os.path.exists(os.path.join(home, "bin", "nvcc")) and os.path.exists(
            os.path.join(home, "include", "cuda_runtime.h")
        )

    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and is_toolkit(home):
            return home
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        # /usr/local/bin/nvcc may be a wrapper script; prefer a real toolkit next to it.
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        if is_toolkit(home):
            return home
    return None


def _wheel_cuda_include_dirs():
    """Headers of the nvidia-* pip wheels (cusparse.h, cublas_v2.h, ...) that a partial toolkit lacks."""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    dirs = []
    for root in sorted(roots):
        dirs += sorted(glob.glob(os.path.join(root, "nvidia", "cu*", "include")))
        dirs += sorted(glob.glob(os.path.join(root, "nvidia", "*", "include")))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _wheel_cuda_library_dirs():
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    dirs = []
    for root in sorted(roots):
        dirs += sorted(glob.glob(os.path.join(root, "nvidia", "cu*", "lib")))
        dirs += sorted(glob.glob(os.path.join(root, "nvidia", "cuda_runtime", "lib")))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _default_max_jobs():
    """ninja jobs sized from cores and RAM: one nvcc job with torch headers takes ~3 GB."""
    cores = os.cpu_count() or 1
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 8
    return str(max(1, min(cores, int(mem_gb // 3))))


def _shared_cxx_runtime_link_args():
    """Link _C against the C++ runtime torch has loaded, never a private static copy of it.

    On the lent GPU image the C++ toolchain linked libstdc++ statically into _C, and Python's
    LDSHARED there carries -Wl,-Bsymbolic-functions: that copy's functions bound inside _C while its
    data (the locale facets' ids) resolved to the libstdc++.so libtorch had loaded, so the first
    c10::str that formatted an integer for an error message crashed the process (SIGSEGV in
    ostream::_M_insert<long>, GPU run 4; with matching versions the message comes out cut short).
    Naming the loaded libstdc++.so.6 on the link line makes _C need it and resolve against it;
    --exclude-libs keeps private to _C whatever a static archive must still supply (symbols newer
    than that runtime), so no copy's code meets another copy's data.
    """
    if not sys.platform.startswith("linux"):
        return []
    import torch  # noqa: F401  (maps the C++ runtime torch runs on into this process)

    with open("/proc/self/maps") as maps:
        loaded = sorted({line.split()[-1] for line in maps if "/libstdc++.so" in line})
    return loaded[:1] + ["-Wl,--exclude-libs,ALL"]


def _extensions():
    skip_cuda = _env_flag("MK_SKIP_CUDA_BUILD")
    force_cuda = _env_flag("MK_FORCE_CUDA_BUILD")
    debug = _env_flag("MK_DEBUG")

    cuda_home = None if skip_cuda else _find_cuda_home()
    if cuda_home is not None:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
    elif force_cuda:
        raise RuntimeError("MK_FORCE_CUDA_BUILD=1 but nvcc was not found (set CUDA_HOME)")
    os.environ.setdefault("MAX_JOBS", _default_max_jobs())

    from torch.utils.cpp_extension import BuildExtension as _TorchBuildExtension, CppExtension, CUDAExtension

    class BuildExtension(_TorchBuildExtension):
        """torch's, keeping ninja's log where MK_BUILD_LOG says (also after a failed build)."""

        def build_extensions(self):
            try:
                super().build_extensions()
            finally:
                log, keep = os.path.join(self.build_temp, ".ninja_log"), os.environ.get("MK_BUILD_LOG")
                if keep and os.path.exists(log):
                    shutil.copyfile(log, keep)

    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp"))) + cpu_sources
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    # No -std flag: torch.utils.cpp_extension picks the standard its headers need (C++20 from torch 2.13).
    # -fno-trapping-math lets GCC if-convert the activations' branches and vectorize them (it will
    # not speculate a float multiply that might trap otherwise); it changes no result: no
    # reassociation, no fast-math. 10x on the CPU backward kernels.
    cxx_flags += ["-fopenmp", "-fno-trapping-math"]
    if _env_flag("MK_NO_AVX2_CLONES"):
        cxx_flags.append("-DMK_NO_AVX2_CLONES")  # csrc/cpu/cpu_dispatch.h
    extra_link = ["-fopenmp", *_shared_cxx_runtime_link_args()]
    include_dirs = [os.path.join(ROOT, "csrc")]

    if cuda_home is None:
        why = "MK_SKIP_CUDA_BUILD=1" if skip_cuda else "nvcc was not found"
        _log(f"the CUDA backend is not built ({why}); C++ CPU, Triton and torch backends still install.")
        ext = CppExtension(
            "mobilenet_kernels._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=extra_link,
        )
        return [ext], BuildExtension

    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        import torch

        if torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" for a, b in caps)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    _log(f"building the CUDA backend with nvcc from {cuda_home} for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")

    wheel_includes = _wheel_cuda_include_dirs()
    if _env_flag("MK_SKIP_CPU_KERNELS"):
        _log("the C++ CPU kernels are not built (MK_SKIP_CPU_KERNELS=1): the cuda backend runs on CUDA tensors only")
        sources = [s for s in sources if s not in cpu_sources]
    sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    nvcc_flags = ["-O0", "-g", "-G", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
    nvcc_flags += [
        "--expt-relaxed-constexpr",
        "-DMK_WITH_CUDA",
        f"--threads={os.environ.get('NVCC_THREADS', '2')}",
    ]
    ext = CUDAExtension(
        "mobilenet_kernels._C",
        sources,
        include_dirs=include_dirs + wheel_includes,
        library_dirs=_wheel_cuda_library_dirs(),
        extra_compile_args={"cxx": cxx_flags + ["-DMK_WITH_CUDA"], "nvcc": nvcc_flags},
        extra_link_args=extra_link,
    )
    return [ext], BuildExtension


ext_modules, build_ext = _extensions()

setup(
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
)
