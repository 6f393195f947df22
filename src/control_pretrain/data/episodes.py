"""Episode index of a flat step sequence, computed once and vectorised from ``terminals | timeouts``.

Fixes two reference behaviours (smart.md §1.5, §5.2.4, §5.3): episode ends are read from the data, never from a
hard-coded length of 250, and returns-to-go are a reverse cumulative sum rather than an O(L^2) loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EpisodeIndex:
    starts: np.ndarray  # (E,) int64, first step of each episode
    ends: np.ndarray  # (E,) int64, one past the last step

    @classmethod
    def from_done(cls, done: np.ndarray) -> EpisodeIndex:
        """``done[i]`` marks the last step of an episode; steps after the last ``done`` form a final episode."""
        done = np.asarray(done, dtype=bool)
        ends = np.flatnonzero(done) + 1
        if len(ends) == 0 or ends[-1] != len(done):
            ends = np.append(ends, len(done))
        ends = ends[ends > 0]
        starts = np.concatenate([[0], ends[:-1]])
        return cls(starts.astype(np.int64), ends.astype(np.int64))

    @property
    def num_episodes(self) -> int:
        return len(self.starts)

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts

    @property
    def num_steps(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def episode_of_step(self) -> np.ndarray:
        """(N,) episode number of every step."""
        return np.repeat(np.arange(self.num_episodes), self.lengths)

    def timesteps(self) -> np.ndarray:
        """(N,) in-episode step number, 0 at each episode start."""
        return np.arange(self.num_steps) - np.repeat(self.starts, self.lengths)

    def episode_sums(self, rewards: np.ndarray) -> np.ndarray:
        """(E,) return of every episode, accumulated in float64."""
        csum = np.concatenate([[0.0], np.cumsum(rewards, dtype=np.float64)])
        return csum[self.ends] - csum[self.starts]

    def _sums_to_end(self, rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N,) float64 sum of rewards from each step to the end of its episode, and (N,) steps left (>= 1)."""
        csum = np.concatenate([[0.0], np.cumsum(rewards, dtype=np.float64)])
        end_of_step = np.repeat(self.ends, self.lengths)
        return csum[end_of_step] - csum[:-1], end_of_step - np.arange(self.num_steps)

    def returns_to_go(self, rewards: np.ndarray) -> np.ndarray:
        """(N,) float32: sum of rewards from each step to the end of its episode (undiscounted)."""
        return self._sums_to_end(rewards)[0].astype(np.float32)

    def average_returns_to_go(self, rewards: np.ndarray) -> np.ndarray:
        """(N,) float32: MTM's return token (Wu et al. 2023), the mean reward over the rest of the episode,
        ``sum_{k>=t} r_k / (L - t)``, bounded by the reward range (SMART's summed RTG saturates its encoder). It
        includes r_t and divides by the true steps left: the reference's D4RL loader excluded r_t and divided by
        1000 - t even after early termination, its Adroit loader did as here (mtm_maskdp.md §A.11 #7)."""
        sums, left = self._sums_to_end(rewards)
        return (sums / left).astype(np.float32)

    def window_starts(self, length: int) -> np.ndarray:
        """(W,) int64: every start s such that [s, s+length) lies inside one episode."""
        counts = np.maximum(self.lengths - length + 1, 0)
        if counts.sum() == 0:
            return np.zeros(0, dtype=np.int64)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return np.repeat(self.starts, counts) + offsets

    def select(self, episodes: np.ndarray) -> np.ndarray:
        """(M,) step indices of the given episodes, in the order given."""
        episodes = np.asarray(episodes, dtype=np.int64)
        lengths = self.lengths[episodes]
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return np.repeat(self.starts[episodes], lengths) + offsets
