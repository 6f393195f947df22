"""Finetuning a (pretrained or fresh) control transformer on one task: behaviour cloning (``model_type=naive``) or
return-conditioned control (``reward_conditioned``), evaluated by rollouts in dm_control (smart.md §3.2-3.5).

Deviations from microsoft/smart ``CTLitModule``:
- pretrained weights are loaded by explicit rules (lit/weights.py): pretraining heads are never loaded,
  ``no_load_action`` also re-initialises the action encoder, shape mismatches are re-initialised, and both lists
  are logged; sizes default to the checkpoint's (dmc_downstream.py), and a checkpoint that does not fit is a clear
  error;
- for state observations, a domain seen in pretraining keeps its slot of the pretraining observation layout, so
  the whole state encoder transfers;
- ``freeze_encoder`` freezes the observation encoder (the original trained only the BC head, and the wrong head in
  return-conditioned mode, smart.md §2.9);
- rollouts are batched, aligned with training, reset once, and seeded separately for checkpoint selection
  (``eval_seed``) and for the final report (``test_seed``) (smart.md §3.5);
- no evaluation during the sanity check; the model is seeded before its heads are initialised (smart.md §3.2).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..envs.dmc import make_env
from ..eval.rollout import EpisodeResults, evaluate
from ..eval.stats import summarize, target_return_for
from ..models.control_transformer import ControlTransformerConfig
from ..objectives import BehaviorCloningObjective, ReturnConditionedConfig, ReturnConditionedObjective
from .control_module import ControlModule
from .weights import load_weights, read_checkpoint

log = logging.getLogger(__name__)

MODEL_TYPES = ("naive", "reward_conditioned")


def pretraining_obs_slot(ckpt: dict, domain: str) -> tuple[int, int, int] | None:
    """(offset, size, total) of ``domain`` in a pretraining checkpoint's observation layout, if it has one."""
    for state in ckpt.values():
        if isinstance(state, dict) and "obs_layout" in state and domain in state["obs_layout"]:
            layout = state["obs_layout"]
            offset, size = layout[domain]
            return offset, size, sum(s for _, s in layout.values())
    return None


class DownstreamModule(ControlModule):
    checkpoint_monitor = ("eval/return_mean", "max")

    def __init__(
        self,
        domain: str = "cheetah",
        task: str = "run",
        obs_type: str = "pixels",
        obs_dim: int = 0,
        action_dim: int = 0,
        n_layer: int = 8,
        n_head: int = 8,
        n_embd: int = 256,
        context_length: int = 30,
        dropout: float = 0.1,
        max_timestep: int = 1024,
        model_type: str = "naive",
        load_model_from: str | None = None,
        no_load_action: bool = False,
        freeze_encoder: bool = False,
        rtg_scale: float = 1000.0,
        target_return: float | None = None,
        eval_episodes: int = 50,
        eval_seed: int = 1000,
        test_seed: int = 2000,
        video: bool = False,
        lr: float = 6e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        lr_schedule: str = "cosine",
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
    ) -> None:
        """
        Args:
            domain: dm_control domain (set from --data.domain).
            task: dm_control task (set from --data.task).
            obs_type: pixels or state.
            obs_dim: the task's observation width (set from the data).
            action_dim: the task's action width (set from the data).
            n_layer: transformer blocks (default: the checkpoint's, else 8).
            n_head: attention heads (default: the checkpoint's, else 8).
            n_embd: token width (default: the checkpoint's, else 256).
            context_length: K steps per window (default: the checkpoint's, else 30).
            dropout: embedding, attention and residual dropout.
            max_timestep: rows of the per-step timestep embedding.
            model_type: naive (behaviour cloning) or reward_conditioned (return-to-go conditioned control).
            load_model_from: a checkpoint (usually pretraining's last.ckpt); without it the model trains from scratch.
            no_load_action: also re-initialise the action encoder (pretraining heads are never loaded).
            freeze_encoder: keep the observation encoder fixed (and in eval mode).
            rtg_scale: return-to-go is divided by this before the policy head (the original fed raw values).
            target_return: initial return-to-go in evaluation (default: the reference table for the task).
            eval_episodes: rollouts per evaluation (selection after each validation, and the final report).
            eval_seed: first environment seed of the rollouts that pick the best checkpoint.
            test_seed: first environment seed of the final report's rollouts (disjoint from selection).
            video: write an mp4 of the first final-report episode (pixels rendered for it).
            lr: peak learning rate.
            weight_decay: AdamW weight decay on Linear/Conv weights only.
            betas: AdamW betas.
            lr_schedule: cosine (linear warmup, cosine decay) or constant (the original).
            warmup_ratio: fraction of all steps spent warming up.
            min_lr_ratio: final learning rate as a fraction of lr.
            compile: torch.compile the model (GPUs; slow to start).
        """
        super().__init__()
        self.save_hyperparameters()
        if model_type not in MODEL_TYPES:
            raise ValueError(f"--model_type must be one of {MODEL_TYPES}, not '{model_type}'")
        ckpt = read_checkpoint(load_model_from) if load_model_from else None
        self.obs_slot = pretraining_obs_slot(ckpt, domain) if ckpt is not None and obs_type == "state" else None
        if self.obs_slot is not None and self.obs_slot[1] != obs_dim:
            self.obs_slot = None  # same domain name, different observation size: use the task's own
        model_obs_dim = self.obs_slot[2] if self.obs_slot else obs_dim
        config = ControlTransformerConfig(obs_type=obs_type, obs_dim=model_obs_dim, action_dim=action_dim,
                                          n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                                          context_length=context_length, max_timestep=max_timestep, dropout=dropout)
        self.build_model(config, compile)
        if model_type == "naive":
            self.add_objective(BehaviorCloningObjective(n_embd, action_dim))
        else:
            self.add_objective(ReturnConditionedObjective(n_embd, action_dim, ReturnConditionedConfig(rtg_scale)))
        self.loaded: list[str] = []
        self.reinitialised: list[str] = []
        if load_model_from:
            exclude = ["objectives."] + (["model.action_encoder."] if no_load_action else [])
            self.loaded, self.reinitialised = load_weights(self, load_model_from, exclude, self.model.to_config())
        self.model.mask_token.requires_grad_(False)  # finetuning masks nothing; DDP rejects unused parameters
        if freeze_encoder:
            self.model.obs_encoder.requires_grad_(False)

    @property
    def policy(self):
        return next(iter(self.objectives.values()))

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Place state observations into the domain's slot of the pretraining layout, if it has one."""
        if self.obs_slot is None or "observations" not in batch:
            return batch
        offset, size, total = self.obs_slot
        obs = batch["observations"]  # (B, T, size)
        padded = obs.new_zeros((*obs.shape[:-1], total))  # (B, T, total)
        padded[..., offset : offset + size] = obs
        return {**batch, "observations": padded}

    def compute_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return super().compute_losses(self.prepare(batch))

    # ---- evaluation in dm_control --------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Evaluate in the conditions the data was collected in (action repeat, camera, render mode)."""
        attrs = self.trainer.datamodule.train_file.attrs
        pixels = self.hparams.obs_type == "pixels"
        self.env_kwargs = {
            "action_repeat": int(attrs["action_repeat"]),
            "pixels": pixels,
            "height": int(attrs.get("render_height") or 84),
            "width": int(attrs.get("render_width") or 84),
            "camera_id": int(attrs["render_camera"]) if int(attrs.get("render_camera", -1)) >= 0 else None,
            "fast_render": bool(attrs.get("render_fast", False)) and pixels,
        }

    @property
    def target_return(self) -> float | None:
        hp = self.hparams
        return target_return_for(hp.domain, hp.task, hp.target_return) if hp.model_type != "naive" else None

    def rollouts(self, seeds: list[int], record_video: bool = False) -> EpisodeResults:
        """One episode per seed. Under DDP every rank runs every world_size-th seed and all ranks get every result
        back in seed order, so checkpoint selection sees the same numbers everywhere (``record_video``: local)."""
        hp = self.hparams
        trainer = self._trainer
        world = 1 if record_video or trainer is None else trainer.world_size
        share = seeds[trainer.global_rank :: world] if world > 1 else seeds
        was_training = self.training
        self.eval()
        try:
            res = evaluate(
                lambda batch: self.policy.predict_actions(self.model, self.prepare(batch)),
                lambda seed: make_env(hp.domain, hp.task, seed=seed, **self.env_kwargs),
                share, hp.context_length, hp.obs_type, self.target_return, self.device, record_video=record_video,
            )
        finally:
            self.train(was_training)
        if world == 1:
            return res
        log.info("rank %d ran %d of %d evaluation episodes", trainer.global_rank, len(share), len(seeds))
        return self._gather(res, seeds)

    def _gather(self, res: EpisodeResults, seeds: list[int]) -> EpisodeResults:
        """Every rank's (return, length, wall time) rows, back in the order of ``seeds``."""
        world, n = self.trainer.world_size, len(seeds)
        local = torch.full((-(-n // world), 3), float("nan"), dtype=torch.float64)
        local[: len(res.returns), 0] = torch.from_numpy(res.returns.astype(np.float64))
        local[: len(res.returns), 1] = torch.from_numpy(res.lengths.astype(np.float64))
        local[:, 2] = res.wall_time_s
        rows = self.all_gather(local.to(self.device)).cpu()  # (world, per_rank, 3); rank r held seeds[r::world]
        ordered = rows.transpose(0, 1).reshape(-1, 3)[:n].numpy()  # row j*world + r is seeds[r + j*world]
        wall = float(np.nanmax(rows[..., 2].numpy()))
        lengths = ordered[:, 1].astype(np.int64)
        return EpisodeResults(returns=ordered[:, 0], lengths=lengths, seeds=list(seeds),
                              steps_per_sec=float(lengths.sum() / wall) if wall > 0 else 0.0, wall_time_s=wall)

    def selection_seeds(self) -> list[int]:
        return list(range(self.hparams.eval_seed, self.hparams.eval_seed + self.hparams.eval_episodes))

    def test_seeds(self) -> list[int]:
        return list(range(self.hparams.test_seed, self.hparams.test_seed + self.hparams.eval_episodes))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return  # the original ran 50 rollouts before training even started
        res = self.rollouts(self.selection_seeds())
        stats = summarize(res.returns)
        self.log_dict({"eval/return_mean": stats["mean"], "eval/return_std": stats["std"],
                       "eval/return_iqm": stats["iqm"], "eval/steps_per_sec": res.steps_per_sec}, prog_bar=False, sync_dist=True)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.freeze_encoder:
            self.model.obs_encoder.eval()  # a frozen encoder also keeps its dropout/normalisation fixed
        return self
