"""One dataset file opened for training: the small per-step arrays in RAM, the frames read on demand.

State, action and reward arrays of a 1M-step file take ~100 MB and are read ~30x faster from RAM than through
per-window h5py reads (platform.md §6), so they are loaded. Frames (21 KB a step) stay on disk unless the caller
grants a cache budget for them. A window of frames spans at most two 32-step chunks; when the file stores them
uncompressed (what our collectors write), each chunk's part is one ``os.preadv`` at the chunk's byte offset into
the batch array, 3x faster than h5py's ``read_direct`` (docs/benchmarks.md, "Pixel windows"); files with compressed
or filtered frames are read through h5py. (A ``np.memmap`` was as fast, but every page it touched counted in the
process's resident memory, which then exceeded the cache budget by the size of the file.)
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
        self._chunks: tuple[np.ndarray, int] | None = None  # byte offset of each chunk (raw_chunk_offsets)
        self._fd: int | None = None
        self._pid = None

    @property
    def nbytes(self) -> int:
        return self.num_steps * int(np.prod(self.frame_shape))

    def load_into_ram(self) -> None:
        with open_h5(self.path) as h5:
            self._ram = h5["pixels"][: self.num_steps]

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        # Small chunk cache: each window is read once, so caching chunks only costs memory. The Dataset object
        # is kept: looking it up per window made reads 1.4x slower (docs/benchmarks.md).
        # A remote file is read from its blob-cache copy, pinned against eviction while this process reads it.
        path = storage.local_path(self.path, pin=True) if storage.is_remote(self.path) else self.path
        self._h5 = open_h5(path, rdcc_nbytes=4 << 20)
        self._dset = self._h5["pixels"]
        self._chunks = raw_chunk_offsets(self._dset, self.num_steps)
        self._fd = os.open(path, os.O_RDONLY) if self._chunks is not None else None
        self._pid = os.getpid()

    def read_into(self, out: np.ndarray, start: int) -> None:
        """Fill ``out`` (K, 3, H, W), C-contiguous, with frames [start, start + K)."""
        if self._ram is not None:
            out[...] = self._ram[start : start + len(out)]
            return
        self._open()
        if self._chunks is None:
            self._dset.read_direct(out, np.s_[start : start + len(out)])
            return
        offsets, steps = self._chunks
        frame_bytes = out[0].nbytes
        end = start + len(out)
        for c in range(start // steps, (end - 1) // steps + 1):  # at most two chunks for K <= steps + 1
            lo, hi = max(start, c * steps), min(end, (c + 1) * steps)
            part = memoryview(out[lo - start : hi - start]).cast("B")
            got = os.preadv(self._fd, [part], int(offsets[c]) + (lo - c * steps) * frame_bytes)
            if got != len(part):
                raise DatasetError(f"{self.path}: frames {lo}..{hi - 1} are cut short on disk ({got} of "
                                   f"{len(part)} bytes); the file is truncated. Re-collect or re-download it.")

    def __getstate__(self):  # never pickle an open handle (spawned workers, DDP)
        state = self.__dict__.copy()
        state["_h5"], state["_dset"], state["_chunks"], state["_fd"], state["_pid"] = None, None, None, None, None
        return state


def raw_chunk_offsets(dset, num_steps: int) -> tuple[np.ndarray, int] | None:
    """The byte offset in the file of each chunk of ``dset`` (frames, N x 3 x H x W uint8) in step order, and the
    chunk length in steps; None where the raw bytes are not the frames (filters such as compression) or the layout
    is not whole-frame chunks, and the caller reads through h5py. The offsets come from HDF5's chunk index; the
    file format is unchanged."""
    if dset.chunks is None or dset.id.get_create_plist().get_nfilters() or dset.dtype != np.uint8:
        return None
    steps = dset.chunks[0]
    if dset.chunks[1:] != dset.shape[1:]:
        return None
    n_chunks = -(-num_steps // steps)
    offsets = np.full(n_chunks, -1, np.int64)
    for i in range(dset.id.get_num_chunks()):  # HDF5's chunk index, in storage order
        info = dset.id.get_chunk_info(i)
        c = info.chunk_offset[0] // steps
        if c < n_chunks:
            offsets[c] = info.byte_offset
    if (offsets < 0).any():  # a chunk never written reads as zeros through h5py
        return None
    return offsets, steps


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
