"""The masked trajectory model: a bidirectional encoder-decoder over (observation, return, action) tokens that
reconstructs a window from any visible subset (MTM, Wu et al. ICML 2023; mtm_maskdp.md §A.2-A.3, §D.2).

Tokens: per step t of a K-step window, one token per modality in ``modalities`` (default obs, rtg, act), laid out
step-major, token (t, m) at position t M + m. Each is its encoder's output (observations: the state MLP or the
pixel CNN of models/encoders.py, shared with the control transformer; returns and actions: Linear + Tanh), plus a
learned modality embedding and a fixed sinusoidal embedding of t. The return token is MTM's average reward-to-go
over the true remaining horizon (``batch['rtg_avg']``, data/episodes.py), z-scored with training statistics held
in buffers, like the observations (models/normalizer.py).

Trunk (``mae_split=True``, MAE style): the encoder blocks see only the visible tokens, gathered per sample and
padded to the batch's longest with a key-padding mask; their outputs go back to their positions, every hidden
position gets its modality's learned mask token, and the decoder blocks attend over all K M tokens.
``mae_split=False`` (BERT style): hidden inputs are replaced by the mask tokens and the encoder and decoder blocks
run over all tokens; on an all-visible mask both give the same outputs. Heads, per modality, LayerNorm -> Linear
-> GELU -> Linear: observations (z-scored state, or the EMA target CNN's latent for pixels, as SMART's forward
dynamics target), returns (z-scored), actions (raw, in [-1, 1]).

Deviations from facebookresearch/mtm ``MTM``:
- masks per sample (the reference shares one per batch, §A.11 #1), any window length at inference (the sinusoid
  is computed for the window, not a table of ``traj_length`` rows, §A.11 #13);
- a learned step-offset attention bias per (modality pair, offset) in every block (``step_bias``,
  models/positions.py ``StepOffsetBias``): with the sinusoid alone, inverse dynamics did not learn in our budget;
- our encoders (Tanh latents) instead of one Linear per modality; no per-modality Linear on the decoder side;
- actions are not z-scored (they are bounded already, and the action losses stay comparable with SMART's);
- encoder blocks are named ``blocks`` and the encoders as in the control transformer, so weights move between a
  GPT checkpoint and this model by name (lit/weights.py rules).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .blocks import Block, init_weights
from .dropout import Dropout
from .encoders import ActionEncoder, PixelEncoder, StateEncoder
from .normalizer import ObservationNormalizer
from .positions import StepOffsetBias, sinusoid

MTM_TRUNK = "mtm"  # ``trunk`` in the stored config; the control transformer's configs have none (= "gpt")


@dataclass
class MaskedTrajectoryConfig:
    """Everything needed to rebuild a ``MaskedTrajectoryModel`` (stored in checkpoints via ``to_config``)."""

    obs_type: Literal["pixels", "state"] = "state"
    obs_dim: int = 0  # proprioceptive observation width (state only)
    action_dim: int = 6
    n_embd: int = 128
    n_head: int = 4
    n_enc_layer: int = 2
    n_dec_layer: int = 1
    context_length: int = 8  # K steps per training window (any length works at inference)
    dropout: float = 0.1
    mae_split: bool = True  # encoder on visible tokens only (MAE); False: one stack over all tokens (BERT)
    modalities: tuple[str, ...] = ("obs", "rtg", "act")  # within-step order (models/token_masks.py)
    state_hidden: int = 256
    step_bias: bool = True  # learned step-offset attention bias on top of the sinusoid (models/positions.py)
    trunk: str = MTM_TRUNK

    def __post_init__(self) -> None:
        self.modalities = tuple(self.modalities)
        if self.obs_type not in ("pixels", "state"):
            raise ValueError(f"obs_type must be 'pixels' or 'state', got {self.obs_type!r}")
        if self.obs_type == "state" and self.obs_dim <= 0:
            raise ValueError("obs_type='state' needs obs_dim > 0")
        if not {"obs", "act"} <= set(self.modalities) <= {"obs", "rtg", "act"}:
            raise ValueError(f"modalities must hold obs and act, optionally rtg; got {list(self.modalities)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")


class ReconstructionHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear (MTM's per-modality head)."""

    def __init__(self, n_embd: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(n_embd), nn.Linear(n_embd, n_embd), nn.GELU(),
                                 nn.Linear(n_embd, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MaskedTrajectoryModel(nn.Module):
    def __init__(self, config: MaskedTrajectoryConfig):
        super().__init__()
        self.config = config
        C, M = config.n_embd, len(config.modalities)
        if config.obs_type == "pixels":
            self.obs_encoder: nn.Module = PixelEncoder(C)
        else:
            self.obs_encoder = StateEncoder(config.obs_dim, C, config.state_hidden)
            self.obs_normalizer = ObservationNormalizer(config.obs_dim)
        self.action_encoder = ActionEncoder(config.action_dim, C)
        if "rtg" in config.modalities:
            self.rtg_encoder = ActionEncoder(1, C)
            # z-score of the average return-to-go, set from the training split (lit/mtm_module.py)
            self.register_buffer("rtg_mean", torch.zeros(()))
            self.register_buffer("rtg_std", torch.ones(()))
        self.modality_emb = nn.Parameter(torch.zeros(M, C))  # zero-init as in MTM
        self.decoder_modality_emb = nn.Parameter(torch.zeros(M, C))
        self.mask_tokens = nn.Parameter(torch.zeros(M, C))  # one learned mask token per modality
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(C, config.n_head, config.dropout) for _ in range(config.n_enc_layer)])
        self.ln_f = nn.LayerNorm(C)  # after the encoder (the control transformer's ln_f follows its blocks too)
        self.decoder_blocks = nn.ModuleList([Block(C, config.n_head, config.dropout)
                                             for _ in range(config.n_dec_layer)])
        self.ln_dec = nn.LayerNorm(C)
        if config.step_bias:
            max_offset = config.context_length - 1
            self.encoder_bias = StepOffsetBias(config.n_enc_layer, config.n_head, M, max_offset)
            self.decoder_bias = StepOffsetBias(config.n_dec_layer, config.n_head, M, max_offset)
        obs_out = C if config.obs_type == "pixels" else config.obs_dim
        sizes = {"obs": obs_out, "rtg": 1, "act": config.action_dim}
        self.heads = nn.ModuleDict({m: ReconstructionHead(C, sizes[m]) for m in config.modalities})
        for name, child in self.named_children():
            if name != "obs_encoder":  # observation encoders keep PyTorch's init (models/encoders.py)
                child.apply(init_weights)
        # Pixel targets are an EMA copy's latents (SMART's forward target); state targets are the z-scored inputs.
        self.target_obs_encoder = copy.deepcopy(self.obs_encoder).requires_grad_(False)

    # ---- construction -------------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return asdict(self.config)

    @classmethod
    def from_config(cls, config: dict[str, Any] | MaskedTrajectoryConfig) -> MaskedTrajectoryModel:
        if not isinstance(config, MaskedTrajectoryConfig):
            config = MaskedTrajectoryConfig(**config)
        return cls(config)

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.config.modalities

    def set_rtg_stats(self, mean: float, std: float) -> None:
        self.rtg_mean.fill_(float(mean))
        self.rtg_std.fill_(max(float(std), 1e-6))

    # ---- tokens -------------------------------------------------------------------------------------------
    def _encode_obs(self, encoder: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        if self.config.obs_type == "pixels":
            frames = batch["pixels"]  # (B, K, 3, 84, 84) uint8
            return encoder(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])  # (B, K, C)
        return encoder(self.normalized_obs(batch))  # (B, K, C)

    def normalized_obs(self, batch: dict[str, Tensor]) -> Tensor:
        """z-scored state observations (B, K, D) in each sample's domain slot (models/normalizer.py)."""
        return self.obs_normalizer(batch["observations"], batch.get("domain_id"))

    def normalized_rtg(self, batch: dict[str, Tensor]) -> Tensor:
        """z-scored average returns-to-go (B, K, 1)."""
        return ((batch["rtg_avg"] - self.rtg_mean) / self.rtg_std)[..., None]

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """Input tokens (B, K, M, C) before the modality and time embeddings."""
        parts = {"obs": lambda: self._encode_obs(self.obs_encoder, batch),
                 "rtg": lambda: self.rtg_encoder(self.normalized_rtg(batch)),
                 "act": lambda: self.action_encoder(batch["actions"])}
        return torch.stack([parts[m]() for m in self.modalities], dim=2)  # (B, K, M, C)

    @torch.no_grad()
    def targets(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """What each head reconstructs, (B, K, F_m) per modality, without gradient."""
        out = {"act": batch["actions"]}
        out["obs"] = (self._encode_obs(self.target_obs_encoder, batch) if self.config.obs_type == "pixels"
                      else self.normalized_obs(batch))
        if "rtg" in self.modalities:
            out["rtg"] = self.normalized_rtg(batch)
        return out

    def _positions(self, K: int, device, modality_emb: Tensor) -> Tensor:
        return sinusoid(K, self.config.n_embd, device)[:, None, :] + modality_emb  # (K, M, C)

    # ---- trunk --------------------------------------------------------------------------------------------
    def encode(self, batch: dict[str, Tensor], visible: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Encoder states of the visible tokens: (B, L, C) states, (B, L) flat positions of each state in the
        K M sequence, (B, L) padding flags. ``mae_split=False``: all K M tokens, hidden ones as mask tokens."""
        tokens = self.embed(batch)  # (B, K, M, C)
        B, K, M, C = tokens.shape
        if visible.shape != (B, K, M):
            raise ValueError(f"visible mask {tuple(visible.shape)} does not match the tokens {(B, K, M)}")
        x = tokens + self._positions(K, tokens.device, self.modality_emb)  # (B, K, M, C)
        if not self.config.mae_split:
            hidden = self.mask_tokens + self._positions(K, tokens.device, self.modality_emb)  # (K, M, C)
            x = torch.where(visible[..., None], x, hidden).reshape(B, K * M, C)  # (B, L, C)
            positions = torch.arange(K * M, device=x.device).expand(B, -1)  # (B, L)
            padding = torch.zeros(B, K * M, dtype=torch.bool, device=x.device)
        else:
            flat_visible = visible.reshape(B, K * M)  # (B, KM)
            counts = flat_visible.sum(1)  # (B,)
            length = max(int(counts.max()), 1)
            # Visible tokens first, in their original order (stable sort), then the hidden ones, cut to ``length``.
            positions = (~flat_visible).to(torch.int8).argsort(dim=1, stable=True)[:, :length]  # (B, L)
            x = x.reshape(B, K * M, C).gather(1, positions[..., None].expand(-1, -1, C))  # (B, L, C)
            padding = torch.arange(length, device=x.device)[None, :] >= counts[:, None]  # (B, L)
            # Padding slots carry zeros, never a hidden token's value; slot 0 stays attendable so a sample with
            # nothing visible still has a key (a zero vector) and its attention is defined.
            x = x.masked_fill(padding[..., None], 0.0)
            padding = padding.clone()
            padding[:, 0] = False
        x = self.drop(x)
        # The single stack's positions are the same in every row: one (1, nh, L, L) bias broadcasts over the batch.
        bias_positions = positions if self.config.mae_split else positions[:1]
        biases = self._biases(self.encoder_bias if self.config.step_bias else None, bias_positions, M,
                              len(self.blocks))
        for block, bias in zip(self.blocks, biases):
            x = block(x, key_padding_mask=padding if self.config.mae_split else None, attn_bias=bias)  # (B, L, C)
        return self.ln_f(x), positions, padding

    @staticmethod
    def _biases(table: StepOffsetBias | None, positions: Tensor, num_modalities: int, n_layer: int) -> list:
        """Per layer, the (b, nh, L, L) attention bias of tokens at ``positions`` (b, L), or None."""
        return [None] * n_layer if table is None else list(table(positions, num_modalities))

    def forward(self, batch: dict[str, Tensor], visible: Tensor) -> dict[str, Tensor]:
        """Reconstructions (B, K, F_m) of every modality from the tokens ``visible`` (B, K, M) marks."""
        states, positions, _ = self.encode(batch, visible)  # (B, L, C), (B, L)
        B, K, M = visible.shape
        C = self.config.n_embd
        if self.config.mae_split:  # encoder states back to their positions, mask tokens everywhere else
            hidden = self.mask_tokens.expand(B, K, M, C).reshape(B, K * M, C)  # (B, KM, C)
            index = positions[..., None].expand(-1, -1, C)  # (B, L, C)
            keep = visible.reshape(B, K * M).gather(1, positions)[..., None]  # (B, L, 1): a visible token's state
            x = hidden.scatter(1, index, torch.where(keep, states, hidden.gather(1, index)))  # (B, KM, C)
        else:
            x = states  # (B, KM, C): every position went through the encoder
        x = x.reshape(B, K, M, C) + self._positions(K, x.device, self.decoder_modality_emb)  # (B, K, M, C)
        x = x.reshape(B, K * M, C)
        every = torch.arange(K * M, device=x.device)[None]  # (1, KM): one bias for the whole batch
        biases = self._biases(self.decoder_bias if self.config.step_bias else None, every, M,
                              len(self.decoder_blocks))
        for block, bias in zip(self.decoder_blocks, biases):
            x = block(x, attn_bias=bias)  # (B, KM, C)
        x = self.ln_dec(x).reshape(B, K, M, C)
        return {m: self.heads[m](x[:, :, i]) for i, m in enumerate(self.modalities)}  # (B, K, F_m) each

    def num_params(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"{self.num_params() / 1e6:.2f}M trainable parameters"
