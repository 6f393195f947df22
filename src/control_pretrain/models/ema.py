"""Exponential moving averages of weights, the one implementation every target network uses (the control
transformer's forward-dynamics target encoder, SAC's target critics, later MLR's momentum encoder)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, parameter by parameter (buffers are copied as they are).
    Call after an optimiser step, never inside a forward pass (SMART moved its target in validation too,
    smart.md §5.2.7)."""
    for p_target, p in zip(target.parameters(), online.parameters(), strict=True):
        p_target.lerp_(p, tau)
    for b_target, b in zip(target.buffers(), online.buffers(), strict=True):
        b_target.copy_(b)
