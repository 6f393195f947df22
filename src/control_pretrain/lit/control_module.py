"""What pretraining and finetuning modules share: the control transformer, a set of weighted objectives run on one
shared per-step cache, the optimiser (AdamW, decay on matrices only, warmup + cosine) and the objectives'
after-optimiser-step hooks (the EMA target update).

Optimiser reference: smart.md §2.9 (AdamW lr 6e-4, betas (0.9, 0.95), weight decay 0.1 on Linear/Conv weights).
Added, as DT-Atari had before the Lightning port lost them: linear warmup over ``warmup_ratio`` of the steps and
cosine decay to ``min_lr_ratio``·lr (``lr_schedule='constant'`` reproduces the original); gradient clipping is
the Trainer's ``gradient_clip_val`` (default 1.0 in our CLI).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import numpy as np
import torch
from lightning.pytorch import LightningModule
from torch import nn

from ..data.obs_stats import ObsStats
from ..data.slots import SlotLayout
from ..errors import CheckpointError
from ..models.control_transformer import ControlTransformer, ControlTransformerConfig, param_groups
from ..objectives import Objective, combine_losses
from .weights import check_architecture, trunk_kind

log = logging.getLogger(__name__)

OBS_STATS_FILE = "obs_stats.json"  # next to config.yaml in the run's output directory
NORMALIZER_PREFIX = "model.obs_normalizer."  # its buffers in the module's state dict


def plain_hparams(hparams) -> None:
    """Settings objects (``MaskedReconstructionConfig``, ``GoalEvalConfig``) of a module built in Python are stored
    as dicts, as the CLI stores them: a checkpoint then holds nothing but tensors and primitives and loads
    weights-only (safe_load.py). The modules accept either form."""
    for key, value in hparams.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            hparams[key] = dataclasses.asdict(value)


class ControlModule(LightningModule):
    """Subclasses call ``build_model`` and ``add_objective`` in ``__init__``. Objectives sit in an ``nn.ModuleDict``
    under ``<name>_objective`` (``forward`` itself is a reserved attribute of every module)."""

    checkpoint_monitor: tuple[str, str] = ("val/loss", "min")  # metric and mode for the best checkpoints

    def build_model(self, config: ControlTransformerConfig | nn.Module, compile: bool) -> None:
        """The trunk (a control transformer of ``config``, or another trunk module itself) and no objectives."""
        self.model = ControlTransformer(config) if isinstance(config, ControlTransformerConfig) else config
        if compile:
            self.model.compile()  # in place: state-dict keys stay the same
        self.objectives = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        # The observation statistics the model uses and where they came from (set in the subclass's ``setup``,
        # state observations only), written to OBS_STATS_FILE when fitting starts.
        self.obs_stats: ObsStats | None = None
        self.obs_stats_source: str | None = None

    def add_objective(self, objective: Objective) -> None:
        self.objectives[f"{objective.name}_objective"] = objective
        self.weights[objective.name] = objective.weight

    def objective(self, name: str) -> Objective | None:
        key = f"{name}_objective"
        return self.objectives[key] if key in self.objectives else None  # noqa: SIM401 (ModuleDict has no get)

    # ---- observation statistics (state observations) ------------------------------------------------------
    @property
    def normalizes_obs(self) -> bool:
        """Whether the model has an observation normaliser (state observations) whose statistics are not set yet."""
        return hasattr(self.model, "obs_normalizer") and self.obs_stats is None

    def use_obs_stats(self, stats: ObsStats | None, layout: SlotLayout, source: str) -> None:
        """Put ``stats`` into the model, or with None keep the statistics it holds (loaded from a checkpoint, or
        identity), and log their source in one line. Called in ``setup``: a checkpoint restored afterwards
        (``--ckpt_path``) replaces them (``on_load_checkpoint``)."""
        normalizer = self.model.obs_normalizer
        if stats is None:
            stats = ObsStats.from_vectors(layout, normalizer.mean.cpu().numpy(), normalizer.std.cpu().numpy())
        else:
            normalizer.set_stats(stats.mean, stats.std, stats.slot_index())
        self.obs_stats, self.obs_stats_source = stats, source
        log.info("observation statistics for %s: %s", ", ".join(layout.slots), source)

    def _restore_obs_stats(self, checkpoint: dict) -> None:
        """On resume or test, the checkpoint's statistics win; say so if they differ from those set in ``setup``."""
        if self.obs_stats is None:
            return
        state = checkpoint["state_dict"]
        if NORMALIZER_PREFIX + "mean" in state:
            mean, std = (state[NORMALIZER_PREFIX + k].float().cpu().numpy() for k in ("mean", "std"))
        else:  # written before normalisation existed: identity (models/normalizer.py)
            mean, std = np.zeros_like(self.obs_stats.mean), np.ones_like(self.obs_stats.std)
        if not (np.array_equal(mean, self.obs_stats.mean) and np.array_equal(std, self.obs_stats.std)):
            log.warning("the checkpoint's observation statistics differ from %s; the checkpoint's are used",
                        self.obs_stats_source)
            self.obs_stats = ObsStats.from_vectors(self.obs_stats.layout, mean, std)
            self.obs_stats_source = "the checkpoint this run resumed from"

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            # --seed_everything seeds every rank alike; offset it so ranks draw different dropout and RMHC masks
            # for their different windows. The weights stay identical: DDP has broadcast rank 0's.
            torch.manual_seed(torch.initial_seed() + self.trainer.global_rank)
        if self.obs_stats is not None and self.trainer.is_global_zero:  # after any checkpoint was restored
            path = os.path.join(self.trainer.default_root_dir, OBS_STATS_FILE)
            os.makedirs(self.trainer.default_root_dir, exist_ok=True)
            self.obs_stats.write_json(path, self.obs_stats_source)

    def compute_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cache: dict = {}
        outputs = {obj.name: obj(self.model, batch, cache) for obj in self.objectives.values()}
        losses = {f"{name}_loss": out["loss"] for name, out in outputs.items()}
        for name, out in outputs.items():  # diagnostics an objective reports beside its loss (logged, not trained)
            losses.update({f"{name}_{k}": v.detach() for k, v in out.get("metrics", {}).items()})
        losses["loss"] = combine_losses(outputs, self.weights)
        return losses

    def training_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses of one training step (a method with its own randomness per step overrides this)."""
        return self.compute_losses(batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self.training_losses(batch)
        bs = len(batch["actions"])
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, on_step=True, on_epoch=False,
                      batch_size=bs)
        self.log("train/loss_epoch", losses["loss"].detach(), on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=bs, sync_dist=True)
        return losses["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses = self.compute_losses(batch)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True,
                      batch_size=len(batch["actions"]), sync_dist=True, prog_bar=False)

    # ---- optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(param_groups(self, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        if hp.lr_schedule == "constant":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # After the weights moved, never in forward or validation (fixes smart.md §5.2.7): target networks
        # (forward dynamics' EMA encoder) move in their objective's hook.
        for objective in self.objectives.values():
            objective.after_optimizer_step(self.model)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["model_config"] = self.model.to_config()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Runs before Lightning copies the weights (resume, testing a checkpoint): a trunk built differently, such
        # as a run from before --model.position_encoding existed resumed with today's default, gets this message
        # instead of a list of missing and unexpected state-dict keys.
        ours, theirs = self.model.to_config(), checkpoint.get("model_config", {})
        if trunk_kind(theirs) != trunk_kind(ours):
            raise CheckpointError(f"the checkpoint to load holds a {trunk_kind(theirs)} trunk, this run trains a "
                                  f"{trunk_kind(ours)} one. Resume with the --method of its run, or start from its "
                                  "weights with --model.init_from instead.")
        check_architecture("the checkpoint to load", checkpoint, ours,
                           "Resume with the trunk settings of its run (its config.yaml; runs written before "
                           "--model.position_encoding existed need --model.position_encoding absolute).")
        self._restore_obs_stats(checkpoint)
