"""Policy heads for downstream control: behaviour cloning and return-conditioned control (SMART ``naive_head``
and ``reward_conditioned_head``, smart.md §2.5, §3.4).

Reference: BC = Linear(C, A) on state_output[t] of the causal pass, MSE against a_t at every step. RTG =
Linear(2C, A) on concat(state_output[t], tanh(Linear(1, C)(rtg_t))). Return-to-go never enters the trunk.

Deviations:
- RTG is divided by ``rtg_scale`` (default 1000, the DMC return range) before its Linear+Tanh. The original fed
  raw returns of 0..1000, which saturate the Tanh (smart.md §5.2.6).
- The MSE averages over the sample's own action dims only (see base.py).

``predict_actions`` serves rollouts: the history may end with an observation (T observations, T-1 actions) and
be shorter than K; it returns a prediction for every observation token and the rollout acts on the last one.
``predict_last_action`` is the rollout engine's fast path (issue 16): the same prediction at the last token only,
from observation encodings the engine computed once per step (``obs_emb``) instead of re-encoding the window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..models.blocks import init_weights
from ..models.trunk import Trunk, split_tokens
from .base import Objective, action_loss
from .smart.passes import pass_hidden


def _state_outputs(model: Trunk, batch: dict[str, Tensor]) -> Tensor:
    """Causal outputs at the observation tokens (B, T, C) of a (possibly 2T-1 token) history."""
    obs = model.encode_observations(batch)  # (B, T, C)
    act = model.embed_actions(batch["actions"])  # (B, T or T-1, C)
    state_out, _ = split_tokens(model.forward_tokens(obs, act, batch["timesteps"], model.attn_mask("causal")))
    return state_out  # (B, T, C)


def _last_state_output(model: Trunk, batch: dict[str, Tensor]) -> Tensor:
    """The causal output at the newest observation (B, C) of a 2T-1 token history given as encodings
    ``obs_emb`` (B, T, C) and ``actions`` (B, T-1, A)."""
    act = model.embed_actions(batch["actions"])  # (B, T-1, C)
    hidden = model.forward_tokens(batch["obs_emb"], act, batch["timesteps"], model.attn_mask("causal"),
                                  last_only=True)  # (B, 1, C)
    return hidden[:, 0]  # (B, C)


class BehaviorCloningObjective(Objective):
    name = "bc"

    def __init__(self, n_embd: int, action_dim: int, weight: float = 1.0):
        super().__init__(weight)
        self.head = nn.Linear(n_embd, action_dim)
        self.apply(init_weights)

    def compute(self, model: Trunk, batch: dict[str, Tensor], cache: dict) -> dict[str, Tensor]:
        state_out, _ = split_tokens(pass_hidden(model, batch, cache, "causal"))  # (B, K, C)
        pred = self.head(state_out)  # (B, K, A)
        return {"loss": action_loss(pred, batch["actions"], batch.get("action_mask"))}

    def predict_actions(self, model: Trunk, batch: dict[str, Tensor]) -> Tensor:
        """(B, T, A) action predictions at every observation token; acts on the last one at rollout."""
        return self.head(_state_outputs(model, batch))

    def predict_last_action(self, model: Trunk, batch: dict[str, Tensor]) -> Tensor:
        """(B, A): ``predict_actions``'s last row, from ``obs_emb`` (see ``_last_state_output``)."""
        return self.head(_last_state_output(model, batch))


@dataclass
class ReturnConditionedConfig:
    rtg_scale: float = 1000.0  # returns-to-go are divided by this before the Linear+Tanh RTG encoder


class ReturnConditionedObjective(Objective):
    name = "rtg"

    def __init__(self, n_embd: int, action_dim: int, config: ReturnConditionedConfig | None = None, weight: float = 1.0):
        super().__init__(weight)
        self.config = config or ReturnConditionedConfig()
        self.rtg_encoder = nn.Linear(1, n_embd)
        self.head = nn.Linear(2 * n_embd, action_dim)
        self.apply(init_weights)

    def _head(self, state_out: Tensor, rtg: Tensor) -> Tensor:
        rtg_emb = torch.tanh(self.rtg_encoder(rtg.unsqueeze(-1) / self.config.rtg_scale))  # (B, T, C)
        return self.head(torch.cat((state_out, rtg_emb), dim=-1))  # (B, T, A)

    def compute(self, model: Trunk, batch: dict[str, Tensor], cache: dict) -> dict[str, Tensor]:
        state_out, _ = split_tokens(pass_hidden(model, batch, cache, "causal"))  # (B, K, C)
        pred = self._head(state_out, batch["rtg"])  # (B, K, A)
        return {"loss": action_loss(pred, batch["actions"], batch.get("action_mask"))}

    def predict_actions(self, model: Trunk, batch: dict[str, Tensor]) -> Tensor:
        """(B, T, A) predictions given ``batch['rtg']`` (B, T), one per observation token."""
        return self._head(_state_outputs(model, batch), batch["rtg"])

    def predict_last_action(self, model: Trunk, batch: dict[str, Tensor]) -> Tensor:
        """(B, A): ``predict_actions``'s last row, from ``obs_emb`` and ``rtg`` (B, T)."""
        return self._head(_last_state_output(model, batch), batch["rtg"][:, -1])
