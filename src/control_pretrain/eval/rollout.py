"""Batched deterministic policy evaluation in dm_control (SMART ``CTLitModule.get_return_dmc``, smart.md §3.5).

Reference behaviour kept: deterministic actions (the head output) clipped to [-1, 1]; in RTG mode the first
return-to-go is the target return (smart.md §1.8) and each reward is subtracted from it after the step.

Fixes of the reference (smart.md §3.5, §3.6, §5.2.3, §5.2.5):
- One reset per episode. The original chose the first action from one ``reset()`` and applied it after a second.
- The context equals a training window: at step j the model sees the T = min(j+1, K) observations o_{j-T+1..j},
  the T-1 actions a_{j-T+1..j-1} before them, per-step timesteps j-T+1..j and (RTG mode) rtg_{j-T+1..j}. The
  oldest action is always dropped so the sequence ends with the newest observation; the original kept K actions
  once j >= K, which put every action one slot late, and passed j as one timestep for the whole window.
- Every episode has its own environment seed (the original always used task seed 1, so every evaluation
  replayed the same 50 initial states).
- Episodes run side by side: each has its own env, stepped in a Python loop, but the policy is called once per
  time step for all live episodes (250 batched calls for 50 episodes instead of 12,500 batch-1 calls).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..envs.dmc import DMCEnv

PolicyFn = Callable[[dict[str, Tensor]], Tensor]  # batch -> (B, T, A) predictions, one per observation token


@dataclass(frozen=True)
class Slot:
    """Where one domain's vector sits in a concatenated multi-domain vector (``data.windows.SlotLayout``):
    ``size`` values at ``offset`` of a ``total``-wide vector that is zero elsewhere."""

    offset: int
    size: int
    total: int

    def place(self, x: np.ndarray) -> np.ndarray:
        """(N, size) -> (N, total), zero outside the slot."""
        out = np.zeros((x.shape[0], self.total), np.float32)
        out[:, self.offset : self.offset + self.size] = x
        return out

    def take(self, y: np.ndarray) -> np.ndarray:
        return y[..., self.offset : self.offset + self.size]


@dataclass
class EpisodeResults:
    """What ``evaluate`` returns, one entry per episode in the order of ``seeds``."""

    returns: np.ndarray  # (N,) undiscounted returns
    lengths: np.ndarray  # (N,) agent steps
    seeds: list[int]  # the environment seed of each episode
    steps_per_sec: float  # agent steps of all episodes / wall time from the resets to the end (model included)
    wall_time_s: float
    frames: np.ndarray | None = None  # (L, 3, H, W) uint8, first episode, the frame before each action
    # Per episode, if keep_history: observations (L, D) or pixels (L, 3, H, W), actions (L, A) as fed back to the
    # model (model layout, clipped), rewards (L,), timesteps (L,), rtg (L,) in RTG mode.
    histories: list[dict[str, np.ndarray]] | None = None


def make_policy(model: torch.nn.Module, objective: torch.nn.Module) -> PolicyFn:
    """A ``policy_fn`` from a ``ControlTransformer`` and a policy objective (``predict_actions``)."""

    def policy_fn(batch: dict[str, Tensor]) -> Tensor:
        if model.training or objective.training:
            raise RuntimeError("call .eval() on the model and the objective first: dropout makes the policy random")
        return objective.predict_actions(model, batch)

    return policy_fn


def _slot(slot: Slot | tuple[int, int, int] | None, size: int, what: str) -> Slot:
    slot = Slot(0, size, size) if slot is None else slot if isinstance(slot, Slot) else Slot(*slot)
    if slot.size != size or slot.offset + slot.size > slot.total:
        raise ValueError(f"{what} slot {slot} does not fit the environment's {what} width {size}")
    return slot


@torch.inference_mode()
def evaluate(
    policy_fn: PolicyFn,
    make_env_fn: Callable[[int], DMCEnv],
    seeds: Sequence[int],
    context_length: int,
    obs_type: str = "state",
    target_return: float | None = None,
    device: str | torch.device = "cpu",
    obs_slot: Slot | tuple[int, int, int] | None = None,
    action_slot: Slot | tuple[int, int, int] | None = None,
    max_steps: int | None = None,
    record_video: bool = False,
    keep_history: bool = False,
) -> EpisodeResults:
    """Run one episode per seed, all side by side, with one batched ``policy_fn`` call per time step.

    Args:
        policy_fn: batch -> (B, T, A) action predictions at every observation token (``make_policy``); the model
            must be in eval mode. Batch keys: ``observations`` (B, T, D) float32 or ``pixels`` (B, T, 3, H, W)
            uint8, ``actions`` (B, T-1, A), ``timesteps`` (B, T) int64, and ``rtg`` (B, T) float32 in RTG mode.
        make_env_fn: seed -> a fresh ``DMCEnv`` (made with ``pixels=True`` for pixel policies).
        seeds: one environment seed per episode (the number of episodes is ``len(seeds)``).
        context_length: K, the model's window.
        obs_type: "state" (flat observations) or "pixels" (``env.render()`` frames).
        target_return: RTG mode: the first return-to-go; None: behaviour cloning (no ``rtg`` key).
        device: where the model lives; the context buffers are kept there.
        obs_slot / action_slot: ``Slot(offset, size, total)`` of this domain in a multi-domain model's
            concatenated layout (default: the env's own widths).
        max_steps: stop every episode after this many steps (default: at the environment's time limit).
        record_video: keep the frames of the first episode (``EpisodeResults.frames``).
        keep_history: keep every episode's inputs (``EpisodeResults.histories``; tests and debugging).
    """
    if obs_type not in ("state", "pixels"):
        raise ValueError(f"obs_type must be 'state' or 'pixels', got {obs_type!r}")
    seeds, K = [int(s) for s in seeds], int(context_length)
    if not seeds:
        raise ValueError("evaluate needs at least one seed")
    envs = [make_env_fn(s) for s in seeds]
    N, rtg_mode, pixels = len(envs), target_return is not None, obs_type == "pixels"
    if pixels and obs_slot is not None:
        raise ValueError("obs_slot only applies to state observations")
    obs_slot = None if pixels else _slot(obs_slot, envs[0].obs_dim, "observation")
    action_slot = _slot(action_slot, envs[0].action_dim, "action")

    def observe(i: int, flat_obs: np.ndarray) -> np.ndarray:
        return envs[i].render() if pixels else obs_slot.place(flat_obs[None])[0]

    start = time.perf_counter()
    obs = [observe(i, env.reset()) for i, env in enumerate(envs)]  # the only reset of each episode
    # Ring buffers of the last K steps on the model's device: step j lives at column j % K.
    obs_ring = torch.zeros((N, K, *obs[0].shape), dtype=torch.uint8 if pixels else torch.float32, device=device)
    act_ring = torch.zeros((N, K, action_slot.total), dtype=torch.float32, device=device)
    rtg_ring = torch.zeros((N, K), dtype=torch.float32, device=device)
    rtg = np.full(N, target_return if rtg_mode else 0.0, np.float64)
    returns, lengths = np.zeros(N, np.float64), np.zeros(N, np.int64)
    live = np.ones(N, bool)
    frames: list[np.ndarray] = []
    hist = [{k: [] for k in ("obs", "actions", "rewards", "timesteps", "rtg")} for _ in range(N)]
    in_slot = torch.zeros(action_slot.total, dtype=torch.bool, device=device)
    in_slot[action_slot.offset : action_slot.offset + action_slot.size] = True

    try:
        j = 0
        while live.any():
            idx = np.flatnonzero(live)
            rows = torch.as_tensor(idx, device=device)
            obs_ring[rows, j % K] = torch.as_tensor(np.stack([obs[i] for i in idx]), device=device)
            rtg_ring[rows, j % K] = torch.as_tensor(rtg[idx], dtype=torch.float32, device=device)
            T = min(j + 1, K)
            steps = torch.arange(j - T + 1, j + 1, device=device)  # per-step timesteps, as training windows carry
            cols = steps % K
            batch = {
                "pixels" if pixels else "observations": obs_ring[rows[:, None], cols],  # (n, T, ...)
                "actions": act_ring[rows[:, None], cols[:-1]],  # (n, T-1, A): ends with the newest observation
                "timesteps": steps.expand(len(idx), T),  # (n, T)
            }
            if rtg_mode:
                batch["rtg"] = rtg_ring[rows[:, None], cols]  # (n, T)
            pred = policy_fn(batch)  # (n, T, A)
            if pred.shape[:2] != (len(idx), T) or pred.shape[-1] != action_slot.total:
                expected = (len(idx), T, action_slot.total)
                raise ValueError(f"policy_fn returned {tuple(pred.shape)}, expected {expected}")
            # Act on the last observation token; outside this domain's slot the fed-back action is zero, as in the
            # zero-padded multi-domain training data.
            action = torch.where(in_slot, pred[:, -1].float().clamp(-1.0, 1.0), 0.0)  # (n, A)
            act_ring[rows, j % K] = action
            action_np = action.cpu().numpy()
            env_actions = action_slot.take(action_np)
            for n, i in enumerate(idx):
                if record_video and i == 0:
                    frames.append(obs[0] if pixels else envs[0].render())
                if keep_history:
                    for key, value in (("obs", obs[i]), ("actions", action_np[n]), ("timesteps", j),
                                       ("rtg", rtg[i])):
                        hist[i][key].append(value)
                flat, reward, terminal, timeout = envs[i].step(env_actions[n])
                returns[i] += reward
                rtg[i] -= reward
                lengths[i] += 1
                if keep_history:
                    hist[i]["rewards"].append(reward)
                if terminal or timeout or (max_steps is not None and lengths[i] >= max_steps):
                    live[i] = False
                else:
                    obs[i] = observe(i, flat)
            j += 1
        wall = time.perf_counter() - start
    finally:
        for env in envs:
            env.close()

    histories = None
    if keep_history:
        histories = []
        for h in hist:
            ep = {"pixels" if pixels else "observations": np.stack(h["obs"]), "actions": np.stack(h["actions"]),
                  "rewards": np.asarray(h["rewards"], np.float64), "timesteps": np.asarray(h["timesteps"], np.int64)}
            if rtg_mode:
                ep["rtg"] = np.asarray(h["rtg"], np.float64)
            histories.append(ep)
    return EpisodeResults(
        returns=returns, lengths=lengths, seeds=seeds, steps_per_sec=float(lengths.sum() / wall), wall_time_s=wall,
        frames=np.stack(frames) if frames else None, histories=histories,
    )
