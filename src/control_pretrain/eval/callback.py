"""Rollout evaluation inside a Lightning run: after each validation epoch (never in the sanity check, which the
original spent on 50 rollouts before training, smart.md §3.5) the selection seeds pick the best checkpoint
through ``eval/return_mean``; in ``trainer.test`` the test seeds give the final report (eval/report.py).

The module says what to evaluate (``make_policy()``, ``hparams.domain``/``task``), the DataModule how to build the
environments (``env_kwargs()``: action repeat, camera, render size of the data). Under DDP rank r runs every
world_size-th seed, and a torchmetrics ``CatMetric`` of (position, seed, return, length) rows gathers every rank's
episodes back in seed order, so checkpoint selection sees the same numbers on every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics.aggregation import CatMetric, MaxMetric

from ..envs.dmc import make_env
from .rollout import EpisodeResults, evaluate
from .stats import summarize

log = logging.getLogger(__name__)


def seed_range(first: int, count: int) -> list[int]:
    return list(range(first, first + count))


class RolloutEvaluation(Callback):
    """Args:
        selection_seeds: environment seeds of the rollouts after each validation epoch (checkpoint selection).
        test_seeds: environment seeds of the rollouts in ``trainer.test`` (the report; disjoint from selection).
    After each ``trainer.test``, ``test_results`` holds that checkpoint's ``EpisodeResults``."""

    def __init__(self, selection_seeds: Sequence[int], test_seeds: Sequence[int]) -> None:
        self.selection_seeds, self.test_seeds = list(selection_seeds), list(test_seeds)
        self.test_results: EpisodeResults | None = None

    # ---- running episodes ------------------------------------------------------------------------------------
    def rollouts(self, trainer: Trainer | None, pl_module: LightningModule, seeds: Sequence[int],
                 record_video: bool = False) -> EpisodeResults:
        """One episode per seed, this rank's share under DDP, every rank's results back in seed order
        (``record_video``: all seeds here, no gathering; call it on one rank)."""
        world = 1 if record_video or trainer is None else trainer.world_size
        rank = 0 if world == 1 else trainer.global_rank
        share = list(seeds)[rank::world]
        env_kwargs = trainer.datamodule.env_kwargs() if trainer is not None and trainer.datamodule else {}
        hp = pl_module.hparams
        was_training = pl_module.training
        pl_module.eval()
        # The trainer's precision (autocast under bf16-mixed), as in its own validation and test steps.
        precision = trainer.precision_plugin.forward_context() if trainer is not None else nullcontext()
        try:
            with precision:
                res = evaluate(pl_module.make_policy(),
                               lambda seed: make_env(hp.domain, hp.task, seed=seed, **env_kwargs),
                               share, record_video=record_video)
        finally:
            pl_module.train(was_training)
        if world == 1:
            return res
        log.info("rank %d ran %d of %d evaluation episodes", rank, len(share), len(seeds))
        return gather_in_seed_order(res, list(seeds), rank, world, pl_module.device)

    # ---- Lightning hooks ----------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._log(pl_module, "eval", self.rollouts(trainer, pl_module, self.selection_seeds))

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.test_results = self.rollouts(trainer, pl_module, self.test_seeds)
        self._log(pl_module, "test", self.test_results)

    @staticmethod
    def _log(pl_module: LightningModule, prefix: str, res: EpisodeResults) -> None:
        # The same gathered numbers on every rank, so the sync is a no-op mean; it keeps Lightning from warning.
        stats = summarize(res.returns)
        pl_module.log_dict({f"{prefix}/return_mean": stats["mean"], f"{prefix}/return_std": stats["std"],
                            f"{prefix}/return_iqm": stats["iqm"], f"{prefix}/steps_per_sec": res.steps_per_sec},
                           prog_bar=False, sync_dist=True)


def gather_in_seed_order(res: EpisodeResults, seeds: list[int], rank: int, world: int,
                         device: torch.device) -> EpisodeResults:
    """Every rank's episodes (rank r ran ``seeds[r::world]``), in the order of ``seeds``, on every rank."""
    rows, wall = CatMetric(), MaxMetric()
    rows.set_dtype(torch.float64)  # returns keep float64 precision through the gather
    rows, wall = rows.to(device), wall.to(device)
    position = np.arange(len(seeds))[rank::world]
    local = np.stack([position, res.seeds, res.returns, res.lengths], axis=1).astype(np.float64)  # (n, 4)
    rows.update(torch.from_numpy(local).to(device))
    wall.update(torch.tensor(res.wall_time_s, dtype=torch.float64, device=device))
    table = rows.compute().reshape(-1, 4).cpu().numpy()  # (N, 4), rank by rank
    table = table[np.argsort(table[:, 0], kind="stable")]  # back in seed order
    wall_s = float(wall.compute())
    lengths = table[:, 3].astype(np.int64)
    return EpisodeResults(returns=table[:, 2], lengths=lengths, seeds=[int(s) for s in table[:, 1]],
                          steps_per_sec=float(lengths.sum() / wall_s) if wall_s > 0 else 0.0, wall_time_s=wall_s)
