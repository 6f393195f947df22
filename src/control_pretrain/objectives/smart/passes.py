"""The per-step pass cache SMART's objectives (and the policy heads) share (smart.md §2.3, §2.5).

Observation encodings (online and EMA target), action embeddings and whole transformer passes are computed once
per step and reused from ``cache``. With pass sharing, SMART pretraining costs two transformer passes per step
(inverse-mask + masked bidirectional) instead of the original three (causal + inverse-mask + masked
bidirectional, smart.md §2.3).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from ...models.trunk import Trunk

CachedPass = Literal["causal", "inverse"]


def observation_tokens(model: Trunk, batch: dict[str, Tensor], cache: dict) -> Tensor:
    """Online observation encodings (B, K, C), computed once per step."""
    if "obs_emb" not in cache:
        cache["obs_emb"] = model.encode_observations(batch)
    return cache["obs_emb"]


def target_tokens(model: Trunk, batch: dict[str, Tensor], cache: dict) -> Tensor:
    """EMA-target observation latents (B, K, C), detached, computed once per step."""
    if "target_emb" not in cache:
        cache["target_emb"] = model.encode_target(batch)
    return cache["target_emb"]


def action_tokens(model: Trunk, batch: dict[str, Tensor], cache: dict) -> Tensor:
    """Action embeddings (B, K, C), computed once per step."""
    if "act_emb" not in cache:
        cache["act_emb"] = model.embed_actions(batch["actions"])
    return cache["act_emb"]


def pass_hidden(model: Trunk, batch: dict[str, Tensor], cache: dict, kind: CachedPass) -> Tensor:
    """Hidden states (B, 2K, C) of an unmasked-input pass with the ``kind`` attention mask, run once per step."""
    key = f"hidden/{kind}"
    if key not in cache:
        obs, act = observation_tokens(model, batch, cache), action_tokens(model, batch, cache)
        cache[key] = model.forward_tokens(obs, act, batch["timesteps"], model.attn_mask(kind))
    return cache[key]
