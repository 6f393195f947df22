"""Policies as the batched rollout engine (``eval/rollout.py`` ``evaluate``) sees them: an object that maps a
context batch to per-token action predictions and says what the engine needs to build that batch.

``Policy`` is the protocol; ``TrunkPolicy`` is a trunk (``ControlTransformer``) plus a policy objective with
``predict_actions(model, batch)`` (objectives/policy.py). ``BehaviorCloningPolicy`` and
``ReturnConditionedPolicy`` are the two finetuning policies (smart.md §3.2); further methods (MTM's BC/RCBC/inverse/
forward modes, MaskDP's goal or prompt policies) add their own classes with other batch keys or conditioning by
subclassing ``TrunkPolicy`` and overriding ``__call__`` (and ``target_return`` if they are return-conditioned).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..data.slots import SlotLayout


@runtime_checkable
class Policy(Protocol):
    """What ``evaluate`` calls. ``__call__`` gets ``observations`` (B, T, D) float32 or ``pixels``
    (B, T, 3, H, W) uint8, ``actions`` (B, T-1, A), ``timesteps`` (B, T) int64, with observations ``domain_id``
    (B,) int64 (the slot of ``obs_layout`` they sit in) and, if ``target_return`` is not None, ``rtg`` (B, T)
    float32, and returns (B, T, A) action predictions, one per observation token."""

    context_length: int  # K, the longest context the policy accepts
    obs_type: str  # "state" (flat observations) or "pixels" (rendered frames)
    target_return: float | None  # the first return-to-go of return-conditioned rollouts; None: no ``rtg`` key
    obs_layout: SlotLayout | None  # where each domain's observation sits (None: the env's own width)
    action_layout: SlotLayout | None  # where each domain's action sits (None: the env's own width)
    device: torch.device  # where the context buffers are kept

    def __call__(self, batch: dict[str, Tensor]) -> Tensor: ...


class TrunkPolicy:
    """A control transformer and a policy objective. Both must be in eval mode when called: dropout would make
    the policy random (the caller switches modes; the policy never changes them behind its back)."""

    target_return: float | None = None

    def __init__(self, model: nn.Module, objective: nn.Module, obs_layout: SlotLayout | None = None,
                 action_layout: SlotLayout | None = None) -> None:
        self.model, self.objective = model, objective
        self.context_length = int(model.config.context_length)
        self.obs_type = str(model.config.obs_type)
        self.obs_layout, self.action_layout = obs_layout, action_layout

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_eval_mode(self) -> None:
        if self.model.training or self.objective.training:
            raise RuntimeError("call .eval() on the model and the objective first: dropout makes the policy random")

    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        self.check_eval_mode()
        return self.objective.predict_actions(self.model, batch)  # (B, T, A)


class BehaviorCloningPolicy(TrunkPolicy):
    """Acts from observations and past actions alone (``BehaviorCloningObjective``)."""


class ReturnConditionedPolicy(TrunkPolicy):
    """Also conditioned on the return-to-go, which starts at ``target_return`` and drops by each reward
    (``ReturnConditionedObjective``; smart.md §3.5)."""

    def __init__(self, model: nn.Module, objective: nn.Module, target_return: float,
                 obs_layout: SlotLayout | None = None, action_layout: SlotLayout | None = None) -> None:
        super().__init__(model, objective, obs_layout, action_layout)
        self.target_return = float(target_return)
