"""SAC from pixels with a CURL encoder, and with MLR's auxiliary update (``--agent sac|sac_mlr --obs_type pixels``).

The agent of MLR (Yu et al. 2022, ``mtm_sac.py`` of the reference; mlr_mwm.md §A.3-A.4), written on our state SAC
(agents/sac.py: the same losses, with encoders in front of the MLPs):
- critic: a CURL encoder (models/curl_encoder.py) -> twin Q MLPs; its target is a copy of both, the Q heads moved
  with ``tau`` (0.01) and the encoder with ``encoder_tau`` (0.05);
- actor: its own encoder whose convolutions are the critic's (tied) and whose Linear + LayerNorm are its own; the
  actor loss stops the gradient at the convolutions, so only the critic (and MLR) train them;
- observations: frame stacks (9, 100, 100) uint8; each update crops obs and next_obs randomly to 84 (independent
  offsets per sample, as CURL's sampler), acting and evaluation take the centre crop;
- with ``mlr``: after every critic update one MLR update (agents/mlr_update.py) on clips from the replay, with its
  own optimiser over the critic encoder and the MLR head; its momentum encoder and projection move with the other
  targets.

With ``encoder smart`` the pipeline's CNN (models/stacked_frame_encoder.py) replaces the CURL convolutions, so a
pretraining checkpoint's CNN starts the agent (``--encoder_from``; ``freeze_encoder`` keeps it fixed while the
encoders' Linear + LayerNorm heads still learn).

Update order per interaction (the reference's, kept exact and tested): critic -> MLR, then every
``actor_update_every`` (2) updates actor + temperature, and every ``target_update_every`` (2) all targets.

Defaults are the paper configuration (mlr_mwm.md §A.3); agents/pixel_presets.py holds the per-task values
(action repeat, cheetah's learning rates, cartpole/reacher's temporal block, walker's momentum) and the cheaper
presets.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.curl_encoder import CROP, CurlEncoder, center_crop, random_crop
from ..models.ema import ema_update
from ..models.stacked_frame_encoder import StackedFrameEncoder
from .mlr_update import MLRUpdateConfig, MLRUpdater
from .sac import SACAgent, SACConfig


@dataclass
class PixelSACConfig(SACConfig):
    """SAC hyperparameters of MLR's configs (mlr_mwm.md §A.3) plus the encoder and MLR's options."""

    hidden_dim: int = 1024
    batch_size: int = 512
    catch_up: bool = False  # CURL's and MLR's loops make one update per step from init_steps on
    filters: int = 64  # every MLR config; 32 (CURL's default) is the cost preset
    latent_dim: int = 50
    encoder_tau: float = 0.05  # the critic-target encoder's EMA rate (the Q heads use tau)
    render_size: int = 100  # rendered frames, randomly cropped to 84 for updates
    frame_stack: int = 3
    replay_capacity: int = 100_000  # transitions (the reference's)
    encoder: str = "curl"  # curl (the reference) or smart: the pipeline's CNN per frame (--encoder_from a checkpoint)
    frame_embd: int = 256  # the smart encoder's per-frame width (set from the checkpoint by --encoder_from)
    freeze_encoder: bool = False  # keep the convolutions (or the pretrained CNN) fixed; fc + LayerNorm still train
    mlr: bool = False
    mlr_batch: int = 128  # clips per MLR update
    mlr_clip_len: int = 16  # K = jumps + 1 (the published commands: jumps 15)
    mlr_block: int = 8  # temporal block of a cube (4 for cartpole and reacher)
    mlr_grid: int = 10  # cells per side (10 px cells on 100 px frames)
    mlr_ratio: float = 0.5
    mlr_lr: float = 5e-4  # 0.5 x auxiliary lr (cheetah 1e-4)
    mlr_warmup: int = 6000
    mlr_tau: float = 0.05  # momentum of the MLR target encoder and projection (walker 0.1)
    mlr_per_sample_mask: bool = False  # reference: one mask per batch
    mlr_crop_per_frame: bool = True  # reference: kornia crops every frame of a clip independently

    def mlr_update_config(self) -> MLRUpdateConfig:
        return MLRUpdateConfig(clip_len=self.mlr_clip_len, block=self.mlr_block, grid=self.mlr_grid,
                               ratio=self.mlr_ratio, lr=self.mlr_lr, warmup=self.mlr_warmup, tau=self.mlr_tau,
                               per_sample_mask=self.mlr_per_sample_mask, crop_per_frame=self.mlr_crop_per_frame)


@dataclass
class SACMLRConfig(PixelSACConfig):
    """``--agent sac_mlr``: the same agent with MLR on."""

    mlr: bool = True


class PixelSACAgent(SACAgent):
    """SAC on frame stacks ``obs_shape`` = (frame_stack * 3, render_size, render_size) uint8."""

    cfg: PixelSACConfig
    config_class = PixelSACConfig

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, cfg: PixelSACConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        obs_shape = tuple(obs_shape)
        if len(obs_shape) != 3 or min(obs_shape[1:]) < CROP:
            raise ValueError(f"pixel SAC needs frame stacks (C, H, W) of at least {CROP} px, got {obs_shape}")
        super().__init__(obs_shape, action_dim, cfg or PixelSACConfig(), device)
        self.mlr = None
        if self.cfg.mlr:
            momentum = copy.deepcopy(self.encoder)
            self.mlr = MLRUpdater(self.encoder, momentum, action_dim, self.cfg.mlr_update_config())

    def make_encoders(self) -> int:
        cfg = self.cfg
        if cfg.encoder not in ("curl", "smart"):
            raise ValueError(f"encoder must be curl or smart, got {cfg.encoder!r}")
        if cfg.encoder == "smart" and cfg.mlr:
            raise ValueError("MLR augments float frames, which the pipeline's CNN does not read: use encoder curl")
        channels = self.obs_dim[0]

        def build() -> nn.Module:
            if cfg.encoder == "smart":
                return StackedFrameEncoder(channels, cfg.latent_dim, cfg.frame_embd)
            return CurlEncoder(channels, cfg.latent_dim, cfg.filters)

        self.encoder, self.actor_encoder = build().to(self.device), build().to(self.device)
        self.actor_encoder.share_convs_with(self.encoder)
        if cfg.freeze_encoder:
            self.encoder.convs.requires_grad_(False)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        return cfg.latent_dim

    def load_encoder(self, state: dict[str, torch.Tensor]) -> None:
        """Start from pretrained convolutions (``--encoder_from``): the critic's (and so the actor's), its target
        and, with MLR, the momentum encoder."""
        self.encoder.convs.load_state_dict(state)
        self.target_encoder.convs.load_state_dict(state)
        if self.mlr is not None:
            self.mlr.momentum.convs.load_state_dict(state)

    def encoder_parameters(self, role: str) -> list[nn.Parameter]:
        if role == "critic":
            return [p for p in self.encoder.parameters() if p.requires_grad]
        # the actor steps its own Linear + LayerNorm; the tied convolutions belong to the critic
        return [*self.actor_encoder.fc.parameters(), *self.actor_encoder.ln.parameters()]

    def critic_features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(obs)

    def actor_features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor_encoder(obs, detach=True)

    def target_features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.target_encoder(obs)

    def observation_batch(self, obs: np.ndarray) -> torch.Tensor:
        return center_crop(torch.as_tensor(obs, device=self.device).unsqueeze(0))  # (1, C, 84, 84) uint8

    def train_step(self, replay) -> dict[str, float]:
        """One interaction's updates: a SAC batch, and with MLR a batch of clips, from ``replay``."""
        batch = replay.sample(self.batch_size)
        clips = replay.sample_clips(self.cfg.mlr_batch, self.cfg.mlr_clip_len) if self.mlr else None
        return self.update(*batch, clips=clips)

    def update(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
               not_done: torch.Tensor, clips: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
        """critic -> MLR (with ``clips`` = (frames (B, K, C, H, W) uint8, actions (B, K, A))) -> actor and
        temperature every ``actor_update_every`` -> targets every ``target_update_every``."""
        obs, next_obs = random_crop(obs), random_crop(next_obs)  # independent offsets, as CURL's sampler
        info = self.update_critic(obs, action, reward, next_obs, not_done)
        if self.mlr is not None:
            if clips is None:
                raise ValueError("sac_mlr updates need MLR clips (train_step samples them from the replay)")
            info.update(self.mlr.update(*clips))
        if self.num_updates % self.cfg.actor_update_every == 0:
            info.update(self.update_actor(obs))
        if self.num_updates % self.cfg.target_update_every == 0:
            self.update_targets()
        return info

    def update_targets(self) -> None:
        super().update_targets()
        ema_update(self.target_encoder, self.encoder, self.cfg.encoder_tau)
        if self.mlr is not None:
            self.mlr.update_targets()

    def networks(self) -> dict[str, nn.Module]:
        nets = {**super().networks(), "encoder": self.encoder, "actor_encoder": self.actor_encoder,
                "target_encoder": self.target_encoder}
        if self.mlr is not None:
            nets.update(mlr_head=self.mlr.head, mlr_momentum=self.mlr.momentum)
        return nets

    def optimizers(self) -> dict:
        opts = super().optimizers()
        if self.mlr is not None:
            opts.update(mlr=self.mlr.opt, mlr_schedule=self.mlr.schedule)
        return opts

    def state_dict(self, with_optimizers: bool = True) -> dict:
        state = super().state_dict(with_optimizers)
        if self.mlr is not None:
            state["mlr_updates"] = self.mlr.num_updates
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.mlr is not None:
            self.mlr.num_updates = int(state["mlr_updates"])
