"""train: a MobileNet on our kernels, on synthetic data or an ImageFolder directory.

    python -m mobilenet_kernels train --model mobilenet_v2 --width-mult 0.25 --data synthetic \\
        --epochs 2 --batch 32 --checkpoint-dir runs/demo
    torchrun --nproc_per_node=8 -m mobilenet_kernels train --model mobilenet_v2 --data /imagenet \\
        --epochs 150 --batch 64 --amp --channels-last --sync-bn --checkpoint-dir runs/v2

--batch is per process; --resume PATH continues at the epoch after the saved one, up to --epochs.
MobileNetV3's BatchNorm momentum is 0.01 (torchvision's): its running statistics, and so its
validation accuracy, lag behind the training loss for the first few hundred steps.
The loop itself is mobilenet_kernels.training; this module maps the flags onto its TrainConfig.
"""

from __future__ import annotations

import argparse
import dataclasses

from . import CliError


def add_parser(sub) -> None:
    from ..backends import BACKENDS
    from ..training import MODELS, OPTIMIZERS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train", help="train a MobileNet (synthetic data or an ImageFolder; torchrun for several processes)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Names are checked in run() (CliError: one line), not with choices= (argparse adds a usage block).
    p.add_argument("--model", default=d.model, metavar="|".join(MODELS), help=f"default: {d.model}")
    p.add_argument("--data", default=d.data, metavar="synthetic|DIR",
                   help="'synthetic' (a learnable task generated on the fly) or an ImageFolder directory "
                        "(DIR/<class>/<image>, or DIR/train and DIR/val); default: synthetic")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"total epochs (default: {d.epochs})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"images per process and step (default: {d.batch})")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 0.1 x global batch / 256 for sgd, 1e-3 for adamw)")
    p.add_argument("--optimizer", default=d.optimizer, metavar="|".join(OPTIMIZERS), help=f"default: {d.optimizer}")
    p.add_argument("--momentum", type=float, default=d.momentum, help=f"SGD momentum (default: {d.momentum})")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=d.nesterov,
                   help="Nesterov momentum for SGD (default: on)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="on conv and linear weights (default: 4e-5 for sgd, 0.05 for adamw)")
    p.add_argument("--warmup-epochs", type=float, default=None,
                   help="linear LR warmup before the cosine decay (default: min(1, epochs / 5))")
    p.add_argument("--size", type=int, default=None,
                   help="image side in pixels (default: 32 synthetic, 224 ImageFolder)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="default: 10 for synthetic data, else the ImageFolder's class count")
    p.add_argument("--width-mult", type=float, default=d.width_mult,
                   help=f"channel multiplier (default: {d.width_mult:g})")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loader workers per process (default: 0 synthetic, min(8, CPUs) ImageFolder)")
    p.add_argument("--val-split", type=float, default=d.val_split,
                   help=f"fraction held out for validation when there is no DIR/val (default: {d.val_split})")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="write DIR/last.pt, DIR/best.pt and DIR/log.json after every epoch (rank 0)")
    p.add_argument("--resume", default=None, metavar="PATH", help="continue from a checkpoint, at its next epoch")
    p.add_argument("--seed", type=int, default=d.seed, help=f"default: {d.seed}")
    p.add_argument("--device", default=None,
                   help="cpu | cuda | cuda:N (default: cuda if available; under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--backend", default=None, metavar="|".join(BACKENDS), help="kernels (default: the fastest usable)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over all processes (under torchrun)")
    p.add_argument("--recompute", action="store_true",
                   help="keep only each inverted-residual block's input for backward and recompute the expanded "
                        "tensors (less activation memory, one more forward per block)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap on steps per epoch (default: a full pass)")
    p.add_argument("--log-interval", type=int, default=d.log_interval,
                   help="steps between loss readings, progress-bar updates and log.json step entries "
                        f"(default: {d.log_interval})")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training import ConfigError, TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        train(cfg)
    except ConfigError as e:
        raise CliError(str(e)) from None
    return 0
