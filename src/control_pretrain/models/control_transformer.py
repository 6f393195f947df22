"""The control transformer: a GPT trunk over interleaved observation/action tokens (SMART, smart.md §2.1-2.4).

The trunk is reward-free: tokens are [o_0, a_0, o_1, a_1, ..., o_{K-1}, a_{K-1}] (2K tokens), return-to-go only
enters at a policy head (objectives/policy.py). Pretraining and policy heads live in objectives/, one class
each; this file only holds the encoders, the trunk and the EMA target encoder; the blocks are models/blocks.py.

Deviations from the reference (microsoft/smart mingpt.py):
- Timestep embedding: a ``max_timestep``-row table indexed by each step's own in-episode timestep, instead of
  one 10,001-row table indexed by the window's first step and broadcast to every token (smart.md §2.2, §5.3).
- Positions: by default a learned relative-position attention bias per layer, head and token offset in every pass
  (models/positions.py) instead of the learned table of 2K token positions added to the inputs (smart.md §2.2),
  with which RMHC hardly learned (issue 13; docs/training.md, "RMHC ablation"). ``position_encoding='absolute'``
  reproduces the reference table (``pos_emb``, the name older checkpoints use); ``rotary`` and ``step_type``
  (per-step table + token-type embedding) are the other schemes the ablation compared.
- Masked inputs use a learned ``mask_token`` instead of the constant -1 embedding (used by RMHC).
- ``F.scaled_dot_product_attention`` with boolean masks instead of materialised -inf attention (§5.3).
- The EMA target encoder is updated by the forward-dynamics objective's ``after_optimizer_step`` hook with
  ``models/ema.py``, never inside ``forward`` (the original also moved it during validation, smart.md §5.2.7).
- Observation encoders keep PyTorch's default init as in the original; everything else is N(0, 0.02).
- State observations are normalised per dimension inside the model (``obs_normalizer``, from the training data;
  the original fed raw vectors); identity with ``--data.normalize_obs false``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Block, init_weights
from .dropout import Dropout
from .encoders import ActionEncoder, PixelEncoder, StateEncoder
from .masks import causal_mask, inverse_mask
from .normalizer import ObservationNormalizer
from .positions import (
    LEGACY_POSITION_ENCODING,
    POSITION_ENCODINGS,
    RELATIVE_BIAS_SCALE,
    PositionEncoding,
    RelativePositionBias,
    RotaryEmbedding,
)
from .trunk import PassKind, split_tokens

__all__ = ["ControlTransformer", "ControlTransformerConfig", "init_weights", "param_groups", "split_tokens",
           "stored_model_config"]


@dataclass
class ControlTransformerConfig:
    """Everything needed to rebuild a ``ControlTransformer`` (stored in checkpoints via ``to_config``)."""

    obs_type: Literal["pixels", "state"] = "pixels"  # pixel frames (uint8) or proprioceptive vectors
    obs_dim: int = 0  # proprioceptive observation width (state only)
    action_dim: int = 6  # action width (the concatenated per-domain slot layout when multi-domain)
    n_layer: int = 8  # transformer blocks
    n_head: int = 8  # attention heads per block
    n_embd: int = 256  # token width C
    context_length: int = 30  # K steps per window, 2K tokens
    max_timestep: int = 1024  # rows of the per-step timestep table; larger timesteps share the last row
    dropout: float = 0.1  # embedding, attention and residual dropout
    state_hidden: int = 256  # hidden width of the state encoder MLP
    # how tokens know their place in the window (models/positions.py); "absolute" is the reference's 2K table
    position_encoding: PositionEncoding = "relative_bias"
    relative_bias_scale: float = RELATIVE_BIAS_SCALE  # relative_bias only: attention bias = this x stored value

    def __post_init__(self) -> None:
        if self.obs_type not in ("pixels", "state"):
            raise ValueError(f"obs_type must be 'pixels' or 'state', got {self.obs_type!r}")
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding must be one of {POSITION_ENCODINGS}, got {self.position_encoding!r}")
        if self.obs_type == "state" and self.obs_dim <= 0:
            raise ValueError("obs_type='state' needs obs_dim > 0")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")


def stored_model_config(stored: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``model_config`` with the settings added since it was written filled in as they were then
    (``position_encoding``: the reference's absolute table); an empty one (not our checkpoint) stays empty."""
    return {"position_encoding": LEGACY_POSITION_ENCODING, **stored} if stored else {}


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on Linear/Conv weight matrices only; biases, LayerNorms, embeddings, learned tokens
    (``pos_emb``, ``mask_token``) get none (smart.md §2.9). Frozen parameters (the EMA target) are left out."""
    decay, no_decay, seen = [], [], set()
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_matrix = name == "weight" and isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
            (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ControlTransformer(nn.Module):
    """Encoders + GPT trunk + EMA target observation encoder (implements models/trunk.py ``Trunk``). Heads live in
    objectives/."""

    def __init__(self, config: ControlTransformerConfig):
        super().__init__()
        self.config = config
        C, K = config.n_embd, config.context_length
        if config.obs_type == "pixels":
            self.obs_encoder: nn.Module = PixelEncoder(C)
        else:
            self.obs_encoder = StateEncoder(config.obs_dim, C, config.state_hidden)
            # Per-dimension statistics in each sample's domain slot, before the online and the target encoder;
            # identity until the LightningModule sets them (models/normalizer.py, data/obs_stats.py).
            self.obs_normalizer = ObservationNormalizer(config.obs_dim)
        self.action_encoder = ActionEncoder(config.action_dim, C)
        # Per-step timestep table (fix of smart.md §2.2: the original indexed one 10,001-row table by the
        # window's first timestep only, so tokens did not know their own step and 97% of the rows were unused).
        self.timestep_emb = nn.Embedding(config.max_timestep, C)
        self._build_positions()
        self.mask_token = nn.Parameter(torch.zeros(C))  # replaces masked input tokens (RMHC)
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(C, config.n_head, config.dropout) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(C)
        for name, child in self.named_children():
            if name != "obs_encoder":
                child.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)
        self.target_obs_encoder = copy.deepcopy(self.obs_encoder).requires_grad_(False)
        # Derivable, so not stored in checkpoints (persistent=False).
        self.register_buffer("causal_mask", causal_mask(2 * K), persistent=False)
        self.register_buffer("inverse_mask", inverse_mask(K), persistent=False)

    # ---- construction -------------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return asdict(self.config)

    @classmethod
    def from_config(cls, config: dict[str, Any] | ControlTransformerConfig) -> ControlTransformer:
        """From a config or a checkpoint's ``model_config`` (older ones get the settings they were trained with,
        ``stored_model_config``)."""
        if not isinstance(config, ControlTransformerConfig):
            config = ControlTransformerConfig(**stored_model_config(config))
        return cls(config)

    # ---- encoders -----------------------------------------------------------------------------------------
    def _encode(self, encoder: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        if self.config.obs_type == "pixels":
            frames = batch["pixels"]  # (B, T, 3, 84, 84) uint8
            return encoder(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])  # (B, T, C)
        obs = self.obs_normalizer(batch["observations"], batch.get("domain_id"))  # (B, T, D)
        return encoder(obs)  # (B, T, C)

    def encode_observations(self, batch: dict[str, Tensor]) -> Tensor:
        """Online observation tokens (B, T, C) from ``batch['pixels']`` or ``batch['observations']``."""
        return self._encode(self.obs_encoder, batch)

    @torch.no_grad()
    def encode_target(self, batch: dict[str, Tensor]) -> Tensor:
        """EMA-target observation latents (B, T, C), without gradient (forward-dynamics targets)."""
        return self._encode(self.target_obs_encoder, batch)

    def embed_actions(self, actions: Tensor) -> Tensor:
        return self.action_encoder(actions)  # (B, Ta, C)

    def attn_mask(self, kind: PassKind) -> Tensor | None:
        """The 2K-token mask of a pass kind (``forward_tokens`` cuts it to shorter sequences); full = None."""
        return {"causal": self.causal_mask, "inverse": self.inverse_mask, "full": None}[kind]

    # ---- positions (models/positions.py) ------------------------------------------------------------------
    def _build_positions(self) -> None:
        """The parameters of the configured scheme; ``pos_emb`` keeps the name of older checkpoints."""
        cfg, K = self.config, self.config.context_length
        scheme = cfg.position_encoding
        if scheme == "absolute":
            self.pos_emb = nn.Parameter(torch.zeros(1, 2 * K, cfg.n_embd))  # zero-init, as in the original
        elif scheme == "step_type":
            self.step_pos_emb = nn.Parameter(torch.zeros(1, K, cfg.n_embd))  # zero-init, as ``absolute``
            self.token_type_emb = nn.Parameter(torch.zeros(2, cfg.n_embd))  # observation, action
        elif scheme == "relative_bias":
            self.rel_pos_bias = RelativePositionBias(cfg.n_layer, cfg.n_head, 2 * K, cfg.relative_bias_scale)
        else:  # rotary
            self.rotary = RotaryEmbedding(cfg.n_embd // cfg.n_head, 2 * K)

    def _input_positions(self, obs_tok: Tensor, act_tok: Tensor) -> tuple[Tensor, Tensor]:
        """Observation and action tokens (B, T, C) plus the input-side position embeddings of the scheme."""
        scheme, T = self.config.position_encoding, obs_tok.shape[1]
        if scheme == "absolute":
            return obs_tok + self.pos_emb[:, 0 : 2 * T : 2], act_tok + self.pos_emb[:, 1 : 2 * T : 2]
        if scheme == "step_type":
            steps = self.step_pos_emb[:, :T]  # (1, T, C)
            return obs_tok + steps + self.token_type_emb[0], act_tok + steps + self.token_type_emb[1]
        return obs_tok, act_tok  # the other schemes act inside attention

    # ---- trunk --------------------------------------------------------------------------------------------
    def forward_tokens(
        self,
        obs_emb: Tensor,
        act_emb: Tensor,
        timesteps: Tensor,
        attn_mask: Tensor | None = None,
        obs_replace: Tensor | None = None,
        act_replace: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Run the trunk on interleaved tokens and return the hidden states after ``ln_f``.

        obs_emb (B, T, C), act_emb (B, Ta, C) with Ta = T (2T tokens) or Ta = T-1 (2T-1 tokens, the sequence ends
        with the newest observation, as at rollout time), timesteps (B, T) in-episode steps, T <= K.
        attn_mask: bool (L, L) or larger (its top-left L×L block is used; the causal and inverse masks are
        prefix-consistent), or None for bidirectional attention. obs_replace (B, T) / act_replace (B, Ta): tokens
        whose input embedding is replaced by ``mask_token`` (before timestep and position embeddings are added).
        Returns (B, T + Ta, C), or with ``last_only`` the last token's (B, 1, C): the last block then computes
        that token alone (rollouts, which act on the newest observation).
        """
        B, T, C = obs_emb.shape
        Ta = act_emb.shape[1]
        if Ta not in (T, T - 1) or T > self.config.context_length:
            raise ValueError(f"got {T} observations and {Ta} actions; need Ta in (T, T-1) and T <= K")
        if obs_replace is not None:
            obs_emb = torch.where(obs_replace.unsqueeze(-1), self.mask_token, obs_emb)  # (B, T, C)
        if act_replace is not None:
            act_emb = torch.where(act_replace.unsqueeze(-1), self.mask_token, act_emb)  # (B, Ta, C)
        step_emb = self.timestep_emb(timesteps.clamp(0, self.config.max_timestep - 1))  # (B, T, C)
        obs_tok = obs_emb + step_emb  # (B, T, C)
        act_tok = F.pad(act_emb + step_emb[:, :Ta], (0, 0, 0, T - Ta))  # (B, T, C), zero row if Ta = T-1
        obs_tok, act_tok = self._input_positions(obs_tok, act_tok)  # (B, T, C) each
        L = T + Ta
        x = torch.stack((obs_tok, act_tok), dim=2).reshape(B, 2 * T, C)[:, :L]  # (B, L, C)
        x = self.drop(x)  # (B, L, C)
        if attn_mask is not None:
            attn_mask = attn_mask[:L, :L]
        bias = self.rel_pos_bias(L) if self.config.position_encoding == "relative_bias" else None  # (nl, nh, L, L)
        rotary = self.rotary(L) if self.config.position_encoding == "rotary" else None
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, attn_bias=None if bias is None else bias[i], rotary=rotary,
                      last_query=last_only and i == last)  # (B, L, C), (B, 1, C) after a last_query block
        return self.ln_f(x)  # (B, L or 1, C)

    forward = forward_tokens

    def num_params(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"{self.num_params() / 1e6:.2f}M trainable parameters"
