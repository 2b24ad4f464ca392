"""Does a C++ exception thrown by our ops reach Python as an exception on this machine?

A GPU run once saw processes die with SIGSEGV where our C++ argument checks threw (the same tests
pass on the CPU build boxes). Each case runs in a fresh interpreter, so one crash does not hide the
next; rc -11 is a segfault. Prints one line per case; exits non-zero if any case crashed.

For a case that dies, where cuda-gdb is installed (the GPU image has it; it debugs host code too),
the case runs again under it and the native backtrace at the signal is printed, with the shared
libraries that define the unwinder (_Unwind_RaiseException) and __cxa_throw in that process: a
throw that resolves them from two different runtimes is the usual way a C++ throw becomes SIGSEGV.
Then the compilers that built our extension and libtorch (their .comment sections).
Before the cases, and cheaper than any debugger: which C++ runtimes and unwinders the process has
mapped once torch and our extension are loaded (two different libstdc++ or libgcc_s is the classic
cause; OpenMP runtimes listed too), where _C's own lookup finds __cxa_throw and
_Unwind_RaiseException, and _C's NEEDED/RUNPATH. (GPU run 4 found libstdc++ linked statically into
_C this way: benchmarks/results/gpu_diag_run4_h200.json; setup.py links it dynamically since.)
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

# Our extension as built in place (the suite's build): _C*.so next to the package's sources.
EXTENSION_FILES = glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mobilenet_kernels",
                                         "_C*.so"))

PRELUDE = "import torch\n"
BAD_OP = (
    "import mobilenet_kernels\n"
    "try:\n"
    "    torch.ops.mobilenet_kernels.batch_norm_act_eval(torch.randn(2, 4, 3, 3), torch.zeros(5), torch.ones(4), None, None, 1e-5, 'relu')\n"
    "except ValueError as e:\n"
    "    print('caught:', str(e).splitlines()[0][:80])\n"
)
CASES = {
    "torch's own C++ error": PRELUDE + "try:\n    torch.ones(2) + torch.ones(3)\nexcept RuntimeError as e:\n    print('caught')\n",
    "our C++ check, fresh process": PRELUDE + BAD_OP,
    "our C++ check after torch.compile on CPU": PRELUDE
    + "f = torch.compile(lambda x: (x * 2).sin())\nf(torch.randn(8))\n" + BAD_OP,
    "our C++ check after a Triton launch": PRELUDE
    + "import mobilenet_kernels.functional as MF\n"
    + "if torch.cuda.is_available():\n"
    + "    x = torch.randn(2, 4, 3, 3, device='cuda'); m = torch.zeros(4, device='cuda'); v = torch.ones(4, device='cuda')\n"
    + "    MF.batch_norm_act(x, m, v, backend='triton'); torch.cuda.synchronize()\n" + BAD_OP,
    "our C++ check from a CUDA op": PRELUDE
    + "import mobilenet_kernels\n"
    + "if torch.cuda.is_available():\n"
    + "    try:\n"
    + "        torch.ops.mobilenet_kernels.batch_norm_act_eval(torch.randn(2, 4, 3, 3, device='cuda'), torch.zeros(5, device='cuda'), torch.ones(4, device='cuda'), None, None, 1e-5, 'relu')\n"
    + "    except ValueError as e:\n"
    + "        print('caught')\n",
}


RUNTIMES = r"""
import re, torch
from mobilenet_kernels import _extension
maps = sorted({line.split()[-1] for line in open('/proc/self/maps') if re.search(r'lib(stdc\+\+|gcc_s|c\+\+|unwind|g?omp)', line)})
print('mapped C++ runtimes:', *maps, sep='\n  ')
for sym in ('__cxa_throw', '_Unwind_RaiseException', '__gxx_personality_v0'):
    print(f'{sym}: _C finds it in {_extension.library_defining(sym)}')
"""


def runtimes() -> str:
    """The C++ runtimes mapped after importing torch and our extension, and _C's dynamic section."""
    r = subprocess.run([sys.executable, "-c", RUNTIMES], capture_output=True, text=True, timeout=120)
    lines = [r.stdout.strip() or (r.stderr.strip().splitlines() or ["(no output)"])[-1]]
    readelf = shutil.which("readelf")
    for lib in EXTENSION_FILES if readelf else []:
        d = subprocess.run([readelf, "-d", lib], capture_output=True, text=True).stdout
        lines += [line.strip() for line in d.splitlines() if "NEEDED" in line or "RUNPATH" in line or "RPATH" in line]
    return "\n".join(lines)


GDB_COMMANDS = ["set pagination off", "set confirm off", "run", "bt 30", "info symbol $pc",
                "info symbol _Unwind_RaiseException", "info symbol __cxa_throw", "info symbol _Unwind_Find_FDE",
                "info symbol __gxx_personality_v0"]


GDB_TIMEOUT_S = 100  # within the suite's diag step (150 s), after the cases' ~10 s each


def native_backtrace(code: str) -> str:
    """The case under cuda-gdb: its backtrace where the signal hit, and where the unwinder lives."""
    gdb = shutil.which("cuda-gdb")
    if gdb is None:
        return "(no cuda-gdb here: no native backtrace)"
    cmd = [gdb, "-q", "-batch", *(a for c in GDB_COMMANDS for a in ("-ex", c)), "--args", sys.executable, "-c", code]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=GDB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "(cuda-gdb timed out)"
    keep = [line for line in (r.stdout + r.stderr).splitlines()
            if line.startswith(("#", "Thread", "Program received", "_Unwind", "__cxa", "__gxx")) or " in section " in line]
    return "\n".join(keep[-60:])


def compilers() -> str:
    """The .comment section (the compilers and versions) of our extension and of libtorch_cpu."""
    import torch

    libs = EXTENSION_FILES + glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    readelf = shutil.which("readelf")
    if readelf is None:
        return "(no readelf here)"
    lines = []
    for lib in libs:
        r = subprocess.run([readelf, "-p", ".comment", lib], capture_output=True, text=True)
        found = sorted({line.split("]", 1)[-1].strip() for line in r.stdout.splitlines() if "]" in line})
        lines.append(f"{os.path.basename(lib)}: {'; '.join(found)}")
    return "\n".join(lines)


def main() -> int:
    print(runtimes(), flush=True)
    crashed = 0
    for name, code in CASES.items():
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        out = (r.stdout.strip().splitlines() or [""])[-1]
        err = (r.stderr.strip().splitlines() or [""])[-1]
        print(f"{name:45s} rc={r.returncode:4d}  {out or err}"[:200], flush=True)
        if r.returncode != 0:
            crashed += 1
            if crashed == 1:  # one backtrace tells the story; the others would repeat it
                print(native_backtrace(code), flush=True)
    if crashed:
        print(compilers())
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
