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


@runtime_checkable
class IncrementalPolicy(Policy, Protocol):
    """A ``Policy`` the rollout engine can also drive incrementally (issue 16): ``encode`` maps one step's new
    observations (``observations`` (B, 1, D) with ``domain_id``, or ``pixels`` (B, 1, 3, H, W)) to encodings
    (B, 1, C), which the engine keeps for the whole context, and ``act`` maps a batch whose ``obs_emb`` (B, T, C)
    replaces the observations to the action at the last observation (B, A): the last row of ``__call__``'s
    output, each observation encoded once instead of T times, and only the last token through the last block."""

    def encode(self, batch: dict[str, Tensor]) -> Tensor: ...

    def act(self, batch: dict[str, Tensor]) -> Tensor: ...


class _IncrementalTrunkPolicy(TrunkPolicy):
    """``IncrementalPolicy`` for trunks whose policy objective has ``predict_last_action``. The rollout engine
    prefers ``encode``/``act`` to ``__call__``: a subclass that changes what ``__call__`` computes must change them
    too (or the engine be run with ``incremental=False``)."""

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        self.check_eval_mode()
        return self.model.encode_observations(batch)  # (B, 1, C)

    def act(self, batch: dict[str, Tensor]) -> Tensor:
        self.check_eval_mode()
        return self.objective.predict_last_action(self.model, batch)  # (B, A)


class BehaviorCloningPolicy(_IncrementalTrunkPolicy):
    """Acts from observations and past actions alone (``BehaviorCloningObjective``)."""


class ReturnConditionedPolicy(_IncrementalTrunkPolicy):
    """Also conditioned on the return-to-go, which starts at ``target_return`` and drops by each reward
    (``ReturnConditionedObjective``; smart.md §3.5)."""

    def __init__(self, model: nn.Module, objective: nn.Module, target_return: float,
                 obs_layout: SlotLayout | None = None, action_layout: SlotLayout | None = None) -> None:
        super().__init__(model, objective, obs_layout, action_layout)
        self.target_return = float(target_return)


class MaskedTrajectoryPolicy(TrunkPolicy):
    """A masked trajectory model (MTM) acting by its BC or RCBC query (mtm_maskdp.md §A.7): the current and the
    last ``history`` observations and actions are visible, the current action is hidden and read off. RCBC also
    shows a return token at every step, all set to one constant average reward-to-go ``rtg_avg`` (MTM's
    ``sample_action_bc2``: no decrement bookkeeping); BC shows none. ``history=0`` is MTM's BC, which sees the
    current observation only."""

    def __init__(self, model: nn.Module, objective: nn.Module, rtg_avg: float | None, history: int,
                 obs_layout: SlotLayout | None = None, action_layout: SlotLayout | None = None) -> None:
        super().__init__(model, objective, obs_layout, action_layout)
        self.rtg_avg, self.history = rtg_avg, int(history)

    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        self.check_eval_mode()
        past = batch["actions"]  # (B, T-1, A)
        B, T = past.shape[0], past.shape[1] + 1
        modalities = self.model.modalities
        steps = torch.arange(T, device=past.device)[None, :, None]  # (1, T, 1)
        recent = steps >= T - 1 - self.history  # (1, T, 1): inside the shown history
        visible = torch.zeros(B, T, len(modalities), dtype=torch.bool, device=past.device)
        for i, m in enumerate(modalities):
            shown = {"obs": recent, "act": recent & (steps < T - 1),
                     "rtg": recent if self.rtg_avg is not None else torch.zeros_like(recent)}[m]
            visible[..., i] = shown[..., 0]
        full = {**batch, "actions": torch.cat([past, past.new_zeros(B, 1, past.shape[-1])], dim=1)}  # (B, T, A)
        full["rtg_avg"] = past.new_full((B, T), self.rtg_avg if self.rtg_avg is not None else 0.0)  # (B, T)
        return self.model(full, visible)["act"]  # (B, T, A)
