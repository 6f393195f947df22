"""``MWMConfig``: every option of the MWM agent (``--mwm.NAME``). Defaults are the paper's DMC setting
(mlr_mwm.md §B.2-B.5, MWM's ``configs.yaml`` after the August 2022 fixes: KL scale 1.0, actor entropy 1e-4);
presets.py holds the cheaper presets and names every reduction in the run header."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar


@dataclass
class MWMConfig:
    # masked autoencoder (§B.2; models/mae.py)
    mae_width: int = 256  # encoder and decoder width
    mae_depth: int = 4  # encoder blocks
    mae_decoder_depth: int = 3  # decoder blocks
    mae_heads: int = 4
    mask_ratio: float = 0.75  # fraction of the 8x8 early-conv tokens dropped per frame
    mae_reward_wiring: str = "token"  # token: the reward token's state (fixed); patch: the reference's bug (B.8 #2)
    mae_lr: float = 3e-4
    mae_warmup: int = 2500  # MAE updates of linear learning-rate warm-up
    mae_batch: int = 1024  # frames per MAE update (reference: 32 sequences x 32 steps)
    mae_pretrain: int = 5000  # MAE-only updates after the prefill, before any world-model or RL update
    mae_from: str = ""  # start the MAE from this checkpoint (``dmc_pretrain.py --method mae``); its config wins
    freeze_mae: bool = False  # with mae_from: never update the MAE (no MAE pretraining or MAE updates)
    # world model (§B.3)
    wm_width: int = 128  # flat-ViT embedder and feature-decoder width
    wm_depth: int = 2  # blocks of the embedder and of the feature decoder
    wm_heads: int = 4
    deter: int = 1024  # GRU state
    hidden: int = 1024  # RSSM hidden layers
    stoch: int = 32  # categorical latent variables
    discrete: int = 32  # classes per latent variable
    kl_balance: float = 0.8
    kl_scale: float = 1.0
    kl_min: float = 0.01  # the scaled KL is clipped to [kl_min, 100] (wmkl_minloss)
    wm_lr: float = 3e-4
    batch_size: int = 16  # world-model clips per update
    seq_len: int = 50  # steps per clip (inside one episode)
    # reward head, actor and critic MLPs (ELU)
    units: int = 512
    layers: int = 4
    # behaviour (§B.4)
    horizon: int = 15  # imagination steps
    discount: float = 0.99
    return_lambda: float = 0.95
    actor_lr: float = 1e-4
    critic_lr: float = 1e-4
    actor_min_std: float = 0.1
    entropy_scale: float = 1e-4
    slow_critic_every: int = 100  # updates between copies of the critic into the slow critic
    slow_critic_fraction: float = 1.0  # 1: a copy
    # every optimiser: Adam(W) eps, decoupled weight decay on weight matrices, global gradient-norm clip
    adam_eps: float = 1e-5
    weight_decay: float = 1e-6
    grad_clip: float = 100.0
    # schedule (§B.5): policy steps
    init_steps: int = 5000  # prefill with uniformly random actions
    train_every: int = 5  # policy steps between rounds (one MAE update + one world-model + actor-critic update)
    # observations
    render_size: int = 64
    frame_stack: int = 1
    replay_capacity: int = 2_000_000  # rows (the reference's 2e6 steps), capped by the run's length

    # what the online loop reads besides the fields (agents/registry.py): one round per train_every steps
    updates_per_step: ClassVar[float] = 1.0
    catch_up: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.mae_reward_wiring not in ("token", "patch"):
            raise ValueError(f"mae_reward_wiring must be token or patch, got {self.mae_reward_wiring!r}")
        if self.freeze_mae and not self.mae_from:
            raise ValueError("freeze_mae keeps a pretrained MAE fixed: give it with mae_from (or --encoder_from)")
        if self.frame_stack != 1:
            raise ValueError(f"MWM reads single frames (frame_stack 1), got frame_stack {self.frame_stack}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (the reward of a step is read at the next one), got {self.seq_len}")
        for name in ("train_every", "batch_size", "mae_batch", "horizon", "slow_critic_every", "mae_warmup"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: dict | None) -> MWMConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(values or {}) - names
        if unknown:
            raise ValueError(f"unknown MWM option(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**(values or {}))
