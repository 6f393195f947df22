"""What every objective shares: the ``Objective`` base class, masked action losses and ``combine_losses``
(smart.md §2.5-2.6).

Objectives are written against the ``Trunk`` protocol (models/trunk.py), never against a concrete transformer.
One training step creates one ``cache = {}`` and hands it to every active objective, so encodings and whole
transformer passes are computed once and reused (objectives/smart/passes.py).

Action losses average the squared error only over the action dims that belong to the sample's domain
(``batch['action_mask']``). Deviation: the original averaged over the zero-padded dims of other domains too
(smart.md §2.8), which shrinks the loss and its gradient by the fraction of padding.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from ..models.trunk import Trunk


def action_loss(pred: Tensor, target: Tensor, action_mask: Tensor | None, step_mask: Tensor | None = None) -> Tensor:
    """MSE of (B, T, A) actions over valid dims (action_mask (B, A)) and, if given, selected steps (B, T)."""
    weight = pred.new_ones(pred.shape)  # (B, T, A)
    if action_mask is not None:
        weight = weight * action_mask[:, None, :].to(pred.dtype)
    if step_mask is not None:
        weight = weight * step_mask[:, :, None].to(pred.dtype)
    return ((pred - target).square() * weight).sum() / weight.sum().clamp_min(1.0)


def combine_losses(outputs: dict[str, dict[str, Tensor]], weights: dict[str, float] | None = None) -> Tensor:
    """sum_i w_i * L_i / n over the n objectives in ``outputs`` (smart.md §2.6: the mean of the active terms)."""
    weights = weights or {}
    return sum(weights.get(name, 1.0) * out["loss"] for name, out in outputs.items()) / len(outputs)


class Objective(nn.Module):
    """One training objective with its own heads and loss weight. ``compute`` returns at least a scalar under
    ``loss``; ``after_optimizer_step`` runs once after every optimiser step (target networks move there).

    Every objective is built as ``cls(n_embd, action_dim, config=..., weight=...)``: the first two come from the
    trunk and the data, so a method preset names the class and its ``config``/``weight`` only
    (``ObjectiveFactory``, lit/pretrain_module.py)."""

    name: ClassVar[str] = "objective"  # metric key: train/<name>_loss
    uses_transformer: ClassVar[bool] = True  # False: trains the observation encoder only (MLR)
    uses_obs_encoder: ClassVar[bool] = True  # False: reads nothing of the trunk (the MAE owns its network)

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight  # w_i of combine_losses

    def compute(self, model: Trunk, batch: dict[str, Tensor], cache: dict) -> dict[str, Tensor]:
        raise NotImplementedError

    def after_optimizer_step(self, model: Trunk) -> None:
        """Called by the training loop after the weights moved, never in forward or validation. No-op here."""

    def forward(self, model: Trunk, batch: dict[str, Tensor], cache: dict | None = None) -> dict[str, Tensor]:
        return self.compute(model, batch, {} if cache is None else cache)
