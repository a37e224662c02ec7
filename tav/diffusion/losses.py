"""Likelihood terms of the diffusion variational bound: Gaussian KL and the discretised Gaussian likelihood.

Source: the VB terms of Nichol & Dhariwal 2021, improved-diffusion / guided-diffusion ``losses.py``
(https://github.com/openai/guided-diffusion/blob/22e0df8183507e13a7813f8d38d51b072ca1e67c/guided_diffusion/losses.py).
All functions are elementwise on broadcastable tensors and work in any floating dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Half a bin of an 8-bit image scaled to [-1, 1]: 256 levels, 255 gaps of width 2/255.
_HALF_BIN = 1.0 / 255.0
# Log-probability floor: keeps log() finite where the CDF difference underflows.
_LOG_FLOOR = 1e-12


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the first: ``(B, ...) -> (B,)``."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) per element, in nats.

    Shapes broadcast; the result has the broadcast shape.
    """
    return 0.5 * (
        logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2).square() * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Standard normal CDF Φ(x) by the tanh approximation 0.5·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

    The approximation (max error ~3e-4) is kept because the released weights were trained with it.
    """
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-probability (nats, per element) of ``x`` under N(means, exp(log_scales)²) integrated over its bin.

    The bins are those of 8-bit data on [-1, 1]: width 2/255 around each value, with the outermost bins
    (x < -0.999 or x > 0.999) extended to -inf / +inf.

    Note: ``tav``'s data lives in [-0.5, 0.5], so the open-ended edge bins are never used and the bin width is
    twice that of the data's quantisation. The term is kept exactly as upstream because the released weights
    were trained with it (it only enters the t = 0 VB term).

    Args:
        x: data in [-1, 1], any shape.
        means, log_scales: broadcastable to ``x``; ``log_scales`` is the log standard deviation.
    Returns:
        a tensor of ``x``'s shape.
    """
    inv_std = torch.exp(-log_scales)
    centred = x - means
    cdf_upper = approx_standard_normal_cdf(inv_std * (centred + _HALF_BIN))
    cdf_lower = approx_standard_normal_cdf(inv_std * (centred - _HALF_BIN))
    log_below_upper = torch.log(cdf_upper.clamp(min=_LOG_FLOOR))  # the bin (-inf, x + half]
    log_above_lower = torch.log((1.0 - cdf_lower).clamp(min=_LOG_FLOOR))  # the bin [x - half, +inf)
    log_in_bin = torch.log((cdf_upper - cdf_lower).clamp(min=_LOG_FLOOR))
    return torch.where(x < -0.999, log_below_upper, torch.where(x > 0.999, log_above_lower, log_in_bin))
