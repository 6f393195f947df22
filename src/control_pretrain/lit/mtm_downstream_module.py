"""One MTM checkpoint, many capabilities (mtm_maskdp.md §A.7): ``dmc_downstream.py --load_model_from CKPT --mode
bc|rcbc|id|fd|probes``. With ``--epochs 0`` the checkpoint is used as it is; with more, it is first finetuned on
the task's data with the mode's own mask (bc, rcbc, id, fd; probes: MTM's random-autoregressive mask), which
``--model.objective.masks`` overrides.

- bc / rcbc: batched rollouts in dm_control through ``MaskedTrajectoryPolicy`` (eval/policies.py), reported like
  SMART's finetuning (last and best checkpoint, ``eval_results.json``). RCBC shows one constant average
  reward-to-go at every step: ``--target_return`` (an episode return, divided by the episode length) or, by
  default, the ``target_quantile`` of the selected training episodes' mean reward per step; both are reported.
- id / fd / probes: offline MSE on the held-out replay's episodes (eval/masked_probes.py), written to
  ``eval_results.json`` as ``{"mode", "checkpoint", "metrics", "episodes", "seeds"}`` (DESIGN.md).
- goal / multigoal / prompt (MaskDP's zero-shot uses): ``MaskedGoalPolicy`` (eval/goal_policies.py) from recorded
  states of the held-out replay, ``--model.goal.*`` (eval/goal_report.py); finetuning uses MaskDP's mask.

Observation slots and statistics follow SMART's finetuning (lit/downstream_module.py, whose ``setup``,
``prepare`` and seeds this module reuses): a seen domain keeps its pretraining slot and statistics, an unseen one
gets its own; the return token keeps the checkpoint's statistics, or takes the finetuning data's from scratch.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from ..errors import ArgumentError
from ..eval.goal_policies import MaskedGoalPolicy
from ..eval.goal_report import GOAL_MODES, GoalEvalConfig
from ..eval.masked_probes import mean_probe_errors, probe_errors, probe_names
from ..eval.policies import MaskedTrajectoryPolicy
from ..models.masked_trajectory import MaskedTrajectoryConfig, MaskedTrajectoryModel
from ..objectives.mtm import MaskedReconstructionConfig, MaskedReconstructionObjective
from .control_module import NORMALIZER_PREFIX, ControlModule, plain_hparams
from .downstream_module import DownstreamModule
from .mtm_module import VALIDATION_MASK_SEED, mask_seed
from .weights import forget_pretrained, load_weights, read_pretrained

log = logging.getLogger(__name__)

ROLLOUT_MODES = ("bc", "rcbc")
OFFLINE_MODES = ("id", "fd", "probes")
FINETUNE_MASKS = {"bc": "bc", "rcbc": "rcbc", "id": "id", "fd": "fd", "probes": "mtm_auto", "goal": "maskdp",
                  "multigoal": "maskdp", "prompt": "maskdp"}
MODES = ROLLOUT_MODES + OFFLINE_MODES + GOAL_MODES


class MTMDownstreamModule(DownstreamModule):
    trunk = "mtm"  # checkpoint settings it takes as defaults (cli/train.py, lit/weights.py checkpoint_defaults)
    def __init__(
        self,
        domain: str = "cheetah",
        task: str = "run",
        mode: str = "bc",
        obs_type: str = "state",
        obs_dim: int = 0,
        action_dim: int = 0,
        n_embd: int = 128,
        n_head: int = 4,
        n_enc_layer: int = 2,
        n_dec_layer: int = 1,
        context_length: int = 8,
        dropout: float = 0.1,
        mae_split: bool = True,
        step_bias: bool = True,
        modalities: tuple[str, ...] = ("obs", "rtg", "act"),
        objective: MaskedReconstructionConfig | None = None,
        load_model_from: str | None = None,
        no_load_action: bool = False,
        freeze_encoder: bool = False,
        history: int = -1,
        target_return: float | None = None,
        target_quantile: float = 0.9,
        goal: GoalEvalConfig | None = None,
        eval_episodes: int = 50,
        eval_seed: int = 1000,
        test_seed: int = 2000,
        video: bool = False,
        lr: float = 1e-4,
        weight_decay: float = 0.005,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_schedule: str = "cosine",
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.0,
        compile: bool = False,
    ) -> None:
        """
        Args:
            domain: dm_control domain (set from --data.domain).
            task: dm_control task (set from --data.task).
            mode: bc, rcbc (rollouts), id, fd or probes (offline MSE on held-out episodes), goal, multigoal or
                prompt (zero-shot goal reaching and prompting from held-out states, MaskDP).
            obs_type: state or pixels.
            obs_dim: the task's observation width (set from the data).
            action_dim: the task's action width (set from the data).
            n_embd: token width (default: the checkpoint's).
            n_head: attention heads (default: the checkpoint's).
            n_enc_layer: encoder blocks (default: the checkpoint's).
            n_dec_layer: decoder blocks (default: the checkpoint's).
            context_length: K steps per window (default: the checkpoint's).
            dropout: attention, residual and embedding dropout.
            mae_split: encoder on the visible tokens only (default: the checkpoint's).
            step_bias: learned step-offset attention bias in every block (models/positions.py StepOffsetBias).
            modalities: token kinds per step (default: the checkpoint's).
            objective: the finetuning mask and loss (objectives/mtm.py); default: the mode's own mask.
            load_model_from: an MTM checkpoint (or a SMART one: its encoders and blocks load by name).
            no_load_action: re-initialise the action encoder.
            freeze_encoder: keep the observation encoder fixed (and in eval mode).
            history: past steps the bc/rcbc policy sees (-1: K-1, the whole window; 0: the current observation
                only, as MTM's BC).
            target_return: rcbc: the episode return to ask for (divided by the episode length into the constant
                average return token); default: target_quantile of the training episodes.
            target_quantile: rcbc without target_return: this quantile of the selected training episodes' mean
                reward per step.
            goal: goal, multigoal, prompt: how pairs, goal sequences and prompts are drawn from the held-out replay
                and scored (eval/goal_report.py GoalEvalConfig: pairs, horizon, extra_steps, loops, ...).
            eval_episodes: rollouts per evaluation (selection after each validation, and the final report).
            eval_seed: first environment seed of the rollouts that pick the best checkpoint.
            test_seed: first environment seed of the final report's rollouts (disjoint from selection).
            video: write an mp4 of the first final-report episode.
            lr: peak learning rate.
            weight_decay: AdamW weight decay on Linear/Conv weights only.
            betas: AdamW betas.
            lr_schedule: cosine (linear warmup, cosine decay) or constant.
            warmup_ratio: fraction of all steps spent warming up.
            min_lr_ratio: final learning rate as a fraction of lr.
            compile: torch.compile the model (GPUs; slow to start).
        """
        ControlModule.__init__(self)  # DownstreamModule's own __init__ builds SMART's trunk; its methods are reused
        self.save_hyperparameters()
        plain_hparams(self.hparams)
        if mode not in MODES:
            raise ArgumentError(f"--mode {mode}: expected one of {MODES}.")
        if mode in GOAL_MODES and obs_type != "state":
            raise ArgumentError(f"--mode {mode} measures distances between state observations; use --obs_type state.")
        if mode == "rcbc" and "rtg" not in modalities:
            raise ArgumentError("--mode rcbc needs a model with return tokens (modalities obs, rtg, act).")
        pretrained = read_pretrained(load_model_from) if load_model_from else None
        layout = pretrained.obs_layout if pretrained is not None and obs_type == "state" else None
        self.obs_layout = layout if layout is not None and layout.fits(domain, obs_dim) else None
        # A seen domain also keeps its action slot, so the action encoder and head answer zero-shot.
        layout = pretrained.action_layout if pretrained is not None else None
        self.action_layout = layout if layout is not None and layout.fits(domain, action_dim) else None
        config = MaskedTrajectoryConfig(
            obs_type=obs_type, obs_dim=self.obs_layout.size if self.obs_layout else obs_dim,
            action_dim=self.action_layout.size if self.action_layout else action_dim, n_embd=n_embd, n_head=n_head,
            n_enc_layer=n_enc_layer, n_dec_layer=n_dec_layer, context_length=context_length, dropout=dropout,
            mae_split=mae_split, step_bias=step_bias, modalities=tuple(modalities))
        self.build_model(MaskedTrajectoryModel(config), compile)
        if isinstance(objective, dict):  # hyperparameters read back from a plain (weights-only) file
            objective = MaskedReconstructionConfig(**objective)
        objective = objective or MaskedReconstructionConfig(masks=[FINETUNE_MASKS[mode]])
        self.add_objective(MaskedReconstructionObjective(config=objective))
        self.loaded: list[str] = []
        self.reinitialised: list[str] = []
        if pretrained is not None:
            exclude = ["model.action_encoder.", "model.heads.act."] if no_load_action else []
            if self.obs_layout is None:  # an unseen domain: its own statistics (``setup``), its own encoder
                exclude.append(NORMALIZER_PREFIX)
            self.loaded, self.reinitialised = load_weights(self, pretrained, exclude, self.model.to_config())
            forget_pretrained()
        if freeze_encoder:
            self.model.obs_encoder.requires_grad_(False)
        self.rtg_target: float | None = None  # rcbc: the constant average return token (set in ``setup``)
        self.mask_generator, self.evaluation_generator = torch.Generator(), torch.Generator()

    # Finetuning masks (a pattern's random query step) come from generators seeded as in pretraining
    # (lit/mtm_module.py): per (seed, rank, step) in training, fixed in validation and test; never the global RNG,
    # which DDP ranks share.
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        self.mask_generator.manual_seed(mask_seed(seed, self.global_rank, self.global_step))
        self.objective("mtm").generator = self.mask_generator

    def _evaluation_masks(self) -> None:
        self.evaluation_generator.manual_seed(VALIDATION_MASK_SEED + self.global_rank)
        self.objective("mtm").generator = self.evaluation_generator

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._evaluation_masks()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._evaluation_masks()

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Observations and actions into the domain's slots of the pretraining layouts, where it has them."""
        batch = super().prepare(batch)
        if self.action_layout is None:
            return batch
        domain = self.hparams.domain
        return {**batch, "actions": self.action_layout.place(domain, batch["actions"]),
                "action_mask": self.action_layout.place(domain, batch["action_mask"])}

    @property
    def checkpoint_monitor(self) -> tuple[str, str]:
        return ("eval/return_mean", "max") if self.hparams.mode in ROLLOUT_MODES else ("val/loss", "min")

    def setup(self, stage: str) -> None:
        super().setup(stage)  # observation statistics
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "train_set"):
            return
        if "rtg" in self.model.modalities and self.model.rtg_std.item() == 1.0 and self.model.rtg_mean.item() == 0:
            values = dm.train_set.rtg_avg[dm.train_set.starts]
            self.model.set_rtg_stats(values.mean(), values.std())
            log.info("average return-to-go statistics of the finetuning data: mean %.4f, std %.4f",
                     self.model.rtg_mean.item(), self.model.rtg_std.item())
        if self.hparams.mode == "rcbc" and self.rtg_target is None:
            self.rtg_target, source = self._rcbc_target(dm)
            log.info("rcbc target: average return token %.4f (%s)", self.rtg_target, source)

    def _rcbc_target(self, dm) -> tuple[float, str]:
        hp = self.hparams
        returns = dm.train_file.episode_returns()[dm.train_episodes]
        lengths = dm.train_file.index.lengths[dm.train_episodes]
        if hp.target_return is not None:
            return hp.target_return / float(lengths.mean()), f"--target_return {hp.target_return}"
        per_step = returns / lengths
        return float(np.quantile(per_step, hp.target_quantile)), (
            f"quantile {hp.target_quantile} of {len(returns)} training episodes' mean reward per step")

    @property
    def target_return(self) -> float | None:
        """rcbc: the episode return the constant return token stands for (mean episode length x token)."""
        if self.rtg_target is None:
            return None
        dm = self.trainer.datamodule
        return self.rtg_target * float(dm.train_file.index.lengths[dm.train_episodes].mean())

    def make_policy(self) -> MaskedTrajectoryPolicy:
        hp = self.hparams
        history = hp.context_length - 1 if hp.history < 0 else hp.history
        return MaskedTrajectoryPolicy(self.model, self.objective("mtm"),
                                      self.rtg_target if hp.mode == "rcbc" else None, history,
                                      obs_layout=self.obs_layout, action_layout=self.action_layout)

    def make_goal_policy(self, history: int) -> MaskedGoalPolicy:
        """The goal and prompt modes' policy: the model's goal query (eval/goal_policies.py)."""
        dm = self.trainer.datamodule
        return MaskedGoalPolicy(self.model, self.hparams.domain, dm.obs_dim, dm.action_dim, history,
                                obs_layout=self.obs_layout, action_layout=self.action_layout)

    def configure_callbacks(self) -> list:
        return super().configure_callbacks() if self.hparams.mode in ROLLOUT_MODES else []

    # ---- offline modes ------------------------------------------------------------------------------------
    def probe_metrics(self, loader) -> dict[str, float]:
        """The mode's offline MSEs (probes: all of them) over every batch of ``loader``, window-weighted."""
        names = probe_names(self.model.modalities) if self.hparams.mode == "probes" else [self.hparams.mode]
        was_training = self.training
        self.eval()
        try:
            errors = mean_probe_errors(self.model, loader, names,
                                       lambda b: self.prepare({k: v.to(self.device) for k, v in b.items()}))
        finally:
            self.train(was_training)
        return {f"{name}_mse": value for name, value in errors.items()}

    @torch.no_grad()
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if self.hparams.mode in OFFLINE_MODES:
            batch = self.prepare(batch)
            names = probe_names(self.model.modalities) if self.hparams.mode == "probes" else [self.hparams.mode]
            self.log_dict({f"val/probe_{k}_mse": v for k, v in probe_errors(self.model, batch, names).items()},
                          on_step=False, on_epoch=True, batch_size=len(batch["actions"]), sync_dist=True)
