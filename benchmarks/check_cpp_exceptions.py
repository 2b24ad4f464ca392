"""Does a C++ exception thrown by our ops reach Python as an exception on this machine?

A GPU run once saw processes die with SIGSEGV where our C++ argument checks threw (the same tests
pass on the CPU build boxes). Each case runs in a fresh interpreter, so one crash does not hide the
next; rc -11 is a segfault. Prints one line per case; exits non-zero if any case crashed.
"""

from __future__ import annotations

import subprocess
import sys

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


def main() -> int:
    crashed = 0
    for name, code in CASES.items():
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        out = (r.stdout.strip().splitlines() or [""])[-1]
        err = (r.stderr.strip().splitlines() or [""])[-1]
        print(f"{name:45s} rc={r.returncode:4d}  {out or err}"[:200])
        crashed += r.returncode != 0
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
