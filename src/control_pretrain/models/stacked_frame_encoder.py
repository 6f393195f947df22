"""The pipeline's pixel encoder (SMART's Nature CNN, models/encoders.py ``PixelEncoder``) inside a pixel SAC agent,
so a pretrained checkpoint's CNN can be reused online (``dmc_online.py --encoder_from CKPT``): the CNN encodes each
RGB frame of a stack (weights shared across frames), the frame latents are concatenated and a Linear + LayerNorm
head (the CURL encoder's) maps them to ``latent_dim``. The same interface as models/curl_encoder.py's
``CurlEncoder``: ``convs`` is the part the actor ties to the critic's (here the whole CNN), ``fc`` and ``ln`` are
each encoder's own."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .encoders import PixelEncoder


class StackedFrameEncoder(nn.Module):
    """(N, 3 * frames, 84, 84) uint8 -> (N, latent_dim)."""

    def __init__(self, in_channels: int = 9, latent_dim: int = 50, frame_embd: int = 256) -> None:
        super().__init__()
        if in_channels % 3:
            raise ValueError(f"a stack of RGB frames has a multiple of 3 channels, got {in_channels}")
        self.frames = in_channels // 3
        self.convs = PixelEncoder(frame_embd)
        self.fc = nn.Linear(self.frames * frame_embd, latent_dim)
        self.ln = nn.LayerNorm(latent_dim)

    def share_convs_with(self, other: StackedFrameEncoder) -> None:
        self.convs = other.convs

    def forward(self, frames: Tensor, detach: bool = False) -> Tensor:
        N = frames.shape[0]
        per_frame = frames.reshape(N * self.frames, 3, *frames.shape[-2:])  # oldest frame first
        h = self.convs(per_frame).reshape(N, -1)  # (N, frames * frame_embd)
        if detach:
            h = h.detach()
        return self.ln(self.fc(h))

    def forward_normalized(self, x: Tensor, detach: bool = False) -> Tensor:
        raise TypeError("the pipeline's CNN reads uint8 frames; MLR's float augmentation needs --sac_mlr.encoder curl")


def pretrained_cnn_state(ckpt: dict, path: str) -> tuple[dict[str, torch.Tensor], int]:
    """The observation CNN of a pretraining checkpoint's dict (``model.obs_encoder.*``) and its width."""
    from ..errors import CheckpointError

    prefix = "model.obs_encoder."
    state = {k[len(prefix):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)}
    if "net.0.weight" not in state:
        raise CheckpointError(f"--encoder_from {path}: no pixel observation encoder (model.obs_encoder.net.*) in "
                              "it. Expected a checkpoint of `dmc_pretrain.py --obs_type pixels` (any --method).")
    return state, int(state["net.7.weight"].shape[0])
