"""MTM pretraining (Wu et al., ICML 2023; mtm_maskdp.md Part A), and MaskDP's (``--method maskdp``, Part B: the
same module over (obs, act) tokens with MaskDP's mask, configs/methods/maskdp.yaml): the masked trajectory model
(models/masked_trajectory.py) trained to reconstruct windows of the multi-task data from random visible subsets
(objectives/mtm.py), ``python src/dmc_pretrain.py --method mtm``.

Shared with SMART (lit/control_module.py): the data, the observation statistics (stored in the checkpoint and
``obs_stats.json``), AdamW without decay on biases, norms, embeddings and mask tokens, warmup + cosine, the
checkpoint's ``model_config``. Added here: the return token's statistics, the per-rank mask generator, and the
offline probes on held-out episodes (``val/probe_{bc,rcbc,id,fd,goal}_mse``, eval/masked_probes.py).

Deviations from facebookresearch/mtm ``train.py``: masks per sample; seeded per rank and step, never the global
RNG, so a resumed run draws the masks it would have drawn (the reference's resume picked checkpoints by string
order, §A.11 #10); validation on held-out episodes only, with the same masks every epoch (§A.11 #6); statistics of
the training split, kept in the checkpoint, never a cache in the temp folder (§A.11 #5); no selection on
evaluation returns (§A.11 #9).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from ..errors import ArgumentError
from ..eval.masked_probes import probe_errors, probe_names
from ..models.masked_trajectory import MaskedTrajectoryConfig, MaskedTrajectoryModel
from ..objectives.mtm import MaskedReconstructionConfig, MaskedReconstructionObjective
from .control_module import ControlModule, plain_hparams
from .weights import load_weights

log = logging.getLogger(__name__)

VALIDATION_MASK_SEED = 12345  # validation draws the same masks every epoch, so its losses compare across epochs


def mask_seed(seed: int, rank: int, step: int) -> int:
    """The mask generator's seed of one training step on one rank (distinct for every triple)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


class MTMPretrainModule(ControlModule):
    def __init__(
        self,
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
        lr: float = 3e-4,
        weight_decay: float = 0.005,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_schedule: str = "cosine",
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.0,
        compile: bool = False,
        init_from: str | None = None,
        probe_batches: int = -1,
    ) -> None:
        """
        Args:
            obs_type: state (proprioceptive vectors, MLP encoder) or pixels (84x84 frames, SMART's CNN).
            obs_dim: observation width (set from the data).
            action_dim: action width (set from the data).
            n_embd: token width.
            n_head: attention heads.
            n_enc_layer: encoder blocks (they see the visible tokens only when mae_split).
            n_dec_layer: decoder blocks (over all tokens).
            context_length: K steps per window (K x modalities tokens).
            dropout: attention, residual and embedding dropout.
            mae_split: encoder on the visible tokens only (MAE); false: one stack over all tokens (BERT).
            step_bias: learned step-offset attention bias in every block (models/positions.py StepOffsetBias).
            modalities: token kinds per step, in within-step order: obs, rtg (average return-to-go), act.
            objective: masks (mtm_auto, bc, rcbc, id, fd, random; several = one per sample), keep ratios (the
                fraction VISIBLE), cut weights per modality, per-sample masks, loss on all or masked tokens,
                per-modality weights (objectives/mtm.py).
            lr: peak learning rate (MTM: 1e-4 over 140k steps; higher for the CPU budgets).
            weight_decay: AdamW weight decay on Linear/Conv weights only (MTM: 0.005).
            betas: AdamW betas.
            lr_schedule: cosine (linear warmup, cosine decay) or constant.
            warmup_ratio: fraction of all steps spent warming up.
            min_lr_ratio: final learning rate as a fraction of lr (MTM: 0).
            compile: torch.compile the model (GPUs; slow to start).
            init_from: initialise matching weights from this checkpoint (MTM or SMART; lit/weights.py rules).
            probe_batches: validation batches scored by the offline probes each epoch (-1: all, 0: none). Batches
                come in file order, so the first ones are the earliest held-out episodes (in SAC replay, the
                least predictable): a few of them are not the whole validation set's value.
        """
        super().__init__()
        self.save_hyperparameters()
        plain_hparams(self.hparams)
        config = MaskedTrajectoryConfig(obs_type=obs_type, obs_dim=obs_dim, action_dim=action_dim, n_embd=n_embd,
                                        n_head=n_head, n_enc_layer=n_enc_layer, n_dec_layer=n_dec_layer,
                                        context_length=context_length, dropout=dropout, mae_split=mae_split,
                                        step_bias=step_bias, modalities=tuple(modalities))
        self.build_model(MaskedTrajectoryModel(config), compile)
        if isinstance(objective, dict):  # hyperparameters read back from a plain (weights-only) file
            objective = MaskedReconstructionConfig(**objective)
        self.add_objective(MaskedReconstructionObjective(config=objective or MaskedReconstructionConfig()))
        if probe_batches < -1:
            raise ArgumentError(f"--model.probe_batches {probe_batches}: expected -1 (every validation batch), 0 "
                                "(no probes) or a count, e.g. 4.")
        self.mask_generator = torch.Generator()
        self.validation_generator = torch.Generator()
        if init_from:
            load_weights(self, init_from, exclude=["objectives."], model_config=self.model.to_config())

    @property
    def mtm(self) -> MaskedReconstructionObjective:
        return self.objective("mtm")

    # ---- data statistics ----------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Observation and return statistics of the DataModule's training split, before the first step."""
        dm = self.trainer.datamodule
        if dm is None or not hasattr(dm, "train_set"):
            return
        if self.normalizes_obs and hasattr(dm, "obs_stats"):
            source = (f"the pretraining training split ({sum(dm.obs_stats.steps.values())} steps)"
                      if dm.obs_stats is not None else "identity (--data.normalize_obs false)")
            self.use_obs_stats(dm.obs_stats, dm.obs_layout, source)
        if "rtg" in self.model.modalities and self.model.rtg_std.item() == 1.0 and self.model.rtg_mean.item() == 0:
            values = dm.train_set.rtg_avg[dm.train_set.starts]  # every training window's first step
            self.model.set_rtg_stats(values.mean(), values.std())
            log.info("average return-to-go statistics of %d training windows: mean %.4f, std %.4f", len(values),
                     self.model.rtg_mean.item(), self.model.rtg_std.item())

    # ---- steps --------------------------------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict:
        out = self.mtm(self.model, batch, {"generator": generator})
        return {"loss": out["loss"], **{k: v for k, v in out.items() if k.startswith("recon_")}}

    def training_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Masks from a generator seeded by (seed, rank, step): every rank its own, a resumed run the same."""
        seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        self.mask_generator.manual_seed(mask_seed(seed, self.global_rank, self.global_step))
        return self.compute_losses(batch, self.mask_generator)

    def on_validation_epoch_start(self) -> None:
        self.validation_generator.manual_seed(VALIDATION_MASK_SEED + self.global_rank)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        bs = len(batch["actions"])
        losses = self.compute_losses(batch, self.validation_generator)
        if self.hparams.probe_batches < 0 or batch_idx < self.hparams.probe_batches:
            losses.update({f"probe_{k}_mse": v for k, v in probe_errors(self.model, batch).items()})
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True, batch_size=bs,
                      sync_dist=True)

    @property
    def probes(self) -> list[str]:
        return probe_names(self.model.modalities)
