"""The acting-time frame stack of pixel agents (CURL/MLR stack 3 frames): the same stacks the replay buffer builds
at sample time (agents/replay.py ``frame_stack``), so the agent acts on what it learned from. After a reset the
first frame fills the whole stack, as frame-stacking environment wrappers do (DrQ, CURL)."""

from __future__ import annotations

from collections import deque

import numpy as np


class FrameStack:
    """The last ``k`` frames (C, H, W) of an episode, concatenated along channels: (k * C, H, W), oldest first."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"a frame stack needs k >= 1 frames, got {k}")
        self.k = k
        self._frames: deque[np.ndarray] = deque(maxlen=k)

    def reset(self, frame: np.ndarray) -> np.ndarray:
        """Start an episode at ``frame``; returns its stack (the frame repeated k times)."""
        self._frames.clear()
        self._frames.extend([frame] * self.k)
        return self.stack()

    def push(self, frame: np.ndarray) -> np.ndarray:
        """Add the newest frame of the episode; returns the stack."""
        if not self._frames:
            raise RuntimeError("call reset(frame) at the start of an episode before push")
        self._frames.append(frame)
        return self.stack()

    def stack(self) -> np.ndarray:
        return np.concatenate(self._frames, axis=0)
