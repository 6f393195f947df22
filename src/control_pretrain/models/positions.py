"""How a token knows where it sits in the window: the position schemes of the control transformer (issue 13).

- ``relative_bias`` (default): a learned additive attention bias per layer, head and token offset (Shaw et al.
  2018, T5's bias without buckets: a window has at most 2K tokens, so every offset gets its own value), in every
  pass. What a token needs (the action between two observations sits at offsets -1 and +1 from them) is the same
  at every slot, so it is learned once for all slots, and every token's attention trains it. The bias is stored
  divided by ``scale`` (``ControlTransformerConfig.relative_bias_scale``): Adam moves a parameter by about lr
  per step whatever its gradient, and a head singles out one of 2K tokens only once its bias is about ln 2K ~ 4
  above the rest, thousands of steps at lr 6e-4. After 1,500 steps of RMHC (studies/rmhc_ablation, validation
  loss / predict-zero loss): synthetic task 62% absolute, 31% unscaled bias, 7% scaled by 10; random walker +
  cheetah data 101%, 91%, 50%.
- ``absolute``: the reference's learned table of 2K token positions added to the inputs (DT-Atari, smart.md
  §2.2). RMHC learns slowly with it: a masked action must learn, separately for each of the 2K slots, where its
  neighbours are, and only masked slots get that gradient (issue 13, "Measured").
- ``rotary``: rotary embeddings of the token index in queries and keys (Su et al., RoFormer 2021), no parameters.
- ``step_type``: a learned table of the K steps plus an observation/action token-type embedding.

``sinusoid`` is the fixed step embedding of the masked trunks (MTM, MaskDP) and of MLR's predictor.

All four are prefix-consistent: the first L tokens of a 2K-token window are encoded the same as a sequence of L
tokens, so rollouts with 2T-1 tokens and T < K see what training saw.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

PositionEncoding = Literal["relative_bias", "absolute", "rotary", "step_type"]
POSITION_ENCODINGS: tuple[str, ...] = ("relative_bias", "absolute", "rotary", "step_type")
LEGACY_POSITION_ENCODING = "absolute"  # what checkpoints written before the setting existed used
ROTARY_BASE = 10000.0  # RoFormer's frequency base
RELATIVE_BIAS_SCALE = 10.0  # stored bias x this = attention bias; see relative_bias above


class RelativePositionBias(nn.Module):
    """One learned scalar per (layer, head, key offset - query offset), zero-initialised (attention starts
    content-only, as with the reference's zero-initialised position table), times ``scale``."""

    def __init__(self, n_layer: int, n_head: int, max_tokens: int, scale: float = RELATIVE_BIAS_SCALE):
        super().__init__()
        self.max_tokens, self.scale = max_tokens, scale
        self.bias = nn.Parameter(torch.zeros(n_layer, n_head, 2 * max_tokens - 1))  # offsets -(L-1) .. L-1

    def forward(self, length: int) -> Tensor:
        """(n_layer, n_head, L, L) additive bias; entry [.., i, j] is the value of offset j - i."""
        pos = torch.arange(length, device=self.bias.device)
        offset = pos[None, :] - pos[:, None] + self.max_tokens - 1  # (L, L) in 0 .. 2L-2
        return self.scale * self.bias[:, :, offset]  # (n_layer, nh, L, L)


class RotaryEmbedding(nn.Module):
    """cos/sin tables of the token index for rotating query/key pairs (RoFormer); derivable, so not stored."""

    def __init__(self, head_dim: int, max_tokens: int):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head size, got {head_dim}")
        inv_freq = ROTARY_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs/2,)
        angles = torch.arange(max_tokens, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (L, hs/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, length: int) -> tuple[Tensor, Tensor]:
        return self.cos[:length], self.sin[:length]  # (L, hs/2) each


def apply_rotary(x: Tensor, rotary: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate each (even, odd) feature pair of x (B, nh, L, hs) by its token's angles."""
    cos, sin = rotary  # (L, hs/2) each
    even, odd = x[..., 0::2], x[..., 1::2]  # (B, nh, L, hs/2) each
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)  # (B, nh, L, hs)


def sinusoid(num_steps: int, width: int, device=None) -> Tensor:
    """(K, C) fixed sinusoidal embedding of steps 0..K-1 (Vaswani et al. 2017), for any K."""
    steps = torch.arange(num_steps, dtype=torch.float32, device=device)[:, None]  # (K, 1)
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / width))
    table = torch.zeros(num_steps, width, device=device)
    table[:, 0::2] = torch.sin(steps * freq)
    table[:, 1::2] = torch.cos(steps * freq[: width // 2])
    return table  # (K, C)


class StepOffsetBias(nn.Module):
    """The masked trunks' relative position bias (issue 14): one learned scalar per (layer, head, query modality,
    key modality, step offset), zero-initialised, times ``scale`` (see ``relative_bias`` above for why the scale).

    Tokens of a masked model are not a contiguous sequence (the MAE encoder sees a per-sample subset), so the bias
    is looked up from each token's (step, modality), not from its index. Offsets beyond ``max_offset`` share the
    outermost value, so any window length works at inference. Why a bias on top of MTM's sinusoid: with absolute
    positions only, inverse dynamics (find o_t and o_{t+1} for a_t) stays at the predict-zero error for 900 steps
    on the synthetic task (tests/test_mtm.py); the bias learns "my step's and the next step's observation" once
    for all slots."""

    def __init__(self, n_layer: int, n_head: int, num_modalities: int, max_offset: int,
                 scale: float = RELATIVE_BIAS_SCALE):
        super().__init__()
        self.max_offset, self.scale = max_offset, scale
        self.bias = nn.Parameter(torch.zeros(n_layer, n_head, num_modalities, num_modalities, 2 * max_offset + 1))

    def forward(self, positions: Tensor, num_modalities: int) -> Tensor:
        """(n_layer, B, n_head, L, L) additive bias for tokens at flat positions (B, L) = step M + modality."""
        step, modality = positions // num_modalities, positions % num_modalities  # (B, L) each
        offset = (step[:, None, :] - step[:, :, None]).clamp(-self.max_offset, self.max_offset) + self.max_offset
        table = self.bias.permute(2, 3, 4, 0, 1)  # (M, M, 2D+1, n_layer, nh)
        bias = table[modality[:, :, None], modality[:, None, :], offset]  # (B, L, L, n_layer, nh)
        return self.scale * bias.permute(3, 0, 4, 1, 2)  # (n_layer, B, nh, L, L)


def sincos_2d(grid_h: int, grid_w: int, width: int, device=None) -> Tensor:
    """(grid_h * grid_w, C) fixed 2-D sin-cos embedding of a row-major token grid (MAE, He et al. 2022; MWM's
    early-conv tokens, mlr_mwm.md §B.2): the first C/2 features encode the row, the last C/2 the column, each as
    ``sinusoid``."""
    if width % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs a width divisible by 4, got {width}")
    rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w)  # (H*W,) row of each token
    cols = torch.arange(grid_w, device=device).repeat(grid_h)  # (H*W,) column of each token
    return torch.cat([sinusoid(grid_h, width // 2, device)[rows], sinusoid(grid_w, width // 2, device)[cols]], dim=1)
