"""The two goal-reaching baselines MaskDP is compared with (Liu et al., NeurIPS 2022, Fig. 2-3; mtm_maskdp.md §B.3,
§D.5), as ``GoalPolicy``s of src/control_pretrain/eval/goal_reaching.py:

| baseline | reference | input | trained on |
|---|---|---|---|
| ``GoalMLP`` | FangchenLiu/MaskDP_public ``agent/bc_goal.py`` | z(s_t) ‖ z(g) | a_t, g = a random later state s_{t+h} |
| ``GoalGPT`` | FangchenLiu/MaskDP_public ``agent/seq_goal.py`` | causal tokens z(s_t) ‖ z(g) | a_t for t < g_idx, g = s_{g_idx} |

z() is the training split's per-dimension observation mean and std (data/obs_stats.py), kept in the checkpoint
as buffers. Both act on the nearest pending goal only and return one action (H = 1): with several goals they
switch goals one after the other, which is the paper's point against them in multi-goal reaching (Fig. 3).

Deviations from the reference:
- Sizes: Goal-MLP defaults to 3 hidden layers of 256 (``hidden``, ``n_hidden``) instead of 5 Linear layers of
  1024; Goal-GPT to 2 blocks, C = 128, 4 heads instead of the paper's "similar size" to MaskDP (d 256, 5 blocks):
  CPU budgets (§D.5). Both are arguments.
- Loss: action MSE. Goal-MLP's reference maximises a truncated-Gaussian log-likelihood with fixed std 0.2 around a
  tanh mean; with the std fixed that is 1 / (2 * 0.2^2) times the squared error plus a constant (ignoring the
  truncation's normaliser), i.e. MSE up to scale, so the gradients point the same way.
- Goal-GPT is built on our causal trunk (``ControlTransformer``) with interleaved (s, a) tokens, not on state
  tokens only: the observation token is z(s_t) ‖ z(g) (``obs_dim = 2 D``), the actions of the history are tokens
  too, as in our BC policy; the action head is our ``BehaviorCloningObjective`` head (Linear, no tanh; plans are
  clipped to [-1, 1] as eval/rollout.py clips BC actions). Timesteps are in-window step numbers 0..T-1: the
  protocol's history carries no episode clock. Dropout 0 by default (MaskDP's own setting).
- Goal-GPT's goal: per window a goal step g_idx uniform in [1, K-1] instead of always the window's last state, so
  that it is trained on the distances it meets at evaluation (a goal 15-19 steps ahead after a short history);
  every token is given that goal and the loss covers tokens t < g_idx only (causal attention: later tokens,
  the goal state's own included, never reach them). At inference the history is cut so that the current step
  plus the goal fit in K steps, as in training: T <= K - h for a goal h steps ahead (T = 1 if h >= K).
- Goal-MLP: one (t, h) pair per window, t uniform in [0, K-2], h uniform in [1, K-1-t]; the horizon h is not an
  input (the reference does not feed it either).
- Windows without action labels (``has_action`` false) and other domains' action dims (``action_mask``) are left
  out of the loss. Both baselines are single-domain models: statistics over the whole observation vector.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from control_pretrain.models.control_transformer import ControlTransformer, ControlTransformerConfig, param_groups
from control_pretrain.models.positions import PositionEncoding
from control_pretrain.objectives.base import action_loss
from control_pretrain.objectives.policy import BehaviorCloningObjective

LAST_LOSSES = 20  # ``loss_last`` averages this many final steps: one batch is noisy


# ---- Goal-MLP -------------------------------------------------------------------------------------------------
class GoalMLP(nn.Module):
    """Goal-conditioned BC: a ReLU MLP on z(s_t) ‖ z(g) with a tanh output, the statistics as buffers."""

    def __init__(self, obs_dim: int, action_dim: int, obs_mean: Tensor, obs_std: Tensor, hidden: int = 256,
                 n_hidden: int = 3):
        super().__init__()
        layers, width = [], 2 * obs_dim
        for _ in range(n_hidden):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, action_dim))
        self.register_buffer("obs_mean", torch.as_tensor(obs_mean).float().reshape(obs_dim))
        self.register_buffer("obs_std", torch.as_tensor(obs_std).float().reshape(obs_dim).clamp_min(1e-6))

    def z_obs(self, obs: Tensor) -> Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def forward(self, obs: Tensor, goal: Tensor) -> Tensor:
        """obs, goal (..., D) raw -> actions (..., A) in [-1, 1]."""
        return torch.tanh(self.net(torch.cat((self.z_obs(obs), self.z_obs(goal)), -1)))  # (..., A)

    def loss(self, batch: dict[str, Tensor], t: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Action MSE at step t (B,) towards the state h (B,) steps later, and the predict-zero MSE of the same
        targets, from (B, K, ...) windows."""
        obs, rows = batch["observations"], torch.arange(len(t), device=t.device)
        target = batch["actions"][rows, t][:, None]  # (B, 1, A)
        pred = self(obs[rows, t], obs[rows, t + h])[:, None]  # (B, 1, A)
        mask, valid = batch.get("action_mask"), _labelled(batch)[:, None]  # (B, 1)
        return action_loss(pred, target, mask, valid), action_loss(torch.zeros_like(target), target, mask, valid)


def draw_pairs(batch_size: int, K: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Goal-MLP's (t, h) per window: t uniform in [0, K-2], h uniform in [1, K-1-t]."""
    if K < 2:
        raise ValueError(f"goal reaching needs windows of at least 2 steps, got K = {K}")
    t = torch.randint(0, K - 1, (batch_size,), generator=generator)  # (B,)
    h = 1 + (torch.rand(batch_size, generator=generator) * (K - 1 - t)).long()  # (B,) in [1, K-1-t]
    return t, h


class GoalMLPPolicy:
    """A ``GoalMLP`` acting on the current observation and the nearest goal (eval/goal_reaching.py ``GoalPolicy``)."""

    history_length = 1

    def __init__(self, model: GoalMLP):
        self.model = model.eval()
        self.device = model.obs_mean.device

    @torch.no_grad()
    def plan(self, history: dict[str, Tensor], goals: Tensor, goal_steps: Tensor) -> Tensor:
        """(n, 1, A): the action towards ``goals[:, 0]`` from the newest observation."""
        return self.model(history["observations"][:, -1], goals[:, 0])[:, None]  # (n, 1, A)


# ---- Goal-GPT -------------------------------------------------------------------------------------------------
class GoalGPT(nn.Module):
    """Our causal ``ControlTransformer`` on observation tokens z(s_t) ‖ z(g) and action tokens, with the BC head."""

    def __init__(self, obs_dim: int, action_dim: int, obs_mean: Tensor, obs_std: Tensor, context_length: int = 32,
                 n_layer: int = 2, n_head: int = 4, n_embd: int = 128, dropout: float = 0.0, state_hidden: int = 256,
                 position_encoding: PositionEncoding = "relative_bias"):
        super().__init__()
        if context_length < 2:
            raise ValueError(f"goal reaching needs windows of at least 2 steps, got K = {context_length}")
        self.obs_dim = obs_dim
        self.trunk = ControlTransformer(ControlTransformerConfig(
            obs_type="state", obs_dim=2 * obs_dim, action_dim=action_dim, n_layer=n_layer, n_head=n_head,
            n_embd=n_embd, context_length=context_length, max_timestep=context_length, dropout=dropout,
            state_hidden=state_hidden, position_encoding=position_encoding))
        # z(s) ‖ z(g) by the trunk's own normaliser (state and goal share the statistics), stored with its weights
        mean = torch.as_tensor(obs_mean).float().reshape(obs_dim)
        std = torch.as_tensor(obs_std).float().reshape(obs_dim).clamp_min(1e-6)
        self.trunk.obs_normalizer.set_stats(mean.repeat(2), std.repeat(2), torch.zeros(2 * obs_dim, dtype=torch.long))
        self.bc = BehaviorCloningObjective(n_embd, action_dim)

    @property
    def context_length(self) -> int:
        return self.trunk.config.context_length

    def forward(self, obs: Tensor, actions: Tensor, goal: Tensor) -> Tensor:
        """obs (B, T, D) raw, actions (B, T or T-1, A), goal (B, D) raw -> (B, T, A) the action predicted at every
        observation token (causal: the one at t sees steps <= t and the goal)."""
        B, T, D = obs.shape
        batch = {
            "observations": torch.cat((obs, goal[:, None].expand(B, T, D)), -1),  # (B, T, 2D)
            "actions": actions,  # (B, T or T-1, A)
            "timesteps": torch.arange(T, device=obs.device).expand(B, T),  # (B, T) in-window steps
        }
        return self.bc.predict_actions(self.trunk, batch)  # (B, T, A)

    def loss(self, batch: dict[str, Tensor], goal_idx: Tensor) -> tuple[Tensor, Tensor]:
        """Action MSE over tokens t < goal_idx (B,) towards the state at goal_idx, and the predict-zero MSE of the
        same targets, from (B, K, ...) windows."""
        obs, act = batch["observations"], batch["actions"]  # (B, K, D), (B, K, A)
        rows = torch.arange(len(obs), device=obs.device)
        pred = self(obs, act, obs[rows, goal_idx])  # (B, K, A)
        steps = torch.arange(obs.shape[1], device=obs.device)  # (K,)
        before = (steps[None] < goal_idx[:, None]) & _labelled(batch)[:, None]  # (B, K)
        mask = batch.get("action_mask")
        return action_loss(pred, act, mask, before), action_loss(torch.zeros_like(act), act, mask, before)


def draw_goal_steps(batch_size: int, K: int, generator: torch.Generator) -> Tensor:
    """Goal-GPT's goal step per window, uniform in [1, K-1]."""
    return torch.randint(1, K, (batch_size,), generator=generator)  # (B,)


class GoalGPTPolicy:
    """A ``GoalGPT`` acting on the rollout's history and the nearest goal (eval/goal_reaching.py ``GoalPolicy``).

    The history is cut to the last T = min(len, K - h) steps for a goal h steps ahead (at least 1), so that the
    current token and the goal lie within one training window; rows with different T run as separate calls, so a
    row's action does not depend on the other rows of its batch."""

    def __init__(self, model: GoalGPT, history_length: int | None = None):
        K = model.context_length
        self.history_length = int(history_length or K - 1)
        if not 1 <= self.history_length <= K - 1:
            raise ValueError(f"history_length {history_length} must lie in [1, K-1 = {K - 1}]")
        self.model = model.eval()
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def plan(self, history: dict[str, Tensor], goals: Tensor, goal_steps: Tensor) -> Tensor:
        """(n, 1, A): the action towards ``goals[:, 0]``, clipped to [-1, 1]."""
        obs, acts = history["observations"], history["actions"]  # (n, T, D), (n, T-1, A)
        n, T = obs.shape[:2]
        K = self.model.context_length
        keep = (K - goal_steps[:, 0]).clamp(1, min(T, self.history_length))  # (n,) steps of history used
        out = obs.new_zeros(n, 1, acts.shape[-1])  # (n, 1, A)
        for length in keep.unique().tolist():
            rows = (keep == length).nonzero()[:, 0]
            pred = self.model(obs[rows, T - length :], acts[rows, T - length :], goals[rows, 0])  # (r, length, A)
            out[rows, 0] = pred[:, -1].clamp(-1.0, 1.0)
        return out


# ---- training -------------------------------------------------------------------------------------------------
def _labelled(batch: dict[str, Tensor]) -> Tensor:
    """(B,) windows whose actions are labels (heteromodal data zeroes the others, data/windows.py)."""
    has = batch.get("has_action")
    obs = batch["observations"]
    return torch.ones(len(obs), dtype=torch.bool, device=obs.device) if has is None else has.bool()


def _batches(source: Any) -> Iterator[dict[str, Tensor]]:
    """Endless batches of a DataModule's training loader or of any iterable of window batches (re-iterated)."""
    loader = source.train_dataloader() if hasattr(source, "train_dataloader") else source
    if isinstance(loader, Iterator):  # a generator cannot be restarted: it must be endless itself
        yield from loader
        return
    for _ in itertools.count():
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training loader yields no batches")


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[torch.Generator]:
    """Everything random inside (initialisation, dropout, the loader's base seed) follows ``seed``, and the global
    RNG state is restored afterwards; yields the generator of the goal draws."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def _on(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    out = {k: v.to(device) for k, v in batch.items() if isinstance(v, Tensor)}
    out["observations"], out["actions"] = out["observations"].float(), out["actions"].float()
    return out


def _fit(model: nn.Module, batches: Iterator[dict[str, Tensor]], first: dict[str, Tensor], steps: int,
         optimizer: torch.optim.Optimizer, step_loss, device: torch.device, grad_clip: float | None) -> dict[str, float]:
    """``steps`` optimiser steps; the first, last-``LAST_LOSSES`` mean and predict-zero losses."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    model.train()
    losses, zeros = [], []
    for batch in itertools.islice(itertools.chain([first], batches), steps):
        loss, zero = step_loss(_on(batch, device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        losses.append(loss.item())
        zeros.append(zero.item())
    model.eval()
    last = slice(-min(LAST_LOSSES, len(losses)), None)
    return {"loss_first": losses[0], "loss_last": sum(losses[last]) / len(losses[last]),
            "zero_loss_last": sum(zeros[last]) / len(zeros[last]), "steps": float(steps)}


def train_goal_mlp(source: Any, obs_mean: Tensor, obs_std: Tensor, steps: int, lr: float = 1e-3, seed: int = 0,
                   hidden: int = 256, n_hidden: int = 3, weight_decay: float = 1e-4,
                   device: str | torch.device = "cpu") -> tuple[GoalMLP, dict[str, float]]:
    """Train a ``GoalMLP`` for ``steps`` AdamW steps on the window batches of ``source`` (a DataModule or an
    iterable of batches); the model (eval mode) and its losses (``loss_first``, ``loss_last`` = the mean of the
    last steps, ``zero_loss_last`` = predicting zeros on the same targets). Deterministic given ``seed`` and the
    batches' order."""
    device = torch.device(device)
    with _seeded(seed, device) as gen:
        batches = _batches(source)
        first = next(batches)
        D, A = first["observations"].shape[-1], first["actions"].shape[-1]
        model = GoalMLP(D, A, obs_mean, obs_std, hidden, n_hidden).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

        def step_loss(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            t, h = draw_pairs(len(batch["observations"]), batch["observations"].shape[1], gen)
            return model.loss(batch, t.to(device), h.to(device))

        return model, _fit(model, batches, first, steps, opt, step_loss, device, None)


def train_goal_gpt(source: Any, obs_mean: Tensor, obs_std: Tensor, steps: int, lr: float = 6e-4, seed: int = 0,
                   n_layer: int = 2, n_head: int = 4, n_embd: int = 128, dropout: float = 0.0,
                   state_hidden: int = 256, position_encoding: PositionEncoding = "relative_bias",
                   weight_decay: float = 0.1, grad_clip: float | None = 1.0,
                   device: str | torch.device = "cpu") -> tuple[GoalGPT, dict[str, float]]:
    """Train a ``GoalGPT`` with K = the batches' window length for ``steps`` AdamW steps (weight decay on matrices
    only, ``param_groups``; gradient norm clipped as our CLI does) on the window batches of ``source``; the model
    (eval mode) and its losses, as ``train_goal_mlp``."""
    device = torch.device(device)
    with _seeded(seed, device) as gen:
        batches = _batches(source)
        first = next(batches)
        D, A, K = first["observations"].shape[-1], first["actions"].shape[-1], first["observations"].shape[1]
        model = GoalGPT(D, A, obs_mean, obs_std, K, n_layer, n_head, n_embd, dropout, state_hidden,
                        position_encoding).to(device)
        opt = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)

        def step_loss(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            return model.loss(batch, draw_goal_steps(len(batch["observations"]), K, gen).to(device))

        return model, _fit(model, batches, first, steps, opt, step_loss, device, grad_clip)

