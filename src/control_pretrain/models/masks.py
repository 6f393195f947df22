"""Attention masks and random token masks for interleaved [o_0, a_0, o_1, a_1, ...] sequences (smart.md §2.4).

Attention masks are boolean (L, L) tensors for ``F.scaled_dot_product_attention``: ``True`` = the query row may
attend to the key column. Bidirectional attention uses no mask at all (``None``). The masks below are
prefix-consistent: the mask for L tokens is the top-left L×L block of the mask for any longer sequence, so a
2K-token mask serves every shorter inference sequence (2T or 2T-1 tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_mask(length: int, device: torch.device | str | None = None) -> Tensor:
    """Lower-triangular (length, length) mask: token i may attend to tokens 0..i."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def inverse_mask(num_steps: int, device: torch.device | str | None = None) -> Tensor:
    """Causal (2K, 2K) mask in which o_{t+1} (index 2t+2) may not attend to a_t (index 2t+1).

    Every token before o_{t+1} is causally blind to a_t as well, so the output at o_{t+1} carries no information
    about a_t, which inverse dynamics then has to infer from (o_t, o_{t+1}).
    """
    mask = causal_mask(2 * num_steps, device)
    obs_rows = torch.arange(2, 2 * num_steps, 2, device=device)  # o_1 .. o_{K-1}
    mask[obs_rows, obs_rows - 1] = False
    return mask


def action_isolation_mask(num_steps: int, device: torch.device | str | None = None) -> Tensor:
    """Bidirectional (2K, 2K) mask in which no action token attends to another step's action token.

    Masked hindsight control with this mask (as yaak-ai/rmind's ``RandomMaskedHindsightControlObjective`` builds
    it) cannot copy or interpolate a masked action from the actions around it: random-policy actions carry no
    information about each other, and a masked action has to be inferred from the observations.
    """
    mask = torch.ones(2 * num_steps, 2 * num_steps, dtype=torch.bool, device=device)
    actions = torch.arange(1, 2 * num_steps, 2, device=device)  # a_0 .. a_{K-1}
    mask[actions[:, None], actions[None, :]] = False
    mask[actions, actions] = True  # a token always sees itself
    return mask


def random_step_mask(
    batch_size: int,
    num_steps: int,
    count: int,
    low: int = 0,
    high: int | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, K) bool mask with ``count`` distinct steps drawn per sample, uniformly from ``low..high-1``.

    ``high`` defaults to K; ``count`` is clipped to the number of candidate steps. Each row gets its own draw.
    """
    high = num_steps if high is None else high
    candidates = max(high - low, 0)
    count = min(max(count, 0), candidates)
    mask = torch.zeros(batch_size, num_steps, dtype=torch.bool, device=device)
    if count == 0:
        return mask
    scores = torch.rand(batch_size, candidates, device=device, generator=generator)  # (B, n)
    chosen = scores.argsort(dim=1)[:, :count] + low  # (B, count)
    return mask.scatter_(1, chosen, True)
