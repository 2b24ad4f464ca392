"""The statistics epilogue shared by the kernels that emit BatchNorm batch statistics
(depthwise_conv2d and pointwise_conv2d ``_stats``): per-program centred partials, stage 1 in the
kernel (``chan_update``, ``store_centred_partials``), stage 2 here (``merge_centred_partials``).

A program sees its output tile by tile. It centres every value on a per-program shift (its first
tile's mean), so the stored mean keeps the bits the spread needs when |mean| >> std; takes each
tile's (count, mean, M2) by the corrected two-pass formula on the centred values; and merges them
into its own by Chan et al.'s pairwise update. A plain sum rides along for channels holding a NaN or
an Inf (centring turns them into NaN)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def chan_update(count, mean, m2, n_b, sum_u, sum_uu):
    """(count, mean, M2) of a program, merged with one tile of n_b values whose centred values u
    sum to sum_u (and their squares to sum_uu); mean is relative to the program's shift."""
    mean_b = sum_u * (1.0 / tl.maximum(n_b, 1.0))
    m2_b = sum_uu - sum_u * mean_b
    total = count + n_b
    frac = n_b / tl.maximum(total, 1.0)
    delta = mean_b - mean
    return total, mean + delta * frac, m2 + m2_b + delta * delta * count * frac


@triton.jit
def store_centred_partials(stats_ptr, program, C, cols, col_mask, count, shift, mean, m2, plain_sum):
    """Row ``program`` of stats (5, programs along axis 0, C): count, shift, mean - shift, M2, sum."""
    row = program.to(tl.int64) * C + cols
    plane = tl.num_programs(0).to(tl.int64) * C
    tl.store(stats_ptr + row, count, mask=col_mask)
    tl.store(stats_ptr + plane + row, shift, mask=col_mask)
    tl.store(stats_ptr + 2 * plane + row, mean, mask=col_mask)
    tl.store(stats_ptr + 3 * plane + row, m2, mask=col_mask)
    tl.store(stats_ptr + 4 * plane + row, plain_sum, mask=col_mask)


def merge_centred_partials(partial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, biased variance), float64, from ``partial`` (5, programs, C): per-program
    count n_i, shift_i, (mean - shift)_i, M2_i and plain sum. Merged in float64 in a fixed order:
    mean = sum n_i mean_i / n, M2 = sum M2_i + sum n_i (mean_i - mean)^2 (Chan et al.'s pairwise
    update, for all programs at once). A channel whose plain sum is not finite (it holds a NaN or an
    Inf, which centring turns into NaN) gets mean = sum / n and a NaN variance, as in torch."""
    n_i, shift_i, mean_i, m2_i, sum_i = partial.double()
    mean_i = shift_i + mean_i
    n = n_i.sum(dim=0)
    mean = (n_i * mean_i).sum(dim=0) / n
    var = (m2_i.sum(dim=0) + (n_i * (mean_i - mean) ** 2).sum(dim=0)) / n
    plain_mean = sum_i.sum(dim=0) / n
    special = ~torch.isfinite(plain_mean)
    return torch.where(special, plain_mean, mean), torch.where(special, torch.nan, var)
