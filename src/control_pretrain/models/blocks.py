"""The one pre-LN transformer block every trunk is built from (GPT-style, smart.md §2.3).

Attention goes through ``F.scaled_dot_product_attention`` with boolean masks instead of materialised -inf scores
(smart.md §5.3). A block takes either an attention mask (L, L), True = may attend (causal / inverse-dynamics
masks), or a key-padding mask (B, L), True = padding that no token may attend to (variable-length token sets of
the encoder-decoder trunks), or both. Position information may enter attention too (models/positions.py): an
additive bias (nh, L, L) on the scores (relative positions) and rotary tables for queries and keys. Submodule names (``attn.c_attn``, ``ln_1``, ``mlp.c_fc`` ...) are those of
the checkpoints written before this file existed, so they still load.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import Dropout, dropout
from .positions import apply_rotary


def init_weights(module: nn.Module) -> None:
    """GPT init: Linear/Embedding weights N(0, 0.02), biases 0, LayerNorm (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def attention_mask(attn_mask: Tensor | None, key_padding_mask: Tensor | None,
                   attn_bias: Tensor | None = None) -> Tensor | None:
    """One SDPA mask: boolean (True = may attend) of shape (L, L), (B, 1, 1, L) or (B, 1, L, L), or None for full
    attention; with ``attn_bias`` (nh, L, L), that bias as a float mask with -inf where attention is forbidden."""
    mask = attn_mask
    if key_padding_mask is not None:
        keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, L)
        mask = keep if attn_mask is None else keep & attn_mask  # (B, 1, L, L)
    if attn_bias is None:
        return mask
    return attn_bias if mask is None else attn_bias.masked_fill(~mask, float("-inf"))  # (nh or B, nh, L, L)


def attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float) -> Tensor:
    """What SDPA's math path computes with ``dropout_p=p``, with the CPU dropout of models/dropout.py on the
    attention weights (SDPA's own draws one random number per weight, the largest dropout cost of a step).
    q, k, v (B, nh, L, hs); mask as for SDPA (boolean True = may attend, or additive float)."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, nh, L, L)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return dropout(scores.softmax(dim=-1), p) @ v  # (B, nh, L, hs)


class SelfAttention(nn.Module):
    """Multi-head self-attention under a boolean mask (see ``attention_mask``)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, qkv_bias: bool = True):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=qkv_bias)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None, rotary: tuple[Tensor, Tensor] | None = None,
                last_query: bool = False) -> Tensor:
        """x (B, T, C) -> (B, T, C); with ``last_query`` only the last token's output (B, 1, C), computed from
        its query alone (rollouts act on the last token: the other queries would be wasted work)."""
        B, T, C = x.shape
        if last_query:
            w, b = self.c_attn.weight, self.c_attn.bias
            q = F.linear(x[:, -1:], w[:C], None if b is None else b[:C])  # (B, 1, C)
            k, v = F.linear(x, w[C:], None if b is None else b[C:]).split(C, dim=2)  # (B, T, C) each
            mask = None if mask is None else mask[..., -1:, :]  # the last query's row
        else:
            q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        Tq = q.shape[1]
        q = q.view(B, Tq, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, Tq, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if rotary is not None:
            q = apply_rotary(q, (rotary[0][T - Tq :], rotary[1][T - Tq :]))  # (B, nh, Tq, hs)
            k = apply_rotary(k, rotary)  # (B, nh, T, hs)
        if self.training and self.dropout > 0 and x.device.type == "cpu":
            y = attention_with_dropout(q, k, v, mask, self.dropout)  # (B, nh, T, hs)
        else:
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, Tq, C)  # (B, Tq, C)
        return self.resid_drop(self.c_proj(y))  # (B, Tq, C)


class MLP(nn.Module):
    """GELU MLP with ``ratio``x expansion (4 in GPT)."""

    def __init__(self, n_embd: int, dropout: float, ratio: int = 4):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, ratio * n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(ratio * n_embd, n_embd)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LN transformer block: x += Attn(LN(x)); x += MLP(LN(x))."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, mlp_ratio: int = 4, qkv_bias: bool = True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = SelfAttention(n_embd, n_head, dropout, qkv_bias)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout, mlp_ratio)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, key_padding_mask: Tensor | None = None,
                attn_bias: Tensor | None = None, rotary: tuple[Tensor, Tensor] | None = None,
                last_query: bool = False) -> Tensor:
        """x (B, L, C); attn_mask (L, L) bool, True = may attend; key_padding_mask (B, L) bool, True = padding;
        attn_bias (nh, L, L) added to the attention scores; rotary: (cos, sin) tables (L, hs/2) for q and k.
        Returns (B, L, C), or with ``last_query`` the last token's output (B, 1, C)."""
        mask = attention_mask(attn_mask, key_padding_mask, attn_bias)
        h = self.attn(self.ln_1(x), mask, rotary, last_query)  # (B, L or 1, C)
        x = (x[:, -1:] if last_query else x) + h
        return x + self.mlp(self.ln_2(x))  # (B, L or 1, C)
