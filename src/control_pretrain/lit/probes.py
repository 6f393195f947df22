"""Representation probes: after each pretraining validation epoch, closed-form linear probes (eval/ridge.py) on the
frozen trunk's features of held-out episodes, logged as ``val/probe_<name>_r2``, so a run's usefulness is visible
before any finetuning.

Per transition (o_t, a_t, r_t, o_{t+1}) of a window, t < K-1:

| probe | target | features |
|---|---|---|
| ``action`` | a_t | [causal h(o_t), inverse-mask h(o_{t+1})] |
| ``reward`` | r_t | [causal h(o_t), causal h(a_t)] |
| ``next_obs`` | o_{t+1} (state only) | [causal h(o_t), causal h(a_t)] |
| ``raw_*`` | the same three | the raw inputs: [o_t, o_{t+1}] for actions, [o_t, a_t] for the others (state only) |

Features are the outputs a finetuned policy reads, from the causal pass (models/masks.py ``causal_mask``), with one
exception: in the causal pass o_{t+1} attends to a_t, so an action probe on it would read the answer off the
input. The action probe takes o_{t+1}'s output from the inverse-mask pass instead, the causal mask without
exactly that edge (``inverse_mask``), so neither of its features has seen a_t. No feature sees its target:
h(a_t) has seen o_0..a_t, not r_t or o_{t+1}. With pixels the next-observation probe is skipped (its only
fixed-meaning target would be the frame; the EMA encoder's latent moves and can collapse, which a probe would
score as easy), and so are the raw probes (84×84×3 values per frame are too wide for a cheap closed form).

Data: the validation windows (``trainer.datamodule.val_set``) that tile each episode (in-episode start a multiple
of K, so no transition is probed twice), at most ``max_windows`` spread evenly over them: the same windows every
epoch and on every rank. Each domain gets its own probes on its own action and observation slot (the slot
``action_mask`` marks), fit on half of its held-out episodes and scored on the other half (alternate episodes;
a domain with a single held-out episode alternates its windows instead). A probe's score is R² averaged over the
target's dims, then over the domains. The raw probes do not depend on the weights: computed once, logged every
epoch as a reference line.

DDP: every rank computes the same probes from the same windows and weights (no collective inside), and the
values are logged with ``sync_dist`` (the mean of equal numbers), so every rank holds the same value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from ..data.windows import EpisodeWindowDataset
from ..errors import ArgumentError
from ..eval.ridge import ridge_r2
from ..models.trunk import Trunk, split_tokens
from ..objectives import pass_hidden

FEATURE_CHUNK_WINDOWS = 64  # windows per trunk pass: bounds memory with pixel frames (64 x K frames at a time)

# probe name -> (features, target), keys of ``transitions``
PROBES: dict[str, tuple[str, str]] = {
    "action": ("trunk_action", "actions"),
    "reward": ("trunk_dynamics", "rewards"),
    "next_obs": ("trunk_dynamics", "next_obs"),
    "raw_action": ("raw_action", "actions"),
    "raw_reward": ("raw_dynamics", "rewards"),
    "raw_next_obs": ("raw_dynamics", "next_obs"),
}


@dataclass(frozen=True)
class DomainSplit:
    """One domain's probe data: positions in the probed window list to fit on and to score on."""

    domain: str
    fit: np.ndarray
    score: np.ndarray


def tiling_windows(dataset: EpisodeWindowDataset, max_windows: int) -> np.ndarray:
    """Indices of the windows that tile each episode, at most ``max_windows`` spread evenly (deterministic)."""
    first_step = dataset.timesteps[dataset.starts]  # in-episode step of each window's start
    candidates = np.flatnonzero(first_step % dataset.K == 0)
    if len(candidates) > max_windows:
        candidates = candidates[np.linspace(0, len(candidates) - 1, max_windows).round().astype(np.int64)]
    return candidates


def split_by_episode(dataset: EpisodeWindowDataset, windows: np.ndarray) -> list[DomainSplit]:
    """Per domain, alternate held-out episodes to fit and to score (alternate windows if it has one episode);
    domains without a window on both sides are left out."""
    starts = dataset.starts[windows]
    episode = starts - dataset.timesteps[starts]  # first step of each window's episode: unique over files
    domain = dataset.file_domain[dataset.window_file[windows]]
    names = list(dataset.action_layout.slots)  # domain ids index this order (data/windows.py)
    splits = []
    for d in np.unique(domain):
        rows = np.flatnonzero(domain == d)
        episodes = np.unique(episode[rows])
        if len(episodes) >= 2:
            to_fit = np.isin(episode[rows], episodes[0::2])
        else:
            to_fit = np.arange(len(rows)) % 2 == 0
        if to_fit.any() and not to_fit.all():
            splits.append(DomainSplit(names[d], rows[to_fit], rows[~to_fit]))
    return splits


def transitions(model: Trunk, batch: dict[str, Tensor], raw: bool) -> dict[str, Tensor]:
    """Features and targets (B, K-1, ·) of every transition t < K-1 of a batch of windows, float32 on the CPU."""
    cache: dict = {}
    obs_out, act_out = split_tokens(pass_hidden(model, batch, cache, "causal"))  # (B, K, C) each
    blind_out, _ = split_tokens(pass_hidden(model, batch, cache, "inverse"))  # (B, K, C), o_{t+1} blind to a_t
    actions = batch["actions"]  # (B, K, A)
    out = {
        "trunk_action": torch.cat((obs_out[:, :-1], blind_out[:, 1:]), dim=-1),  # (B, K-1, 2C)
        "trunk_dynamics": torch.cat((obs_out[:, :-1], act_out[:, :-1]), dim=-1),  # (B, K-1, 2C)
        "actions": actions[:, :-1],  # (B, K-1, A)
        "rewards": batch["rewards"][:, :-1, None],  # (B, K-1, 1)
    }
    if "observations" in batch:
        obs = batch["observations"]  # (B, K, D)
        out["next_obs"] = obs[:, 1:]  # (B, K-1, D)
        if raw:
            out["raw_action"] = torch.cat((obs[:, :-1], obs[:, 1:]), dim=-1)  # (B, K-1, 2D)
            out["raw_dynamics"] = torch.cat((obs[:, :-1], actions[:, :-1]), dim=-1)  # (B, K-1, D+A)
    return {k: v.float().cpu() for k, v in out.items()}


def target_slot(target: str, domain: str, dataset: EpisodeWindowDataset) -> tuple[int, int]:
    """(offset, size) of a domain's own dims of a target."""
    if target == "actions":
        return dataset.action_layout.slots[domain]
    if target == "next_obs":
        return dataset.obs_layout.slots[domain]
    return 0, 1  # rewards


class RepresentationProbes(Callback):
    """Logs ``val/probe_<name>_r2`` (see the module docstring) and ``val/probe_seconds`` (the probes' wall time)
    after every validation epoch but the sanity check. ``last_scores`` holds the latest values; ``windows`` (dataset
    indices) and ``splits`` (per domain) the probed windows once chosen, on the first call.

    Args:
        max_windows: at most this many validation windows (K steps each) are probed.
    """

    def __init__(self, max_windows: int = 512) -> None:
        if max_windows < 1:
            raise ArgumentError(f"representation probes: max_windows is {max_windows}; expected at least 1 "
                                "window (--model.probe_windows 0 turns the probes off instead).")
        self.max_windows = max_windows
        self.windows: np.ndarray | None = None
        self.splits: list[DomainSplit] = []
        self._raw_scores: dict[str, float] | None = None
        self.last_scores: dict[str, float] = {}

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dataset = getattr(trainer.datamodule, "val_set", None)
        if trainer.sanity_checking or dataset is None:
            return
        start = time.perf_counter()
        scores = self.measure(pl_module.model, dataset, pl_module.device, trainer.precision_plugin.forward_context)
        if not scores:
            return
        self.last_scores = scores
        for name, value in scores.items():
            pl_module.log(f"val/probe_{name}_r2", value, on_step=False, on_epoch=True, sync_dist=True)
        pl_module.log("val/probe_seconds", time.perf_counter() - start, on_step=False, on_epoch=True,
                      sync_dist=True)

    def measure(self, model: Trunk, dataset: EpisodeWindowDataset, device: torch.device | str = "cpu",
                precision_context: Callable[[], AbstractContextManager] = nullcontext) -> dict[str, float]:
        """Every probe's score on ``dataset``'s probe windows, with ``model`` frozen: in eval mode without
        gradient, its training mode restored after; ``precision_context`` is the Trainer's (autocast for bf16-mixed).
        Probes without a defined score (flat targets) are left out."""
        if self.windows is None:
            self.windows = tiling_windows(dataset, self.max_windows)
            self.splits = split_by_episode(dataset, self.windows)
        if not self.splits:
            return {}
        raw = self._raw_scores is None and dataset.state
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), precision_context():
                parts = [transitions(model, {k: v.to(device) for k, v in dataset.__getitems__(chunk).items()}, raw)
                         for chunk in np.array_split(self.windows, math.ceil(len(self.windows) / FEATURE_CHUNK_WINDOWS))]
        finally:
            model.train(was_training)
        data = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # (W, K-1, ·)
        scores = {name: self._score(data, features, target, dataset) for name, (features, target) in PROBES.items()
                  if features in data and target in data}
        scores = {name: value for name, value in scores.items() if not math.isnan(value)}
        if raw:
            self._raw_scores = {name: value for name, value in scores.items() if name.startswith("raw_")}
        return {**scores, **(self._raw_scores or {})}

    def _score(self, data: dict[str, Tensor], features: str, target: str, dataset: EpisodeWindowDataset) -> float:
        """R² averaged over the target's own dims per domain, then over domains (NaN if none is defined)."""
        per_domain = []
        for split in self.splits:
            offset, size = target_slot(target, split.domain, dataset)
            x, y = data[features], data[target][..., offset : offset + size]  # (W, K-1, F), (W, K-1, D)
            r2 = ridge_r2(x[split.fit].flatten(0, 1), y[split.fit].flatten(0, 1),
                          x[split.score].flatten(0, 1), y[split.score].flatten(0, 1))  # (D,)
            if not r2.isnan().all():
                per_domain.append(float(r2.nanmean()))
        return float(np.mean(per_domain)) if per_domain else math.nan
