"""What every objective shares: the ``Objective`` base class, the per-step pass cache, masked losses and
``combine_losses`` (smart.md §2.5-2.6).

One training step creates one ``cache = {}`` and hands it to every active objective, so observation encodings
(online and EMA target), action embeddings and whole transformer passes are computed once and reused. With
pass sharing, SMART pretraining costs two transformer passes per step (inverse-mask + masked bidirectional)
instead of the original three (causal + inverse-mask + masked bidirectional, smart.md §2.3).

Action losses average the squared error only over the action dims that belong to the sample's domain
(``batch['action_mask']``). Deviation: the original averaged over the zero-padded dims of other domains too
(smart.md §2.8), which shrinks the loss and its gradient by the fraction of padding.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from torch import Tensor, nn

from ..models.control_transformer import ControlTransformer

PassKind = Literal["causal", "inverse"]


def observation_tokens(model: ControlTransformer, batch: dict[str, Tensor], cache: dict) -> Tensor:
    """Online observation encodings (B, K, C), computed once per step."""
    if "obs_emb" not in cache:
        cache["obs_emb"] = model.encode_observations(batch)
    return cache["obs_emb"]


def target_tokens(model: ControlTransformer, batch: dict[str, Tensor], cache: dict) -> Tensor:
    """EMA-target observation latents (B, K, C), detached, computed once per step."""
    if "target_emb" not in cache:
        cache["target_emb"] = model.encode_target(batch)
    return cache["target_emb"]


def action_tokens(model: ControlTransformer, batch: dict[str, Tensor], cache: dict) -> Tensor:
    """Action embeddings (B, K, C), computed once per step."""
    if "act_emb" not in cache:
        cache["act_emb"] = model.embed_actions(batch["actions"])
    return cache["act_emb"]


def pass_hidden(model: ControlTransformer, batch: dict[str, Tensor], cache: dict, kind: PassKind) -> Tensor:
    """Hidden states (B, 2K, C) of an unmasked-input pass with the ``kind`` attention mask, run once per step."""
    key = f"hidden/{kind}"
    if key not in cache:
        obs, act = observation_tokens(model, batch, cache), action_tokens(model, batch, cache)
        cache[key] = model(obs, act, batch["timesteps"], model.attn_mask(kind))
    return cache[key]


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
    """One training objective with its own heads. ``compute`` returns at least a scalar under ``loss``."""

    name: ClassVar[str] = "objective"  # metric key: train/<name>_loss

    def compute(self, model: ControlTransformer, batch: dict[str, Tensor], cache: dict) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(
        self, model: ControlTransformer, batch: dict[str, Tensor], cache: dict | None = None
    ) -> dict[str, Tensor]:
        return self.compute(model, batch, {} if cache is None else cache)
