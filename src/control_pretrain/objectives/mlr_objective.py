"""MLR as an offline pretraining objective on the pipeline's pixel windows (issue 17, mlr_mwm.md §D.2(a)): the
trunk's CNN (models/encoders.py, SMART's Nature CNN on single 84 px frames) encodes a cube-masked clip, MLR's
latent reconstruction head (objectives/mlr.py) predicts what a momentum copy of the CNN gives for the unmasked
clip. ``--method mlr`` trains it alone (configs/methods/mlr.yaml); beside SMART's objectives it is one more
weighted loss on the same CNN (it acts on the per-frame latents before the GPT, so it composes cleanly).

Kept from the reference (§A.4): the first ``clip_len`` (16) steps of a window as the clip, temporal blocks of 8,
exactly half the cells hidden per frame, one mask per batch (``per_sample_mask`` draws one per clip), the mask
applied before augmentation and the two clips augmented independently, interleaved state/action tokens with a
shared sinusoidal time index into a 2-block, 1-head bidirectional predictor, 2 - 2cos on every state position,
the momentum encoder and projection moved every 2nd optimiser step with ``tau`` 0.05.

Deviations, forced by the offline data:
- frames are 84 px single RGB frames (SMART's format), not 100 px stacks of 3: a 12 x 12 grid of 7 px cells, and
  a random shift (pad 4 px by edge replication, crop back to 84; DrQ's) instead of the 100 -> 84 crop;
- no "intensity" augmentation: the CNN reads uint8 frames (its input contract), and intensity scales floats;
- actions are the pipeline's padded action vectors (the slot or zero-padded layout of the data), embedded by one
  Linear for every domain, not a per-domain embedding;
- the optimiser is the pretraining module's (AdamW and its schedule), not MLR's own Adam with warm-up and
  inverse-square-root decay; the momentum encoder is this objective's own (forward dynamics' EMA target moves at
  its own rate).

Deviation that stops a collapse (``center_targets``, on by default): the targets minus their batch mean, as DINO
centres its teacher. Offline there is no critic loss to keep the CNN informative, and on cartpole frames SMART's
CNN starts with features that barely vary across frames (std 0.0016), so the reference's loss drives it to one
constant vector within 20 steps (loss 4e-5, feature std 0; docs/results.md). Centred, a constant target is the
zero vector and scores 2, so the CNN must tell frames apart. Validation subtracts the running mean of the training
batches (``center_momentum``), as BatchNorm does. ``center_targets false`` reproduces the reference's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.cube_mask import apply_cube_masks, cube_cell_masks
from ..models.curl_encoder import random_crop
from ..models.ema import ema_update
from ..models.encoders import PixelEncoder
from ..models.trunk import Trunk
from .base import Objective
from .mlr import LatentReconstruction, MLRConfig, mlr_loss


@dataclass
class MLRObjectiveConfig:
    clip_len: int = 16  # K; must not exceed the window and must be whole temporal blocks
    block: int = 8
    grid: int = 12  # 7 px cells on 84 px frames
    ratio: float = 0.5
    shift: int = 4  # random-shift padding (pixels)
    per_sample_mask: bool = False  # the reference draws one mask per batch
    tau: float = 0.05
    ema_every: int = 2  # optimiser steps between momentum updates (the reference's target cadence)
    # Targets minus their batch mean (DINO's centering; the deviation that stops the collapse, module docstring),
    # and the momentum of the running mean validation uses; center_targets false = the reference's targets.
    center_targets: bool = True
    center_momentum: float = 0.9


def random_shift(frames: Tensor, pad: int) -> Tensor:
    """DrQ's shift of uint8 frames (N, C, H, W): replicate-pad ``pad`` pixels, crop back to H x W at a random
    offset per frame."""
    if pad == 0:
        return frames
    H = frames.shape[-1]
    padded = F.pad(frames.float(), (pad, pad, pad, pad), mode="replicate").to(frames.dtype)
    return random_crop(padded, H)


class MaskedLatentReconstructionObjective(Objective):
    name = "mlr"
    uses_transformer = False

    def __init__(self, n_embd: int, action_dim: int, config: MLRObjectiveConfig | None = None, weight: float = 1.0):
        super().__init__(weight)
        self.config = cfg = config or MLRObjectiveConfig()
        cube_cell_masks(1, cfg.clip_len, cfg.block, cfg.grid, cfg.ratio)  # a bad clip/block/ratio fails here
        self.head = LatentReconstruction(n_embd, action_dim, cfg.clip_len, MLRConfig(tau=cfg.tau))
        self.momentum = PixelEncoder(n_embd).requires_grad_(False)  # copied from the trunk's CNN at the first step
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("synced", torch.zeros((), dtype=torch.bool))
        self.register_buffer("target_center", torch.zeros(n_embd))
        self.register_buffer("center_ready", torch.zeros((), dtype=torch.bool))

    def _encode(self, encoder: nn.Module, clips: Tensor) -> Tensor:
        B, K = clips.shape[:2]
        return encoder(random_shift(clips.flatten(0, 1), self.config.shift)).unflatten(0, (B, K))  # (B, K, C)

    def compute(self, model: Trunk, batch: dict[str, Tensor], cache: dict) -> dict[str, Tensor]:
        cfg = self.config
        if model.config.obs_type != "pixels":
            raise ValueError("the MLR objective reconstructs masked pixels: it needs --model.obs_type pixels")
        frames = batch["pixels"]  # (B, T, 3, 84, 84) uint8
        if frames.shape[1] < cfg.clip_len:
            raise ValueError(f"MLR clips of {cfg.clip_len} steps need windows at least that long, got "
                             f"{frames.shape[1]} (--model.context_length)")
        if not bool(self.synced):
            self.momentum.load_state_dict(model.obs_encoder.state_dict())
            self.synced.fill_(True)
        clips, actions = frames[:, : cfg.clip_len], batch["actions"][:, : cfg.clip_len]
        masks = cube_cell_masks(len(clips), cfg.clip_len, cfg.block, cfg.grid, cfg.ratio, cfg.per_sample_mask,
                                device=clips.device)
        online = self._encode(model.obs_encoder, apply_cube_masks(clips, masks))  # mask first, then shift
        with torch.no_grad():
            momentum_latents = self._encode(self.momentum, clips)
        # collapse shows as online features that no longer vary across frames (loss -> 0 with std -> 0)
        feature_std = online.detach().flatten(0, 1).std(0).mean()
        targets = self.head.targets(momentum_latents)  # (B, K, C)
        if cfg.center_targets:
            targets = targets - self._center(targets)
        loss = mlr_loss(self.head.predict(online, actions.to(online.dtype)), targets)
        return {"loss": loss, "metrics": {"feature_std": feature_std}}

    @torch.no_grad()
    def _center(self, targets: Tensor) -> Tensor:
        """What to subtract from the targets (C,), as BatchNorm does its mean: in training this batch's mean (a
        running mean lags a collapse that takes ~10 steps), in evaluation the running mean of the training batches
        (validation batches of neighbouring windows share most of their content, and their own mean removes it)."""
        if not self.training:
            return self.target_center
        batch_mean = targets.flatten(0, 1).mean(0)  # (C,)
        self.target_center.lerp_(batch_mean, 1.0 - self.config.center_momentum if bool(self.center_ready) else 1.0)
        self.center_ready.fill_(True)
        return batch_mean

    def after_optimizer_step(self, model: Trunk) -> None:
        self.steps += 1
        if int(self.steps) % self.config.ema_every == 0:
            ema_update(self.momentum, model.obs_encoder, self.config.tau)
            self.head.update_target()
