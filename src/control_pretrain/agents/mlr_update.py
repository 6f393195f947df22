"""MLR's auxiliary update (mlr_mwm.md §A.4, ``update_mtm`` of the reference), for a pixel agent whose encoder it
trains: cube-mask a batch of clips, augment the masked and the unmasked clip independently, encode the masked one
with the online encoder (with gradient) and the unmasked one with the momentum encoder, and step the 2 - 2cos loss
of objectives/mlr.py with its own Adam, schedule and gradient clip.

Reference behaviour kept: its own optimiser over the online encoder and the MLR head (so the encoder is stepped by
two optimisers, the critic's and this one), lr 5e-4 (1e-4 for cheetah), linear warm-up from 5e-4x to 1x over 6,000
updates then x sqrt(6000 / step), global gradient-norm clip 10; one mask per batch and crops per frame by default
(``per_sample_mask``, ``crop_per_frame`` switch to the choices the paper's figure suggests); the targets (momentum
encoder and projection) move in ``update_targets``, which the agent calls with its own target updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.cube_mask import apply_cube_masks, cube_cell_masks
from ..models.curl_encoder import CurlEncoder, intensity, random_crop_clips
from ..models.ema import ema_update
from ..objectives.mlr import LatentReconstruction, MLRConfig

GRAD_CLIP = 10.0


@dataclass
class MLRUpdateConfig:
    clip_len: int = 16  # K = jumps + 1 (the reference's published commands: jumps 15)
    block: int = 8  # temporal block of a cube (4 for cartpole and reacher)
    grid: int = 10  # cells per side of a 100 px frame (10 px cells)
    ratio: float = 0.5
    lr: float = 5e-4
    warmup: int = 6000  # updates of linear warm-up, then inverse-square-root decay
    tau: float = 0.05  # momentum of the target encoder and projection
    per_sample_mask: bool = False  # the reference draws one mask per batch
    crop_per_frame: bool = True  # the reference (kornia) crops every frame of a clip independently


def lr_factor(step: int, warmup: int) -> float:
    """The reference's schedule: 5e-4 -> 1 linearly over ``warmup`` updates, then sqrt(warmup / step)."""
    if step < warmup:
        return 5e-4 + (1.0 - 5e-4) * step / warmup
    return (warmup / max(step, 1)) ** 0.5


class MLRUpdater:
    """Owns the MLR head and its optimiser; trains ``encoder`` (shared with the critic) against ``momentum``."""

    def __init__(self, encoder: CurlEncoder, momentum: CurlEncoder, action_dim: int,
                 cfg: MLRUpdateConfig | None = None, head: MLRConfig | None = None) -> None:
        self.cfg = cfg = cfg or MLRUpdateConfig()
        self.encoder, self.momentum = encoder, momentum.requires_grad_(False)
        device = encoder.fc.weight.device
        self.head = LatentReconstruction(encoder.fc.out_features, action_dim, cfg.clip_len,
                                         head or MLRConfig(tau=cfg.tau)).to(device)
        self.params = [p for p in [*encoder.parameters(), *self.head.parameters()] if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda step: lr_factor(step, cfg.warmup))
        self.num_updates = 0

    def loss(self, clips: torch.Tensor, actions: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """clips (B, K, C, H, W) uint8 renders (100 px), actions (B, K, A) -> the MLR loss (with gradient)."""
        cfg = self.cfg
        B, K = clips.shape[:2]
        masks = cube_cell_masks(B, K, cfg.block, cfg.grid, cfg.ratio, cfg.per_sample_mask, generator,
                                clips.device)  # applied before the crop, as in the reference
        online = random_crop_clips(apply_cube_masks(clips, masks), cfg.crop_per_frame, generator=generator)
        target = random_crop_clips(clips, cfg.crop_per_frame, generator=generator)  # augmented independently
        online = intensity(online.flatten(0, 1).float() / 255.0, generator=generator)  # (B*K, C, 84, 84)
        target = intensity(target.flatten(0, 1).float() / 255.0, generator=generator)
        z = self.encoder.forward_normalized(online).unflatten(0, (B, K))  # (B, K, D)
        with torch.no_grad():
            z_target = self.momentum.forward_normalized(target).unflatten(0, (B, K))
        return self.head.loss(z, actions, z_target)

    def update(self, clips: torch.Tensor, actions: torch.Tensor,
               generator: torch.Generator | None = None) -> dict[str, float]:
        loss = self.loss(clips, actions, generator)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.params, GRAD_CLIP)
        self.opt.step()
        self.schedule.step()
        self.num_updates += 1
        return {"mlr_loss": loss.item(), "mlr_lr": self.schedule.get_last_lr()[0]}

    def update_targets(self) -> None:
        """Momentum encoder and projection <- (1 - tau) target + tau online (the agent calls it every 2 steps)."""
        ema_update(self.momentum, self.encoder, self.cfg.tau)
        self.head.update_target()
