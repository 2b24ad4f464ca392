"""Training loss curves of ours against torchvision eager on the synthetic task (issue 7: bf16 loss
curves over 200 steps within noise of eager). The method and the "within noise" test are in
mobilenet_kernels/benchmarking/loss_curves.py.

Writes OUT/NAME.json (environment, settings, every step's loss per variant and seed, the
comparisons), OUT/NAME.md (the comparison table) and OUT/NAME.png (mean curves, the seeds' spread
shaded) unless --no-plot. Exit status 1 if a backend is outside eager's noise or the run was cut
off (SIGINT/SIGTERM: the seeds finished so far are kept).

    python benchmarks/loss_curves.py OUT                      # GPU: V3-Large, 200 steps, bf16, 3 seeds
    python benchmarks/loss_curves.py OUT --model mobilenet_v3_small --steps 8 --batch 8 --size 32 \\
        --dtype float32 --backends cuda                         # CPU: a minute
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from mobilenet_kernels.benchmarking.core import DTYPES, environment, markdown_table, sigterm_as_interrupt
from mobilenet_kernels.benchmarking.loss_curves import CurveSettings, run


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, runs in result["curves"].items():
        mean = torch.tensor(runs).mean(0)
        ax.plot(mean.numpy(), label=label, linewidth=1)
        if len(runs) > 1:
            std = torch.tensor(runs).std(0)
            ax.fill_between(range(len(mean)), (mean - std).numpy(), (mean + std).numpy(), alpha=0.15)
    s = result["settings"]
    ax.set(xlabel="step", ylabel="training loss",
           title=f"{s['model']}, batch {s['batch']}, {s['size']}², {s['dtype']}, {s['seeds']} seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    defaults = CurveSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--name", default="loss_curves")
    p.add_argument("--model", default=defaults.model)
    p.add_argument("--backends", nargs="+", default=list(defaults.backends), choices=["torch", "triton", "cuda"])
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch", type=int, default=defaults.batch)
    p.add_argument("--size", type=int, default=defaults.size)
    p.add_argument("--seeds", type=int, default=defaults.seeds)
    p.add_argument("--dtype", default=defaults.dtype, choices=list(DTYPES))
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    if args.seeds < 2:
        p.error("--seeds: at least 2 (the seeds give the noise)")
    s = CurveSettings(model=args.model, backends=tuple(args.backends), steps=args.steps, batch=args.batch,
                      size=args.size, seeds=args.seeds, dtype=args.dtype, lr=args.lr, device=args.device)
    if s.device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes, as in a training run
    env = environment(s.device)
    with sigterm_as_interrupt():
        result = run(s, progress=lambda what: print(what, file=sys.stderr, flush=True))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump({"environment": env, **result}, f, indent=1)
    rows = [{"variant": label, **c} for label, c in result["comparison"].items()]
    table = markdown_table(rows, ["variant", "final_loss_eager", "final_loss_ours", "final_loss_seed_std", "z",
                                  "within_noise", "max_paired_gap"], header=env)
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write(table)
    print(table)
    if not args.no_plot and result["curves"]["eager"]:
        plot(result, os.path.join(args.out, f"{args.name}.png"))
    if result["interrupted"]:
        print(result["interrupted"], file=sys.stderr)
    return 0 if rows and not result["interrupted"] and all(r["within_noise"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
