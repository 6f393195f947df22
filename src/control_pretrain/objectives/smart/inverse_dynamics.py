"""Inverse dynamics: predict a_t from the outputs at o_t and at o_{t+1}, where o_{t+1}'s output has not seen a_t
(SMART ``inverse_pred``, smart.md §2.4-2.5).

Reference: head Linear(2C, A) on concat(state_output[t] of the causal pass, output at o_{t+1} of the inverse-mask
pass), t < K-1, MSE against a_t.

Deviations:
- With ``share_passes=True`` (default) state_output[t] is also read from the inverse-mask pass (shared with
  forward dynamics), so the step needs one pass instead of two. Neither output sees a_t in either pass.
  ``share_passes=False`` reads state_output[t] from the causal pass as the original did.
- The MSE averages over the sample's own action dims only (see objectives/base.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...models.blocks import init_weights
from ...models.trunk import Trunk, split_tokens
from ..base import Objective, action_loss
from .passes import pass_hidden


@dataclass
class InverseDynamicsConfig:
    share_passes: bool = True  # read o_t from the inverse-mask pass too (False: from the causal pass)


class InverseDynamicsObjective(Objective):
    name = "inverse"

    def __init__(self, n_embd: int, action_dim: int, config: InverseDynamicsConfig | None = None, weight: float = 1.0):
        super().__init__(weight)
        self.config = config or InverseDynamicsConfig()
        self.head = nn.Linear(2 * n_embd, action_dim)
        self.apply(init_weights)

    def compute(self, model: Trunk, batch: dict[str, Tensor], cache: dict) -> dict[str, Tensor]:
        next_out, _ = split_tokens(pass_hidden(model, batch, cache, "inverse"))  # (B, K, C)
        state_out = next_out
        if not self.config.share_passes:
            state_out, _ = split_tokens(pass_hidden(model, batch, cache, "causal"))  # (B, K, C)
        pred = self.head(torch.cat((state_out[:, :-1], next_out[:, 1:]), dim=-1))  # (B, K-1, A)
        return {"loss": action_loss(pred, batch["actions"][:, :-1], batch.get("action_mask"))}
