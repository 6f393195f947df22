"""MWM's world model (Seo et al. 2022; mlr_mwm.md §B.3): a DreamerV2 RSSM that reads and reconstructs the MAE's
features instead of pixels. Written from the spec in PyTorch, not translated from the TF code.

- input: the MAE encoder's unmasked tokens (B, T, 1 + N, Dm) of every frame, CLS first, computed by the caller
  under ``torch.no_grad`` (§B.3's stop-gradient: no world-model gradient reaches the MAE);
- embedder ("wm_flat_vit"): Linear Dm -> W, fixed 1-D sin-cos positions, 2 pre-LN Blocks (W 128, 4 heads; the
  project's shared ``Block``), a final LayerNorm, mean-pool over tokens -> the W-wide embedding;
- RSSM (rssm.py): discrete 32 x 32 latents, deter 1024, hidden 1024;
- feature decoder: the RSSM feature as one token (Linear -> W), followed by 1 + N learned mask tokens, sin-cos
  positions, 2 Blocks, LayerNorm, a per-token Linear W -> Dm on the mask tokens; the loss is the squared error
  summed over the (1 + N) x Dm features, averaged over batch and time (a unit-variance Gaussian's NLL up to 1/2);
- reward head: ELU MLP (4 x 512) predicting symlog(reward), squared error;
- loss = KL (balanced, scaled, clipped; rssm.py) + feature loss + reward loss.

Time alignment: the replay's row t holds the frame o_t, the action a_t taken from it and the reward r_t that
followed (agents/replay.py). The RSSM reads DreamerV2's convention (row t: o_t with the action that led into it),
so the previous actions are the clip's actions shifted by one, zero at the clip start; the reward head is trained
on the state a reward arrives with: r_t is predicted from the posterior at t + 1 (T - 1 targets per clip).

Deviations:
- every clip starts from the zero initial state (DreamerV2 carries the last batch's posterior into the next random
  batch, which is only meaningful for consecutive chunks);
- [CLS] stays first (the reference moves it last): with a position code per token the order is immaterial;
- the final LayerNorm before pooling (the pre-LN blocks leave the residual stream unnormalised);
- the 50-dim action pad is left out (rssm.py).
The MAE features are computed once per world-model batch under ``no_grad`` (no activations kept, no backward);
caching them across updates would be exact only for a frozen MAE, so it is not done (see agent.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...models.blocks import Block
from ...models.mae import symlog
from ...models.positions import sinusoid
from .behavior import mlp
from .rssm import RSSM, RSSMState


class FlatViTEmbedder(nn.Module):
    """MAE tokens (B, L, Dm) -> one embedding (B, W): Linear, positions, Blocks, LayerNorm, mean over tokens."""

    def __init__(self, token_dim: int, num_tokens: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.register_buffer("pos", sinusoid(num_tokens, width)[None], persistent=False)  # (1, L, W)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.proj(tokens) + self.pos  # (B, L, W)
        for block in self.blocks:
            x = block(x)  # (B, L, W)
        return self.norm(x).mean(1)  # (B, W)


class FeatureDecoder(nn.Module):
    """RSSM features (B, F) -> predicted MAE tokens (B, L, Dm)."""

    def __init__(self, feature_dim: int, token_dim: int, num_tokens: int, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.proj = nn.Linear(feature_dim, width)
        self.mask_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, token_dim)
        self.register_buffer("pos", sinusoid(1 + num_tokens, width)[None], persistent=False)  # (1, 1 + L, W)

    def forward(self, feat: Tensor) -> Tensor:
        B = len(feat)
        x = torch.cat([self.proj(feat)[:, None], self.mask_token.expand(B, self.num_tokens, -1)], 1)  # (B, 1 + L, W)
        x = x + self.pos
        for block in self.blocks:
            x = block(x)  # (B, 1 + L, W)
        return self.head(self.norm(x[:, 1:]))  # (B, L, Dm)


class WorldModel(nn.Module):
    """Embedder, RSSM, feature decoder and reward head, trained by one optimiser on ``loss``."""

    def __init__(self, token_dim: int, num_tokens: int, action_dim: int, width: int = 128, depth: int = 2,
                 heads: int = 4, deter: int = 1024, hidden: int = 1024, stoch: int = 32, discrete: int = 32,
                 units: int = 512, layers: int = 4, kl_balance: float = 0.8, kl_scale: float = 1.0,
                 kl_min: float = 0.01, kl_max: float = 100.0) -> None:
        super().__init__()
        self.embedder = FlatViTEmbedder(token_dim, num_tokens, width, depth, heads)
        self.rssm = RSSM(width, action_dim, deter, hidden, stoch, discrete)
        self.decoder = FeatureDecoder(self.rssm.feature_dim, token_dim, num_tokens, width, depth, heads)
        self.reward_head = mlp(self.rssm.feature_dim, 1, units, layers)
        self.kl = {"balance": kl_balance, "scale": kl_scale, "min_loss": kl_min, "max_loss": kl_max}

    def embed(self, tokens: Tensor) -> Tensor:
        """MAE tokens (..., L, Dm) -> embeddings (..., W)."""
        lead = tokens.shape[:-2]
        return self.embedder(tokens.reshape(-1, *tokens.shape[-2:])).reshape(*lead, -1)  # (..., W)

    def loss(self, tokens: Tensor, actions: Tensor, rewards: Tensor, is_first: Tensor
             ) -> tuple[Tensor, RSSMState, dict[str, float]]:
        """(loss, posterior states (B, T, ...), metrics) of a clip batch: MAE tokens (B, T, L, Dm) (no grad),
        actions (B, T, A) and rewards (B, T) in the replay's alignment (a_t, r_t follow o_t), is_first (B, T)."""
        B, T = tokens.shape[:2]
        embed = self.embed(tokens)  # (B, T, W)
        prev_actions = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1]], 1)  # (B, T, A)
        post, prior = self.rssm.observe(embed, prev_actions, is_first)  # (B, T, ...) each
        feat = self.rssm.feature(post)  # (B, T, F)
        pred = self.decoder(feat.reshape(B * T, -1))  # (B*T, L, Dm)
        feature_loss = (pred - tokens.reshape(B * T, *tokens.shape[2:])).square().sum((-1, -2)).mean()
        reward_pred = self.reward_head(feat[:, 1:]).squeeze(-1)  # (B, T-1): r_t from the posterior at t + 1
        arrives = (~is_first[:, 1:]).to(reward_pred.dtype)  # (B, T-1): no episode start between t and t + 1
        reward_err = (reward_pred - symlog(rewards[:, :-1])).square()  # (B, T-1)
        reward_loss = (reward_err * arrives).sum() / arrives.sum().clamp_min(1.0)
        kl_loss, kl_value = self.rssm.kl_loss(post, prior, **self.kl)
        loss = kl_loss + feature_loss + reward_loss
        metrics = {"wm_loss": loss.item(), "wm_feature_loss": feature_loss.item(),
                   "wm_reward_loss": reward_loss.item(), "wm_kl": kl_value.item(), "wm_kl_loss": kl_loss.item()}
        return loss, post, metrics
