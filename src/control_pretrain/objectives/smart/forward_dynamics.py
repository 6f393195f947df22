"""Forward dynamics: predict the EMA-target latent of o_{t+1} from the outputs at o_t and a_t (SMART
``forward_pred``, smart.md §2.5).

Reference: head Linear(2C, C) on concat(state_output[t], action_output[t]) of the causal pass, t < K-1, MSE
against the detached target-CNN latent of o_{t+1}; the target encoder is an EMA of the online encoder.

Deviations:
- With ``share_passes=True`` (default) the outputs are read from the inverse-mask pass shared with inverse
  dynamics. There, a_t's output still sees o_0..a_t and nothing later, so the prediction has the same
  information as in the causal pass; it saves one full transformer pass per step. ``share_passes=False`` reads
  the causal pass as the original did.
- The EMA update of the target encoder is this objective's ``after_optimizer_step`` hook (with its own
  ``ema_tau``), run by the training loop after each optimiser step, never in the forward pass or in validation
  (smart.md §5.2.7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...models.blocks import init_weights
from ...models.ema import ema_update
from ...models.trunk import Trunk, split_tokens
from ..base import Objective
from .passes import pass_hidden, target_tokens


@dataclass
class ForwardDynamicsConfig:
    share_passes: bool = True  # read the inverse-mask pass shared with inverse dynamics (False: causal pass)
    ema_tau: float = 0.005  # target <- (1 - tau) target + tau online, once per optimiser step


class ForwardDynamicsObjective(Objective):
    name = "forward"

    def __init__(self, n_embd: int, action_dim: int = 0, config: ForwardDynamicsConfig | None = None,
                 weight: float = 1.0):
        """action_dim: unused (every objective is built with the same two sizes)."""
        super().__init__(weight)
        self.config = config or ForwardDynamicsConfig()
        self.head = nn.Linear(2 * n_embd, n_embd)
        self.apply(init_weights)

    def compute(self, model: Trunk, batch: dict[str, Tensor], cache: dict) -> dict[str, Tensor]:
        hidden = pass_hidden(model, batch, cache, "inverse" if self.config.share_passes else "causal")
        state_out, action_out = split_tokens(hidden)  # (B, K, C) each
        pred = self.head(torch.cat((state_out[:, :-1], action_out[:, :-1]), dim=-1))  # (B, K-1, C)
        target = target_tokens(model, batch, cache)[:, 1:]  # (B, K-1, C), no gradient
        return {"loss": F.mse_loss(pred, target)}

    def after_optimizer_step(self, model: Trunk) -> None:
        ema_update(model.target_obs_encoder, model.obs_encoder, self.config.ema_tau)
