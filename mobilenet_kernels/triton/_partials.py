"""Stage 2 of the kernels that emit per-program statistics partials (depthwise_conv2d and
pointwise_conv2d stats epilogues)."""

from __future__ import annotations

import torch


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
