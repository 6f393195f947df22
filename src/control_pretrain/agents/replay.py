"""The replay buffer every online agent learns from: a ring of rows that stores each observation once.

Layout: one row per agent step (its observation, action, reward and ``not_done``) and, after the last step of an
episode, one extra *final row* holding the observation after the last action (no action of its own). The next
observation of row ``i`` is then always row ``i + 1`` (mod capacity), so there is no second ``next_obs`` array:
for pixel agents (MLR/MWM, uint8 frames of shape (C, H, W)) this halves the memory (SAC-AE kept both).

A row can be sampled when ``has_next[i]`` (its successor row holds its next observation) and it is not the newest
row (whose successor is not written yet, or, once the ring is full, is the oldest row). Final rows, and episode
ends whose final observation is unknown (a resumed collection, collect/sac.py), have ``has_next = False``.
Sampling is uniform over sampleable rows, by redrawing the few unsampleable picks (about one row per episode).

Frame stacks (pixel agents: CURL/MLR stack 3 frames) are built at sample time from single-frame rows
(``frame_stack``): a row's stack is its frame and the ``frame_stack - 1`` frames before it in its episode, the
episode's first frame repeated before its start (what frame-stacking environment wrappers show after a reset). The
reference stored the 9-channel stacks of both obs and next_obs, 6x the memory (mlr_mwm.md §A.7.4). Where the ring
has overwritten the start of an episode, its oldest surviving row counts as its start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .tensors import rng_state_from_torch, rng_state_to_torch

# Redraw rounds before giving up: only a buffer with (almost) no complete transition needs more than a few.
MAX_REDRAWS = 100


@dataclass(frozen=True)
class ReplayCursor:
    """Where the buffer stood at an episode boundary (cheap: counters and the RNG state), for ``rollback``."""

    pos: int
    size: int
    rows_written: int
    rng_state: dict


class ReplayBuffer:
    """Fixed-capacity rows in numpy (the oldest are overwritten once full); samples torch batches on ``device``."""

    def __init__(self, obs_shape: tuple[int, ...] | int, action_dim: int, capacity: int, seed: int = 0,
                 obs_dtype: np.dtype | type = np.float32, device: str | torch.device = "cpu",
                 frame_stack: int = 1) -> None:
        obs_shape = (obs_shape,) if isinstance(obs_shape, int) else tuple(obs_shape)
        if frame_stack < 1 or (frame_stack > 1 and len(obs_shape) != 3):
            raise ValueError(f"frame_stack={frame_stack} needs frames of shape (C, H, W), got rows of {obs_shape}")
        self.frame_stack = frame_stack
        self.obs = np.zeros((capacity, *obs_shape), obs_dtype)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.not_dones = np.zeros(capacity, np.float32)  # 0 after a true termination (never at a DMC time limit)
        self.has_next = np.zeros(capacity, bool)
        self.capacity, self.pos, self.size, self.rows_written = capacity, 0, 0, 0
        self.rng = np.random.default_rng(seed)
        self.device = torch.device(device)

    @property
    def num_transitions(self) -> int:
        """Rows that can be sampled now."""
        n = int(self.has_next[: self.size].sum())
        return n - int(self.size > 0 and self.has_next[(self.pos - 1) % self.capacity])

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, not_dones: np.ndarray,
            episode_ends: np.ndarray, final_obs: np.ndarray | None = None) -> None:
        """Append ``n`` consecutive steps (n, ...) in one vectorised write. ``episode_ends[i]`` marks the last step
        of an episode; ``final_obs`` (k, ...) holds the observations after the first k of those ends (in order), each
        written as a final row right after its end. Ends beyond the first k get no next observation."""
        obs = np.asarray(obs)
        n = len(obs)
        ends = np.asarray(episode_ends, bool).reshape(n)
        final_obs = np.zeros((0, *self.obs.shape[1:]), self.obs.dtype) if final_obs is None else np.asarray(final_obs)
        end_rows = np.flatnonzero(ends)
        known = np.zeros(n, bool)
        known[end_rows[: len(final_obs)]] = True  # steps followed by a final row
        # row offsets (within this write) of each step and of each final row
        step_offset = np.arange(n) + np.concatenate([[0], np.cumsum(known)[:-1]])
        final_offset = step_offset[known] + 1
        m = n + len(final_offset)
        rows_obs = np.empty((m, *self.obs.shape[1:]), self.obs.dtype)
        rows_obs[step_offset] = obs
        rows_obs[final_offset] = final_obs[: len(final_offset)]
        has_next = np.zeros(m, bool)
        has_next[step_offset] = ~ends | known
        actions_m, rewards_m, not_dones_m = (np.zeros((m, *a.shape[1:]), a.dtype) for a in
                                             (self.actions, self.rewards, self.not_dones))
        actions_m[step_offset] = actions
        rewards_m[step_offset] = np.asarray(rewards, np.float32).reshape(n)
        not_dones_m[step_offset] = np.asarray(not_dones, np.float32).reshape(n)
        # a write longer than the ring keeps its newest rows, where row-by-row writes would have left them
        keep = slice(max(0, m - self.capacity), m)
        idx = (self.pos + np.arange(keep.start, m)) % self.capacity
        self.obs[idx], self.actions[idx], self.rewards[idx] = rows_obs[keep], actions_m[keep], rewards_m[keep]
        self.not_dones[idx], self.has_next[idx] = not_dones_m[keep], has_next[keep]
        self.pos = (self.pos + m) % self.capacity
        self.size = min(self.size + m, self.capacity)
        self.rows_written += m

    def add_step(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminal: bool,
                 timeout: bool) -> None:
        """One environment step as the loop sees it. DMC time limits are not terminations: bootstrap through them
        (SAC-AE's ``done_bool`` is 0 at the time limit). With ``frame_stack`` > 1 the observations may be the
        stacks the agent sees (envs/pixel_env.py): only their newest frame is stored, the rest is rebuilt."""
        end = terminal or timeout
        if self.frame_stack > 1 and obs.shape != self.obs.shape[1:]:
            obs, next_obs = self.newest_frame(obs), self.newest_frame(next_obs)
        self.add(obs[None], action[None], np.array([reward]), np.array([0.0 if terminal else 1.0]),
                 np.array([end]), next_obs[None] if end else None)

    def newest_frame(self, stack: np.ndarray) -> np.ndarray:
        """The last frame (C, H, W) of a frame stack (frame_stack * C, H, W)."""
        if stack.shape != self.stacked_shape:
            raise ValueError(f"expected a frame or a stack of {self.frame_stack} frames {self.stacked_shape}, got "
                             f"{stack.shape}")
        return stack[-self.obs.shape[1]:]

    @property
    def stacked_shape(self) -> tuple[int, ...]:
        """The shape of one sampled observation: (frame_stack * C, H, W) for stacked frames, else a row's."""
        shape = self.obs.shape[1:]
        return (self.frame_stack * shape[0], *shape[1:]) if self.frame_stack > 1 else shape

    def stacked(self, rows: np.ndarray) -> np.ndarray:
        """Observations of ``rows`` (n,) with their frame stacks: (n, frame_stack * C, H, W), oldest frame first."""
        if self.frame_stack == 1:
            return self.obs[rows]
        oldest = self.pos if self.size == self.capacity else 0
        frames, cur = [rows], rows
        for _ in range(self.frame_stack - 1):
            prev = (cur - 1) % self.capacity
            starts = ~self.has_next[prev] | (cur == oldest)  # a row after a final row (or the oldest) starts
            cur = np.where(starts, cur, prev)
            frames.insert(0, cur)
        return np.concatenate([self.obs[f] for f in frames], axis=1)

    def _sampleable(self, idx: np.ndarray) -> np.ndarray:
        return self.has_next[idx] & (idx != (self.pos - 1) % self.capacity)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """(obs, action, reward (B, 1), next_obs, not_done (B, 1)) on the buffer's device, uniform over sampleable
        rows (same seed and adds: same batches)."""
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        idx = self.rng.integers(0, self.size, batch_size)
        bad = ~self._sampleable(idx)
        for _ in range(MAX_REDRAWS):  # about one row in 250 is unsampleable: one redraw round is the rule
            if not bad.any():
                break
            idx[bad] = self.rng.integers(0, self.size, int(bad.sum()))
            bad = ~self._sampleable(idx)
        else:
            raise ValueError(f"the replay buffer holds too few complete transitions to sample ({self.num_transitions})")
        nxt = (idx + 1) % self.capacity
        arrays = (self.stacked(idx), self.actions[idx], self.rewards[idx, None], self.stacked(nxt),
                  self.not_dones[idx, None])
        return tuple(torch.from_numpy(a).to(self.device, non_blocking=True) for a in arrays)

    def sample_clips(self, batch_size: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(obs (B, K, ...), actions (B, K, A)) of ``length`` consecutive steps inside one episode each (MLR's
        clips), uniform over the valid starts: every row of a clip is a sampleable step row, so a clip never
        crosses an episode end or the write head (the reference drew 256 candidates and kept the first 128 without
        an episode end, and did not reject windows across the write head, mlr_mwm.md §A.7.7)."""
        rows = self.clip_rows(batch_size, length)  # (B, K)
        obs = self.stacked(rows.reshape(-1)).reshape(*rows.shape, *self.stacked_shape)
        return (torch.from_numpy(obs).to(self.device, non_blocking=True),
                torch.from_numpy(self.actions[rows]).to(self.device, non_blocking=True))

    def sample_sequences(self, batch_size: int, length: int) -> dict[str, torch.Tensor]:
        """The clips of ``sample_clips`` (same rows for the same RNG state) with what a world model also needs
        (MWM, agents/mwm/): ``obs`` (B, K, ...), ``actions`` (B, K, A) (taken from each row's observation),
        ``rewards`` (B, K) (the reward that followed each action) and ``is_first`` (B, K) bool (the row starts its
        episode, or is the oldest surviving row of an episode the ring has cut)."""
        rows = self.clip_rows(batch_size, length)  # (B, K)
        obs = self.stacked(rows.reshape(-1)).reshape(*rows.shape, *self.stacked_shape)
        arrays = {"obs": obs, "actions": self.actions[rows], "rewards": self.rewards[rows],
                  "is_first": self.is_first(rows)}
        return {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in arrays.items()}

    def is_first(self, rows: np.ndarray) -> np.ndarray:
        """Whether each row (any shape) is the first surviving row of its episode: its predecessor is a final row
        (or an unknown episode end), or it is the oldest row of the ring."""
        oldest = self.pos if self.size == self.capacity else 0
        return ~self.has_next[(rows - 1) % self.capacity] | (rows == oldest)

    def clip_rows(self, batch_size: int, length: int) -> np.ndarray:
        """Rows (B, K) of ``batch_size`` windows of ``length`` sampleable step rows inside one episode each."""
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        offsets = np.arange(length)

        def valid(starts: np.ndarray) -> np.ndarray:
            rows = (starts[:, None] + offsets) % self.capacity  # (n, K)
            return (rows < self.size).all(1) & self._sampleable(rows).all(1)

        starts = self.rng.integers(0, self.size, batch_size)
        bad = ~valid(starts)
        for _ in range(MAX_REDRAWS * 10):  # a clip of 16 misses an episode end about 6% of the time
            if not bad.any():
                break
            starts[bad] = self.rng.integers(0, self.size, int(bad.sum()))
            bad = ~valid(starts)
        else:
            raise ValueError(f"the replay buffer holds no {length}-step clip inside one episode to sample")
        return (starts[:, None] + offsets) % self.capacity  # (B, K)

    # -- snapshot and resume -------------------------------------------------------------------------------------
    def cursor(self) -> ReplayCursor:
        return ReplayCursor(self.pos, self.size, self.rows_written, self.rng.bit_generator.state)

    def rollback(self, cursor: ReplayCursor) -> bool:
        """Forget the rows written since ``cursor`` (an episode cut short by an interruption). Exact (returns True)
        unless those rows already overwrote old ones in a full ring: they then stay, unsampleable at their end."""
        since = self.rows_written - cursor.rows_written
        exact = cursor.size + since <= self.capacity
        if since and not exact:
            self.has_next[(self.pos - 1) % self.capacity] = False
        self.pos, self.rows_written = cursor.pos, cursor.rows_written
        self.size = cursor.size if exact else self.size
        self.rng.bit_generator.state = cursor.rng_state
        return exact

    def state_dict(self) -> dict:
        """Everything ``load_state_dict`` needs to continue exactly (torch tensors: loads with weights_only)."""
        n = self.size
        return {"obs": torch.from_numpy(self.obs[:n]), "actions": torch.from_numpy(self.actions[:n]),
                "rewards": torch.from_numpy(self.rewards[:n]), "not_dones": torch.from_numpy(self.not_dones[:n]),
                "has_next": torch.from_numpy(self.has_next[:n]), "pos": self.pos, "size": n,
                "rows_written": self.rows_written, "capacity": self.capacity,
                "rng": rng_state_to_torch(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity or tuple(state["obs"].shape[1:]) != self.obs.shape[1:]:
            raise ValueError(f"saved replay has capacity {state['capacity']} and rows {tuple(state['obs'].shape[1:])}, "
                             f"this buffer {self.capacity} and {self.obs.shape[1:]}")
        n = int(state["size"])
        for name in ("obs", "actions", "rewards", "not_dones", "has_next"):
            getattr(self, name)[:n] = state[name].numpy()
        self.pos, self.size, self.rows_written = int(state["pos"]), n, int(state["rows_written"])
        self.rng.bit_generator.state = rng_state_from_torch(state["rng"])

