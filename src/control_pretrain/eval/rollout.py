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
- Each observation is encoded once (issue 16): with an ``IncrementalPolicy`` the context ring holds observation
  encodings instead of frames, so a step runs the encoder on the new observation only (the CNN encoded all K
  frames of the window at every step before), and the trunk's last block computes the last token only. Actions
  equal the re-encoding path's to float32 round-off (tests/test_rollout.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.slots import SlotLayout
from ..envs.dmc import DMCEnv
from .policies import IncrementalPolicy, Policy


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


def _layout(layout: SlotLayout | None, domain: str, size: int, what: str) -> SlotLayout:
    """The policy's layout, or the env's own width; a layout without a ``size``-wide slot for ``domain`` is an
    error (a model of another domain mix, or another observation size)."""
    layout = SlotLayout.single(domain, size) if layout is None else layout
    if not layout.fits(domain, size):
        raise ValueError(f"{what} slot layout {layout.slots} has no {size}-wide slot for domain '{domain}' "
                         f"(the environment's {what} width)")
    return layout


@torch.inference_mode()
def evaluate(
    policy: Policy,
    make_env_fn: Callable[[int], DMCEnv],
    seeds: Sequence[int],
    max_steps: int | None = None,
    record_video: bool = False,
    keep_history: bool = False,
    incremental: bool | None = None,
) -> EpisodeResults:
    """Run one episode per seed, all side by side, with one batched ``policy`` call per time step.

    Args:
        policy: a ``Policy`` (eval/policies.py): batch -> (B, T, A) action predictions at every observation token,
            plus its context length, observation kind, target return (None: behaviour cloning, no ``rtg`` key),
            slot layouts (None: the env's own widths) and device (the context buffers are kept there).
        make_env_fn: seed -> a fresh ``DMCEnv`` (made with ``pixels=True`` for pixel policies).
        seeds: one environment seed per episode (the number of episodes is ``len(seeds)``).
        max_steps: stop every episode after this many steps (default: at the environment's time limit).
        record_video: keep the frames of the first episode (``EpisodeResults.frames``).
        keep_history: keep every episode's inputs (``EpisodeResults.histories``; tests and debugging).
        incremental: encode each observation once (``IncrementalPolicy``); None: whenever the policy can; False:
            re-encode the whole window at every step through ``policy(batch)`` (the reference's work per step).
    """
    obs_type, target_return, device = policy.obs_type, policy.target_return, policy.device
    if obs_type not in ("state", "pixels"):
        raise ValueError(f"obs_type must be 'state' or 'pixels', got {obs_type!r}")
    seeds, K = [int(s) for s in seeds], int(policy.context_length)
    if not seeds:
        raise ValueError("evaluate needs at least one seed")
    envs = [make_env_fn(s) for s in seeds]
    N, rtg_mode, pixels = len(envs), target_return is not None, obs_type == "pixels"
    domain = envs[0].domain
    if pixels and policy.obs_layout is not None:
        raise ValueError("an observation slot layout only applies to state observations")
    obs_layout = None if pixels else _layout(policy.obs_layout, domain, envs[0].obs_dim, "observation")
    action_layout = _layout(policy.action_layout, domain, envs[0].action_dim, "action")
    a_offset, a_size = action_layout.slots[domain]

    def observe(i: int, flat_obs: np.ndarray) -> np.ndarray:
        return envs[i].render() if pixels else obs_layout.place(domain, flat_obs)

    start = time.perf_counter()
    obs = [observe(i, env.reset()) for i, env in enumerate(envs)]  # the only reset of each episode
    # Ring buffers of the last K steps on the model's device: step j lives at column j % K.
    can = isinstance(policy, IncrementalPolicy)
    if incremental and not can:
        raise ValueError(f"{type(policy).__name__} has no encode/act methods: it cannot run incrementally")
    incremental = can if incremental is None else incremental
    obs_key = "pixels" if pixels else "observations"
    # Frames or vectors (or, incremental, their encodings: allocated at the first encode) of the last K steps.
    obs_ring = None if incremental else torch.zeros((N, K, *obs[0].shape),
                                                    dtype=torch.uint8 if pixels else torch.float32, device=device)
    act_ring = torch.zeros((N, K, action_layout.size), dtype=torch.float32, device=device)
    rtg_ring = torch.zeros((N, K), dtype=torch.float32, device=device)
    rtg = np.full(N, target_return if rtg_mode else 0.0, np.float64)
    returns, lengths = np.zeros(N, np.float64), np.zeros(N, np.int64)
    live = np.ones(N, bool)
    frames: list[np.ndarray] = []
    hist = [{k: [] for k in ("obs", "actions", "rewards", "timesteps", "rtg")} for _ in range(N)]
    in_slot = torch.zeros(action_layout.size, dtype=torch.bool, device=device)
    in_slot[a_offset : a_offset + a_size] = True

    try:
        j = 0
        while live.any():
            idx = np.flatnonzero(live)
            rows = torch.as_tensor(idx, device=device)
            new_obs = torch.as_tensor(np.stack([obs[i] for i in idx]), device=device)  # (n, ...)
            # The slot each sample's observations sit in, as training batches carry it.
            domain_id = None if pixels else torch.full((len(idx),), obs_layout.number(domain), device=device)
            if incremental:
                step_batch = {obs_key: new_obs[:, None]} | ({} if pixels else {"domain_id": domain_id})
                encoded = policy.encode(step_batch)[:, 0]  # (n, C)
                if obs_ring is None:
                    obs_ring = torch.zeros((N, K, encoded.shape[-1]), dtype=encoded.dtype, device=device)
                obs_ring[rows, j % K] = encoded
            else:
                obs_ring[rows, j % K] = new_obs
            rtg_ring[rows, j % K] = torch.as_tensor(rtg[idx], dtype=torch.float32, device=device)
            T = min(j + 1, K)
            steps = torch.arange(j - T + 1, j + 1, device=device)  # per-step timesteps, as training windows carry
            cols = steps % K
            batch = {
                "obs_emb" if incremental else obs_key: obs_ring[rows[:, None], cols],  # (n, T, ...)
                "actions": act_ring[rows[:, None], cols[:-1]],  # (n, T-1, A): ends with the newest observation
                "timesteps": steps.expand(len(idx), T),  # (n, T)
            }
            if domain_id is not None:
                batch["domain_id"] = domain_id  # (n,)
            if rtg_mode:
                batch["rtg"] = rtg_ring[rows[:, None], cols]  # (n, T)
            # Act on the last observation token.
            if incremental:
                last = policy.act(batch)  # (n, A)
                got, expected = tuple(last.shape), (len(idx), action_layout.size)
            else:
                pred = policy(batch)  # (n, T, A)
                last, got, expected = pred[:, -1], tuple(pred.shape), (len(idx), T, action_layout.size)
            if got != expected:
                raise ValueError(f"the policy returned {got}, expected {expected}")
            # Outside this domain's slot the fed-back action is zero, as in the zero-padded multi-domain data.
            action = torch.where(in_slot, last.float().clamp(-1.0, 1.0), 0.0)  # (n, A)
            act_ring[rows, j % K] = action
            action_np = action.cpu().numpy()
            env_actions = action_layout.take(domain, action_np)
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
