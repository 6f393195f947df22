"""A synthetic control task with a known answer, and a Lightning-free loop that trains objectives on it.

Observations are i.i.d. o_t ~ N(0, I) and every action is a fixed function of the step it causes:
a_t = tanh(W (o_{t+1} - o_t) / 2) with W a fixed random orthogonal matrix times ``gain`` (issue 13, "Measured").
So inverse dynamics and masked hindsight control can recover a_t exactly from (o_t, o_{t+1}), and forward dynamics
can predict o_{t+1} from (o_t, a_t) (W is square and invertible). Nothing else in a window carries information, so
an objective that learns reaches a small fraction of the predict-zero loss; one that does not stays near it.

Used by tests/test_learning.py and by studies/rmhc_ablation/run.py (the RMHC ablation), which must see the same
task. Batches have the keys and shapes the DataModules deliver (observations, actions, action_mask, timesteps).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from control_pretrain.models.control_transformer import param_groups
from control_pretrain.objectives import Objective, combine_losses

EPISODE_LENGTH = 250  # in-episode timesteps of a DMC episode at action repeat 4; windows start anywhere inside
GRADIENT_CLIP = 1.0  # the CLI's --trainer.gradient_clip_val


@dataclass(frozen=True)
class SyntheticControlTask:
    """Windows of the task; ``W`` is drawn once from ``seed``."""

    dim: int = 4  # observation width = action width (W is square, so forward dynamics is well posed)
    gain: float = 1.5  # scale of W: action variance about 0.39 with dim 4, tanh mostly unsaturated
    seed: int = 0
    W: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        q, _ = torch.linalg.qr(torch.randn(self.dim, self.dim, generator=g))
        object.__setattr__(self, "W", self.gain * q)

    def windows(self, n: int, num_steps: int, generator: torch.Generator) -> dict[str, Tensor]:
        """n windows of ``num_steps`` steps: observations (n, K, d), actions (n, K, d), timesteps (n, K),
        action_mask (n, d). The last action's next observation lies outside the window, as in real data."""
        obs = torch.randn(n, num_steps + 1, self.dim, generator=generator)  # (n, K+1, d)
        actions = torch.tanh((obs[:, 1:] - obs[:, :-1]) @ self.W.T / 2)  # (n, K, d)
        start = torch.randint(0, EPISODE_LENGTH - num_steps + 1, (n, 1), generator=generator)
        return {
            "observations": obs[:, :-1],
            "actions": actions,
            "timesteps": start + torch.arange(num_steps),  # (n, K)
            "action_mask": torch.ones(n, self.dim),
        }

    def batches(self, batch_size: int, num_steps: int, seed: int) -> Iterator[dict[str, Tensor]]:
        """An endless stream of fresh training batches."""
        g = torch.Generator().manual_seed(seed)
        while True:
            yield self.windows(batch_size, num_steps, g)

    def validation(self, n: int, num_steps: int, seed: int = 12345) -> list[dict[str, Tensor]]:
        """Fixed held-out windows, in batches of at most 256."""
        g = torch.Generator().manual_seed(seed)
        return [self.windows(min(256, n - i), num_steps, g) for i in range(0, n, 256)]


def zero_loss(batches: list[dict[str, Tensor]], skip_last: bool = False) -> float:
    """MSE of predicting a = 0 for every action (of every action but the last if ``skip_last``, as inverse
    dynamics, which has no o_{t+1} for the last step)."""
    actions = torch.cat([b["actions"][:, :-1] if skip_last else b["actions"] for b in batches])
    return actions.square().mean().item()


@torch.no_grad()
def validation_loss(model: nn.Module, objective: Objective, batches: list[dict[str, Tensor]], seed: int = 0) -> float:
    """Mean loss over ``batches`` in eval mode; random masks drawn from ``seed``, so every call sees the same."""
    model.eval(), objective.eval()
    devices_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        losses = [objective(model, b)["loss"].item() * len(b["actions"]) for b in batches]
    finally:
        torch.random.set_rng_state(devices_state)
        model.train(), objective.train()
    return sum(losses) / sum(len(b["actions"]) for b in batches)


@dataclass
class FitResult:
    curve: list[tuple[int, float]]  # (optimiser steps done, validation loss)
    samples_per_sec: float  # training windows per second, validation excluded


def fit(model: nn.Module, objectives: list[Objective], batches: Iterator[dict[str, Tensor]], steps: int,
        lr: float = 6e-4, evaluate: Callable[[], float] | None = None, eval_every: int = 0,
        warmup: int = 0, bf16: bool = False) -> FitResult:
    """Train ``objectives`` on ``model`` as ControlModule does (AdamW, decay on matrices only, betas (0.9, 0.95),
    weight decay 0.1, gradient clipping 1.0, the objectives' after-optimizer-step hooks), with linear warmup over
    ``warmup`` steps and cosine decay to 10% (the CLI's schedule). ``evaluate`` runs every ``eval_every`` steps and
    at the end. ``bf16``: the forward under ``torch.autocast`` in bfloat16, as ``--trainer.precision bf16-mixed``."""
    everything = nn.ModuleList([model, *objectives])
    optimizer = torch.optim.AdamW(param_groups(everything, 0.1), lr=lr, betas=(0.9, 0.95))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    weights = {o.name: o.weight for o in objectives}
    curve: list[tuple[int, float]] = []
    train_time, samples = 0.0, 0
    everything.train()
    for step in range(1, steps + 1):
        batch = next(batches)
        start = time.perf_counter()
        cache: dict = {}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = combine_losses({o.name: o(model, batch, cache) for o in objectives}, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(everything.parameters(), GRADIENT_CLIP)
        optimizer.step()
        schedule.step()
        for o in objectives:
            o.after_optimizer_step(model)
        train_time += time.perf_counter() - start
        samples += len(batch["actions"])
        if evaluate is not None and ((eval_every and step % eval_every == 0) or step == steps):
            curve.append((step, evaluate()))
    return FitResult(curve, samples / max(train_time, 1e-9))
