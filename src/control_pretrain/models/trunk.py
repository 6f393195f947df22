"""What objectives may rely on in a trunk: a typing.Protocol, so that objectives depend on this interface and not on
``ControlTransformer`` (the MTM/MaskDP encoder-decoder trunks of the next issue implement it too).

Token layout shared by every interleaved trunk: [o_0, a_0, o_1, a_1, ...], observation tokens at even positions,
action tokens at odd ones (smart.md §2.1).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from torch import Tensor

PassKind = Literal["causal", "inverse", "full"]


@runtime_checkable
class Trunk(Protocol):
    """Encoders + a transformer over interleaved observation/action tokens + an EMA target observation encoder."""

    config: Any  # has at least n_embd, action_dim, context_length, obs_type
    obs_encoder: Any  # the online observation encoder (an nn.Module)
    target_obs_encoder: Any  # its EMA copy, never trained by gradient (an nn.Module)

    def encode_observations(self, batch: dict[str, Tensor]) -> Tensor:
        """Online observation tokens (B, T, C)."""
        ...

    def encode_target(self, batch: dict[str, Tensor]) -> Tensor:
        """EMA-target observation latents (B, T, C), without gradient."""
        ...

    def embed_actions(self, actions: Tensor) -> Tensor:
        """Action tokens (B, Ta, C)."""
        ...

    def attn_mask(self, kind: PassKind) -> Tensor | None:
        """The boolean attention mask of a pass kind (None = bidirectional)."""
        ...

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
        """Hidden states (B, T + Ta, C) of the interleaved tokens; (B, 1, C) of the last one with ``last_only``."""
        ...


def split_tokens(hidden: Tensor) -> tuple[Tensor, Tensor]:
    """(B, L, C) interleaved outputs -> outputs at observation tokens (B, T, C) and action tokens (B, Ta, C)."""
    return hidden[:, 0::2], hidden[:, 1::2]
