"""Launch-config tuning for the Triton kernels, limited to configs with identical numerics.

A kernel's block sizes and warp count decide how its outputs are spread over programs. Where every
output element is computed by one program, from the same inputs in the same order whatever the tile
(an elementwise pass; a depthwise conv's fixed tap loop), all configs give the same bits, and picking
the fastest one per shape changes the speed and never a result. That is the only kind of config an
op hands to `LaunchTuner`; a config that moves a reduction boundary (a GEMM's BLOCK_K, the pixels a
statistics partial covers) changes the rounding, so those launches keep their fixed heuristic (and
the tests check, per op, that every candidate gives bitwise the same output).

Why not `triton.autotune`: it tunes every launch of the decorated kernel, but our kernels have
modes (statistics, backward partials) whose results depend on the tile, so the tuned set has to be
chosen per call site; it would also benchmark under the CPU interpreter (minutes) and inside CUDA
graph capture (which cannot run the timing).

On a CUDA device, the first launch per key (the op's shapes, dtype, layout and device) times every
candidate with `triton.testing.do_bench` and keeps the fastest for the life of the process (ties:
the earlier candidate, the heuristic first). The heuristic config (candidates[0]) runs, untimed and
not remembered, under the CPU interpreter, while a CUDA graph is being captured, and everywhere
with MK_TRITON_TUNE=0.
"""

from __future__ import annotations

import os
from typing import Callable, Hashable, Sequence

import torch
import triton

Config = tuple  # the op's launch parameters, e.g. (BLOCK_P, BLOCK_C, num_warps)


def _do_bench(fn: Callable[[], None]) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median")


def tuning_enabled(device: torch.device) -> bool:
    """Whether a launch on `device` may be tuned now (see the module docstring)."""
    if device.type != "cuda" or os.environ.get("MK_TRITON_TUNE", "1") == "0":
        return False
    return not torch.cuda.is_current_stream_capturing()


class LaunchTuner:
    """Per-key choice among numerics-identical launch configs of one kernel.

    `launch(key, candidates, run, tune)` runs `run(config)` once with the chosen config and returns
    that config; with `tune` and no choice yet for `key`, it first times `run` with every candidate
    (each call must only write the launch's outputs, so running it repeatedly is harmless)."""

    def __init__(self, name: str, bench: Callable[[Callable[[], None]], float] = _do_bench):
        self.name = name
        self.bench = bench
        self.best: dict[Hashable, Config] = {}

    def launch(self, key: Hashable, candidates: Sequence[Config], run: Callable[[Config], None],
               tune: bool, force: Config | None = None) -> Config:
        """`force`: run that config instead (tests pinning a config; launches that must not be tuned)."""
        if force is not None:
            run(force)
            return force
        if not candidates:
            raise ValueError(f"{self.name}: no launch config to choose from")
        config = self.best.get(key)
        if config is None:
            config = candidates[0]
            if tune and len(candidates) > 1:
                times = [self.bench(lambda c=c: run(c)) for c in candidates]
                config = candidates[min(range(len(candidates)), key=times.__getitem__)]
                self.best[key] = config
        run(config)
        return config


def unique(configs: Sequence[Config]) -> list[Config]:
    """The configs in order, without repeats (the heuristic one may also be a fixed candidate)."""
    seen: set = set()
    return [c for c in configs if not (c in seen or seen.add(c))]


def tile_candidates(heuristic: Config, rows: int, channels: int, widths: Sequence[int],
                    tiles: Sequence[tuple[int, int]], min_rows: int = 1) -> list[Config]:
    """Candidate (row block, channel block, num_warps) configs of a [rows x channels] tile launch:
    `heuristic` first, then for each channel block in `widths` (capped at the channels, a power of
    two) and each (tile elements, num_warps) in `tiles` the row block tile // width, capped at the
    rows (a power of two) and at least min_rows; without repeats."""
    configs = [heuristic]
    for bc in sorted({min(w, triton.next_power_of_2(max(channels, 1))) for w in widths}):
        for tile, warps in tiles:
            configs.append((max(min_rows, min(triton.next_power_of_2(max(rows, 1)), tile // bc)), bc, warps))
    return unique(configs)
