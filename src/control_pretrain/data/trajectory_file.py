"""One dataset file opened for training: the small per-step arrays in RAM, the frames read on demand.

State, action and reward arrays of a 1M-step file take ~100 MB and are read ~30x faster from RAM than through
per-window h5py reads (platform.md §6), so they are loaded. Frames (21 KB a step) stay on disk unless the caller
grants a cache budget for them; a window of frames is one ``read_direct`` of at most two 32-step chunks.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DatasetError
from ..storage import blob as storage
from .episodes import EpisodeIndex
from .schema import open_h5, validate


class PixelReader:
    """Reads frame windows from one file; opens its HDF5 handle lazily in each process (DataLoader workers
    fork after construction, and h5py handles must not cross a fork)."""

    def __init__(self, path: str, num_steps: int, frame_shape: tuple[int, ...]) -> None:
        self.path, self.num_steps, self.frame_shape = path, num_steps, tuple(frame_shape)
        self._ram: np.ndarray | None = None
        self._h5 = None
        self._dset = None
        self._pid = None

    @property
    def nbytes(self) -> int:
        return self.num_steps * int(np.prod(self.frame_shape))

    def load_into_ram(self) -> None:
        with open_h5(self.path) as h5:
            self._ram = h5["pixels"][: self.num_steps]

    def _dataset(self):
        if self._dset is None or self._pid != os.getpid():
            # Small chunk cache: each window is read once, so caching chunks only costs memory. The Dataset object
            # is kept: looking it up per window made reads 1.4x slower (docs/benchmarks.md).
            # A remote file is read from its blob-cache copy, pinned against eviction while this process reads it.
            path = storage.local_path(self.path, pin=True) if storage.is_remote(self.path) else self.path
            self._h5 = open_h5(path, rdcc_nbytes=4 << 20)
            self._dset = self._h5["pixels"]
            self._pid = os.getpid()
        return self._dset

    def read_into(self, out: np.ndarray, start: int) -> None:
        """Fill ``out`` (K, 3, H, W) with frames [start, start + K)."""
        if self._ram is not None:
            out[...] = self._ram[start : start + len(out)]
        else:
            self._dataset().read_direct(out, np.s_[start : start + len(out)])

    def __getstate__(self):  # never pickle an open handle (spawned workers, DDP)
        state = self.__dict__.copy()
        state["_h5"], state["_dset"], state["_pid"] = None, None, None
        return state


class TrajectoryFile:
    """A validated dataset file truncated to whole episodes within ``max_steps``."""

    def __init__(self, path: str, max_steps: int | None = None, load_pixels: bool = False) -> None:
        info = validate(path)
        self.path, self.attrs = path, info.attrs
        self.domain, self.task = str(info.attrs["domain"]), str(info.attrs["task"])
        with open_h5(path) as h5:
            done = h5["terminals"][:] | h5["timeouts"][:]
            index = EpisodeIndex.from_done(done)
            n = index.num_steps
            if max_steps is not None and max_steps < n:
                # Keep whole episodes only: the last episode that ends within max_steps.
                keep = index.ends <= max_steps
                if not keep.any():
                    raise DatasetError(
                        f"{path}: --num_steps {max_steps} is shorter than the first episode "
                        f"({int(index.lengths[0])} steps); raise --num_steps."
                    )
                index = EpisodeIndex(index.starts[keep], index.ends[keep])
                n = index.num_steps
            self.index = index
            self.observations = h5["observations"][:n]
            self.actions = h5["actions"][:n]
            self.rewards = h5["rewards"][:n]
            self.num_steps = n
            self.pixels: PixelReader | None = None
            self._physics: np.ndarray | None = None  # read on first use (goal reaching)
            if load_pixels:
                if "pixels" not in h5:
                    raise DatasetError(
                        f"{path}: has no 'pixels' key, but pixel observations were asked for. Collect with "
                        "--pixels, or train with --obs_type state."
                    )
                self.pixels = PixelReader(path, n, h5["pixels"].shape[1:])

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    def read_physics(self) -> np.ndarray:
        """(N, state_dim) float32 recorded simulator states (goal reaching restores them), read once."""
        if self._physics is None:
            path = storage.local_path(self.path) if storage.is_remote(self.path) else self.path
            with open_h5(path) as h5:
                self._physics = h5["physics"][: self.num_steps]
        return self._physics

    def episode_returns(self) -> np.ndarray:
        return self.index.episode_sums(self.rewards)
