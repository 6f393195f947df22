"""Per-dimension observation statistics (mean, std) of state observations, per domain slot of the concatenated
layout (data/slots.py), from the training rows a run learns from.

Every state-based offline-RL codebase normalises observations and keeps the statistics with the model (D4RL's
TD3+BC, CORL, d3rlpy); SMART fed raw dm_control vectors, whose per-dimension std spans 0.05-10.7 in random
walker and cheetah data (docs/training.md). The model applies them (models/normalizer.py); this module computes
them and writes them as readable JSON.

- Statistics come from the training episodes only (held-out validation episodes are never read) and from the
  observation arrays ``TrajectoryFile`` already holds in RAM, never from frames.
- Each domain is measured over every training row of every file of that domain (walker-stand and walker-run
  share the walker slot). Outside its own slot a sample is padding: mean 0 and std 1 there, so it stays 0.
- Sums run in float64, chunk by chunk in file order, so every DDP rank (each computes the statistics of the whole
  training split, not of its share) gets bit-identical values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .slots import SlotLayout
from .trajectory_file import TrajectoryFile

# Near-constant dimensions are divided by this instead of their own std. It is 5x below the smallest std in
# random-policy data of seven dm_control domains (cheetah's root height, 0.05; docs/training.md), so it only acts
# on dimensions that do not move (a sensor that reads 0, or a few near-identical demonstrations); it caps the
# amplification at 100x, so a value that moves at rollout time becomes large but finite.
STD_FLOOR = 1e-2
# Rows per float64 temporary (bounds the memory of a 1M-step file to ~8 MB per chunk and dimension block).
CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations of a set of rows (float64), combinable in any grouping."""

    count: int
    mean: np.ndarray  # (d,)
    m2: np.ndarray  # (d,)

    @classmethod
    def of(cls, rows: np.ndarray) -> Moments:
        x = rows.astype(np.float64)
        mean = x.mean(0) if len(x) else np.zeros(x.shape[1])
        return cls(len(x), mean, ((x - mean) ** 2).sum(0))

    def __add__(self, other: Moments) -> Moments:
        """Chan et al.'s pairwise update: exact, and stable for large counts."""
        n = self.count + other.count
        if n == 0:
            return self
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / n
        return Moments(n, mean, m2)

    @property
    def std(self) -> np.ndarray:
        """Population std (ddof 0), as D4RL-style normalisers use."""
        return np.sqrt(self.m2 / max(self.count, 1))


@dataclass(frozen=True)
class ObsStats:
    """Per-dimension ``mean`` and ``std`` (float32, the layout's width) with the rows each domain came from.
    Padding of a sample (other domains' slots) is never normalised; domains without rows are identity."""

    layout: SlotLayout
    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    steps: dict[str, int | None]  # training rows per domain (0: identity; None: not known, e.g. from a checkpoint)

    @classmethod
    def identity(cls, layout: SlotLayout) -> ObsStats:
        return cls(layout, np.zeros(layout.size, np.float32), np.ones(layout.size, np.float32),
                   dict.fromkeys(layout.slots, 0))

    @classmethod
    def from_vectors(cls, layout: SlotLayout, mean: np.ndarray, std: np.ndarray) -> ObsStats:
        """Statistics a model already holds (its normaliser's buffers), e.g. loaded from a checkpoint."""
        return cls(layout, np.asarray(mean, np.float32), np.asarray(std, np.float32), dict.fromkeys(layout.slots))

    @classmethod
    def compute(cls, files: Sequence[TrajectoryFile], episodes: Sequence[np.ndarray | None],
                layout: SlotLayout) -> ObsStats:
        """Statistics of ``files[i]``'s ``episodes[i]`` (None: all its episodes), each in its domain's slot."""
        moments: dict[str, Moments] = {}
        for f, sel in zip(files, episodes):
            rows = np.arange(f.num_steps) if sel is None else f.index.select(sel)
            for lo in range(0, len(rows), CHUNK_ROWS):
                chunk = Moments.of(f.observations[rows[lo : lo + CHUNK_ROWS]])
                moments[f.domain] = moments[f.domain] + chunk if f.domain in moments else chunk
        stats = cls.identity(layout)
        for domain, m in moments.items():
            offset, size = layout.slots[domain]
            stats.mean[offset : offset + size] = m.mean
            stats.std[offset : offset + size] = np.maximum(m.std, STD_FLOOR)
            stats.steps[domain] = m.count
        return stats

    def slot_index(self) -> np.ndarray:
        """(D,) int64: the number of the slot (domain, in layout order) each dimension belongs to."""
        index = np.zeros(self.layout.size, np.int64)
        for i, (offset, size) in enumerate(self.layout.slots.values()):
            index[offset : offset + size] = i
        return index

    def to_json(self, source: str) -> dict:
        """Readable form: per domain its slot, rows, mean and std, and which dimensions hit the floor."""
        domains = {}
        for domain, (offset, size) in self.layout.slots.items():
            mean, std = self.mean[offset : offset + size], self.std[offset : offset + size]
            domains[domain] = {"slot": [offset, size], "steps": self.steps.get(domain),
                               "mean": [float(v) for v in mean], "std": [float(v) for v in std],
                               "floored_dims": [int(i) for i in np.flatnonzero(std <= STD_FLOOR)]}
        return {"source": source, "std_floor": STD_FLOOR, "domains": domains}

    def write_json(self, path: str, source: str) -> None:
        """Written to a temporary name and renamed, so a reader never sees half a file."""
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.to_json(source), f, indent=2)
        os.replace(tmp, path)
