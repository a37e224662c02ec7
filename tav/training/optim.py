"""Optimisers of the training stages: Adam and AdamW with torch's fused kernel wherever it runs.

The fused kernel updates every parameter in one pass, where torch's CPU default loops over the tensors one by
one: for the demo GPT (8 M parameters, most of them the text rows of the embedding and head) that loop took as
long as a third of the forward + backward pass. Results match the per-tensor update to float rounding.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda", "xpu", "mps")  # where this torch has the fused Adam kernels


def _params(params: Iterable) -> list:
    """The parameter tensors of a parameter list or of a list of ``{"params": ...}`` groups."""
    out = []
    for p in params:
        out.extend(p["params"] if isinstance(p, dict) else [p])
    return out


def adam(params: Iterable, lr: float, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0,
         decoupled: bool = False) -> torch.optim.Optimizer:
    """``Adam`` (``decoupled=False``, L2 decay in the gradient) or ``AdamW`` over ``params`` (tensors or groups),
    fused when every parameter is a floating tensor on a device with the fused kernel."""
    params = list(params)
    tensors = _params(params)
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in tensors)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None)
