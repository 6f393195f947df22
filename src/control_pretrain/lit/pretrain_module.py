"""SMART multi-task pretraining (smart.md §2.6-2.7): forward dynamics + inverse dynamics + random masked hindsight
control on a reward-free control transformer, with the mask-size curriculum over epochs.

Deviations from microsoft/smart ``MultiTaskCTLitModule`` (each also noted where it lives):
- two transformer passes per step instead of three (``share_passes``; objectives/base.py);
- RMHC reads the masked action tokens (``original_read_positions`` restores the bug; masked_hindsight.py);
- the EMA target moves only after optimiser steps, not in validation (control_module.py);
- warmup + cosine schedule and gradient clipping (control_module.py);
- ``--load_model_from`` initialises the weights from a checkpoint (the original crashed, smart.md §3.1);
  ``--ckpt_path last`` resumes an interrupted run with its optimiser and epoch.
"""

from __future__ import annotations

import logging

from ..models.control_transformer import ControlTransformerConfig
from ..objectives import (
    ForwardDynamicsConfig,
    ForwardDynamicsObjective,
    InverseDynamicsConfig,
    InverseDynamicsObjective,
    MaskedHindsightControlConfig,
    MaskedHindsightControlObjective,
    curriculum_mask_sizes,
)
from .control_module import ControlModule
from .weights import load_weights

log = logging.getLogger(__name__)


class PretrainModule(ControlModule):
    def __init__(
        self,
        obs_type: str = "pixels",
        obs_dim: int = 0,
        action_dim: int = 0,
        n_layer: int = 8,
        n_head: int = 8,
        n_embd: int = 256,
        context_length: int = 30,
        dropout: float = 0.1,
        max_timestep: int = 1024,
        forward_weight: float = 1.0,
        inverse_weight: float = 1.0,
        masked_hindsight_weight: float = 1.0,
        share_passes: bool = True,
        original_read_positions: bool = False,
        mask_actions: int = -1,
        mask_obs: int = -1,
        ema_tau: float = 0.005,
        lr: float = 6e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        lr_schedule: str = "cosine",
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
        model_type: str = "naive",
        init_from: str | None = None,
    ) -> None:
        """
        Args:
            obs_type: pixels (84x84 frames, SMART CNN) or state (proprioceptive vectors, MLP encoder).
            obs_dim: observation width (set from the data: the concatenated per-domain slot layout).
            action_dim: action width (set from the data: the concatenated per-domain slot layout).
            n_layer: transformer blocks.
            n_head: attention heads.
            n_embd: token width.
            context_length: K steps per window (2K tokens).
            dropout: embedding, attention and residual dropout.
            max_timestep: rows of the per-step timestep embedding.
            forward_weight: weight of forward dynamics (0 switches it off).
            inverse_weight: weight of inverse dynamics (0 switches it off).
            masked_hindsight_weight: weight of random masked hindsight control (0 switches it off).
            share_passes: read forward and inverse dynamics from one inverse-mask pass (2 passes a step, not 3).
            original_read_positions: reproduce the original RMHC bug (read a_j's prediction at token j).
            mask_actions: masked actions per window for RMHC; negative: the curriculum max(1, K(e+1)/E).
            mask_obs: masked observations per window; negative: the curriculum min(K/2, K(e+1)/E).
            ema_tau: EMA rate of the forward-dynamics target encoder per optimiser step.
            lr: peak learning rate.
            weight_decay: AdamW weight decay on Linear/Conv weights only.
            betas: AdamW betas.
            lr_schedule: cosine (linear warmup, cosine decay) or constant (the original).
            warmup_ratio: fraction of all steps spent warming up.
            min_lr_ratio: final learning rate as a fraction of lr.
            compile: torch.compile the model (GPUs; slow to start).
            model_type: accepted for the original command lines (naive/reward_conditioned); pretraining
                trains no policy head, so it changes nothing here.
            init_from: initialise matching weights from this checkpoint (the original --load_model_from).
        """
        super().__init__()
        self.save_hyperparameters()
        config = ControlTransformerConfig(obs_type=obs_type, obs_dim=obs_dim, action_dim=action_dim,
                                          n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                                          context_length=context_length, max_timestep=max_timestep, dropout=dropout)
        self.build_model(config, compile)
        if forward_weight > 0:
            self.add_objective(ForwardDynamicsObjective(n_embd, ForwardDynamicsConfig(share_passes)), forward_weight)
        if inverse_weight > 0:
            self.add_objective(InverseDynamicsObjective(n_embd, action_dim, InverseDynamicsConfig(share_passes)),
                               inverse_weight)
        if masked_hindsight_weight > 0:
            rmhc = MaskedHindsightControlConfig(max(mask_actions, 1), max(mask_obs, 0), original_read_positions)
            self.add_objective(MaskedHindsightControlObjective(n_embd, action_dim, rmhc), masked_hindsight_weight)
        else:
            self.model.mask_token.requires_grad_(False)  # unused without masking; DDP rejects unused parameters
        if not self.objectives:
            raise ValueError("every objective weight is 0: nothing to train")
        if init_from:
            load_weights(self, init_from)

    def on_train_epoch_start(self) -> None:
        self._set_mask_sizes()

    def on_validation_epoch_start(self) -> None:
        self._set_mask_sizes()

    def _set_mask_sizes(self) -> None:
        rmhc = self.objective("masked_hindsight")
        if rmhc is None:
            return
        hp = self.hparams
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        auto_act, auto_obs = curriculum_mask_sizes(self.current_epoch, max_epochs, hp.context_length)
        rmhc.mask_actions = hp.mask_actions if hp.mask_actions >= 0 else auto_act
        rmhc.mask_obs = hp.mask_obs if hp.mask_obs >= 0 else auto_obs
        if self.trainer.training:
            self.log_dict({"train/mask_actions": float(rmhc.mask_actions), "train/mask_obs": float(rmhc.mask_obs)},
                          on_step=False, on_epoch=True, sync_dist=True)  # the same on every rank
