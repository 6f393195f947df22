"""Observation and action encoders that turn one step into one n_embd-wide token (smart.md §2.2).

The pixel encoder takes uint8 frames and normalises them itself, so batches stay uint8 (4× smaller) until they
reach the device (fixes smart.md §5.3, "heavy samples shipped as float32"). Observation encoders keep PyTorch's
default (Kaiming-uniform) init, as in the original where the CNN was built after ``_init_weights`` ran; an
N(0, 0.02) init would shrink the signal through the ReLU stack.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..envs.dmc import FRAME_SIZE

PIXEL_SIZE = FRAME_SIZE  # frame height = width the CNN is built for: the rendered data's


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Spatial size after an unpadded convolution."""
    return (size - kernel) // stride + 1


# 84 -> 20 -> 9 -> 7: 64 channels * 7 * 7 = 3136 features into the Linear layer.
CNN_FEATURES = 64 * conv_out(conv_out(conv_out(PIXEL_SIZE, 8, 4), 4, 2), 3, 1) ** 2


class PixelEncoder(nn.Module):
    """Nature-DQN CNN: uint8 (N, 3, 84, 84) frames -> (N, n_embd) Tanh latent."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=8, stride=4), nn.ReLU(inplace=True),  # (N, 32, 20, 20)
            nn.Conv2d(32, 64, kernel_size=4, stride=2), nn.ReLU(inplace=True),  # (N, 64, 9, 9)
            nn.Conv2d(64, 64, kernel_size=3, stride=1), nn.ReLU(inplace=True),  # (N, 64, 7, 7)
            nn.Flatten(),  # (N, 3136)
            nn.Linear(CNN_FEATURES, n_embd), nn.Tanh(),  # (N, C)
        )  # fmt: skip

    def forward(self, frames: Tensor) -> Tensor:
        if frames.dtype != torch.uint8:
            # Guards against normalising twice: the data pipeline must hand over raw uint8 frames.
            raise TypeError(f"PixelEncoder expects uint8 frames, got {frames.dtype}")
        # Channels-last: oneDNN's convolutions ran 1.5x faster (forward + backward) on the CPU (issue 16); the
        # layers' outputs follow the input's layout, the weights stay as they are (and as checkpoints store them).
        # Under autocast the frames go straight to its dtype (0..255 are exact in bfloat16): a float32 copy that
        # autocast then casts again was a fifth of a bf16-mixed step at 4 x 128.
        device = frames.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.net[0].weight.dtype
        x = frames.to(dtype, memory_format=torch.channels_last).div_(255.0)  # (N, 3, 84, 84) in [0, 1]
        return self.net(x)  # (N, C)


class StateEncoder(nn.Module):
    """MLP for proprioceptive vectors: (..., obs_dim) -> (..., n_embd) Tanh latent."""

    def __init__(self, obs_dim: int, n_embd: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.GELU(), nn.Linear(hidden, n_embd), nn.Tanh())

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)  # (..., C)


class ActionEncoder(nn.Module):
    """Linear + Tanh action token: (..., action_dim) -> (..., n_embd)."""

    def __init__(self, action_dim: int, n_embd: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(action_dim, n_embd), nn.Tanh())

    def forward(self, actions: Tensor) -> Tensor:
        return self.net(actions)  # (..., C)
