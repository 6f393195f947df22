"""MLR's latent reconstruction head (Yu et al. 2022, ``MTM``/``update_mtm`` of the reference; mlr_mwm.md §A.4):
the pieces between an observation encoder and the loss, shared by the online agent and the offline objective
that issue 17 builds on them.

Online path: encodings of a cube-masked clip (models/cube_mask.py) (B, K, D) and the clip's actions (B, K, A) ->
action tokens Linear(A -> D) -> interleaved [s_0, a_0, s_1, a_1, ...] with one fixed sinusoidal time embedding
per step (s_k and a_k share it) -> a bidirectional predictor (2 pre-LN blocks, width D, 1 head, MLP ratio 2, no
qkv bias, no dropout) -> outputs at the state positions -> projection MLP (D -> 2D -> D) -> prediction MLP (same
shape). Target path: encodings of the unmasked clip by the momentum encoder -> the momentum projection (an EMA
copy of the projection, never trained by gradient). Loss: 2 - 2 cos(prediction, target), averaged over all B x K
state positions (not only the masked cells: every frame is partly masked).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.blocks import Block
from ..models.ema import ema_update
from ..models.positions import sinusoid


@dataclass
class MLRConfig:
    n_layer: int = 2  # predictor blocks
    n_head: int = 1
    mlp_ratio: int = 2
    tau: float = 0.05  # momentum: target <- (1 - tau) target + tau online (0.1 for walker in the reference)


def mlr_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """2 - 2 cos(prediction, target) per position, averaged: 0 when aligned, 2 for orthogonal, 4 opposite."""
    return (2.0 - 2.0 * F.cosine_similarity(prediction, target.detach(), dim=-1)).mean()


def projection_mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))


class LatentReconstruction(nn.Module):
    """Predicts the momentum latents of a clip's frames from the encodings of its masked version and its actions."""

    def __init__(self, latent_dim: int, action_dim: int, clip_len: int, config: MLRConfig | None = None) -> None:
        super().__init__()
        self.config = config or MLRConfig()
        D = latent_dim
        self.action_embed = nn.Linear(action_dim, D)
        self.register_buffer("time_embed", sinusoid(clip_len, D), persistent=False)  # (K, D)
        self.blocks = nn.ModuleList([Block(D, self.config.n_head, 0.0, self.config.mlp_ratio, qkv_bias=False)
                                     for _ in range(self.config.n_layer)])
        self.projection = projection_mlp(D)
        self.prediction = projection_mlp(D)
        self.target_projection = copy.deepcopy(self.projection).requires_grad_(False)

    def predict(self, masked_latents: Tensor, actions: Tensor) -> Tensor:
        """masked_latents (B, K, D), actions (B, K, A) -> predictions (B, K, D) at the state positions."""
        B, K, D = masked_latents.shape
        time = self.time_embed[:K]  # (K, D)
        tokens = torch.stack((masked_latents + time, self.action_embed(actions) + time), dim=2).reshape(B, 2 * K, D)
        for block in self.blocks:
            tokens = block(tokens)  # bidirectional: no mask
        states = tokens[:, 0::2]  # (B, K, D); the reference has no final LayerNorm
        return self.prediction(self.projection(states))

    @torch.no_grad()
    def targets(self, target_latents: Tensor) -> Tensor:
        """Momentum-encoder latents of the unmasked clip (B, K, D) -> targets (B, K, D), no gradient."""
        return self.target_projection(target_latents)

    def loss(self, masked_latents: Tensor, actions: Tensor, target_latents: Tensor) -> Tensor:
        return mlr_loss(self.predict(masked_latents, actions), self.targets(target_latents))

    def update_target(self) -> None:
        """The momentum projection's EMA step (the agent moves the momentum encoder with the same ``tau``)."""
        ema_update(self.target_projection, self.projection, self.config.tau)
