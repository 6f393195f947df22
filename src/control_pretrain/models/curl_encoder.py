"""The pixel encoder of CURL and MLR's SAC (Laskin et al. 2020; mlr_mwm.md §A.3), and the crops around it.

Encoder: uint8 frame stacks (N, C, 84, 84) / 255 -> four 3x3 convolutions (the first stride 2, no padding:
84 -> 41 -> 39 -> 37 -> 35) with ReLUs -> flatten -> Linear to ``latent_dim`` (50) -> LayerNorm, used raw (no
tanh). 64 filters as in every MLR config (32, CURL's own default, halves the cost; mlr_mwm.md §C.2). Linear layers
are initialised orthogonally, convolutions delta-orthogonally, as in the reference. The actor's encoder shares
the critic's convolutions (``share_convs_with``) and keeps its own Linear and LayerNorm; ``detach=True`` stops the
gradient at the convolutions (the actor never trains them).

Crops: random 84x84 crops of 100x100 renders for training, a centre crop for acting and evaluation. Offsets are
drawn from 0..H-84 inclusive; the reference's ``randint(0, 16)`` never picked offset 16 (mlr_mwm.md §A.7.8).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .encoders import conv_out

CROP = 84  # the encoder's input size
# 84 -> 41 (3x3, stride 2) -> 39 -> 37 -> 35 (3x3, stride 1, no padding)
FEATURE_SIZE = conv_out(conv_out(conv_out(conv_out(CROP, 3, 2), 3, 1), 3, 1), 3, 1)


def delta_orthogonal_(conv: nn.Conv2d) -> None:
    """Zero kernel except an orthogonal matrix at its centre tap (Xiao et al. 2018), bias 0."""
    with torch.no_grad():
        conv.weight.zero_()
        centre = conv.weight.shape[-1] // 2
        nn.init.orthogonal_(conv.weight[:, :, centre, centre], gain=nn.init.calculate_gain("relu"))
        conv.bias.zero_()


class CurlEncoder(nn.Module):
    """(N, C, 84, 84) uint8 -> (N, latent_dim) float."""

    def __init__(self, in_channels: int = 9, latent_dim: int = 50, filters: int = 64) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, filters, 3, stride=2), nn.ReLU(inplace=True),
            nn.Conv2d(filters, filters, 3), nn.ReLU(inplace=True),
            nn.Conv2d(filters, filters, 3), nn.ReLU(inplace=True),
            nn.Conv2d(filters, filters, 3), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.fc = nn.Linear(filters * FEATURE_SIZE**2, latent_dim)
        self.ln = nn.LayerNorm(latent_dim)
        for m in self.convs:
            if isinstance(m, nn.Conv2d):
                delta_orthogonal_(m)
        nn.init.orthogonal_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def share_convs_with(self, other: CurlEncoder) -> None:
        """Use ``other``'s convolution weights (the actor's encoder ties to the critic's)."""
        self.convs = other.convs

    def forward(self, frames: Tensor, detach: bool = False) -> Tensor:
        """uint8 frames (N, C, 84, 84) -> (N, latent_dim)."""
        if frames.dtype != torch.uint8:
            raise TypeError(f"CurlEncoder expects uint8 frames, got {frames.dtype} (forward_normalized takes floats)")
        return self.forward_normalized(frames.to(self.fc.weight.dtype) / 255.0, detach)

    def forward_normalized(self, x: Tensor, detach: bool = False) -> Tensor:
        """Frames already in [0, 1] (after a float augmentation such as ``intensity``) -> (N, latent_dim)."""
        if x.shape[-2:] != (CROP, CROP):
            raise ValueError(f"CurlEncoder expects {CROP}x{CROP} frames (crop first), got {tuple(x.shape[-2:])}")
        h = self.convs(x).flatten(1)  # (N, F*35*35)
        if detach:
            h = h.detach()
        return self.ln(self.fc(h))  # (N, latent_dim)


def random_crop(frames: Tensor, size: int = CROP, generator: torch.Generator | None = None) -> Tensor:
    """An independent random ``size`` x ``size`` crop of each of ``frames`` (N, C, H, W); offsets 0..H-size."""
    N, _, H, W = frames.shape
    ys = torch.randint(0, H - size + 1, (N,), generator=generator).tolist()
    xs = torch.randint(0, W - size + 1, (N,), generator=generator).tolist()
    # one slice per frame, copied by one stack: 15x faster on a CPU than a gather with index tensors
    return torch.stack([f[:, y : y + size, x : x + size] for f, y, x in zip(frames, ys, xs, strict=True)])


def random_crop_clips(clips: Tensor, per_frame: bool = True, size: int = CROP,
                      generator: torch.Generator | None = None) -> Tensor:
    """Random crops of clips (B, K, C, H, W): per frame (the reference, kornia's default ``same_on_batch=False``)
    or one crop for every frame of a clip (``per_frame=False``, crop-consistent in time)."""
    B, K = clips.shape[:2]
    if per_frame:
        return random_crop(clips.flatten(0, 1), size, generator).unflatten(0, (B, K))
    C, H, W = clips.shape[2:]
    crops = random_crop(clips.permute(0, 2, 1, 3, 4).reshape(B, C * K, H, W), size, generator)  # same per clip
    return crops.view(B, C, K, size, size).permute(0, 2, 1, 3, 4)  # (B, K, C, size, size)


def center_crop(frames: Tensor, size: int = CROP) -> Tensor:
    """The centre ``size`` x ``size`` crop of frames (..., H, W)."""
    H, W = frames.shape[-2:]
    top, left = (H - size) // 2, (W - size) // 2
    return frames[..., top : top + size, left : left + size]


def intensity(x: Tensor, scale: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """MLR's "intensity" augmentation of float frames (N, ...): each frame times 1 + scale * n, n ~ N(0, 1)
    clipped to [-2, 2] (mlr_mwm.md §A.3)."""
    noise = torch.randn((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator).clamp(-2.0, 2.0).to(x.device)
    return x * (1.0 + scale * noise)
