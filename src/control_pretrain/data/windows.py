"""Fixed-length windows of K consecutive steps that never cross an episode, file or task boundary.

All valid window starts are enumerated once (vectorised, from each file's episode index), so drawing a window is
an O(1) lookup, and a whole batch is one fancy-indexed gather (``__getitems__``, which torch's DataLoader calls
with the batch's indices). This replaces the reference's per-sample linear scan over ``done_idxs``, which also
let windows straddle episodes after the first buffer (smart.md §1.5, §5.2.4, §5.3).

Several domains are combined in a concatenated slot layout (smart.md §2.8): each domain's observation and action
vectors sit in their own slice of one wider vector, zero elsewhere, and ``action_mask`` marks the domain's slice
so losses can ignore the padding.

Heteromodal data (MTM, Wu et al. 2023; mtm_maskdp.md §A.8): some episodes may have no action labels. Their
actions are zeroed when the dataset is built, so no code path can read them, and ``has_action`` (B,) marks each
window so the model can hide its action tokens; a window lies in one episode, so its first step's label is its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DatasetError
from .episodes import EpisodeIndex
from .slots import SlotLayout
from .trajectory_file import TrajectoryFile

# A separate validation set gets this share of ``pixel_cache_gb`` and training windows the whole budget:
# validation reads its (smaller) windows once per epoch, training many times.
VALIDATION_CACHE_SHARE = 0.25


def passthrough_collate(batch):
    """The dataset already returns whole batches from ``__getitems__``."""
    return batch


class ShardedSampler(Sampler[int]):
    """Each rank's share of one epoch's window order: disjoint across ranks, the same on every run.

    The order is a permutation seeded by ``(seed, epoch)`` (``set_epoch``, which Lightning calls every epoch), or
    ``0..n-1`` without shuffling; rank r of w takes every w-th index from position r. Training drops the last
    ``n mod w`` indices so every rank runs the same number of steps (DDP needs it); validation keeps every index,
    so shares differ by at most one window and no window is counted twice. torch's ``DistributedSampler``, which
    Lightning would otherwise swap in, pads the last shares with repeated windows instead.
    """

    def __init__(self, num_windows: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.num_windows, self.shuffle, self.seed = num_windows, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        n = self.num_windows
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(n)
            order = order[: n - n % self.world_size]
        else:
            order = np.arange(n)
        return iter(order[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        n = self.num_windows
        if self.shuffle:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))


def window_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool, trainer=None) -> DataLoader:
    """Training loaders shuffle and drop the last partial batch; validation loaders keep every window in order.
    Under DDP each rank reads its own ``ShardedSampler`` share (rank and world size from ``trainer``), seeded by
    ``--seed_everything``; the CLIs turn Lightning's own sampler replacement off (``use_distributed_sampler``)."""
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
    sampler = ShardedSampler(len(dataset), shuffle, seed, rank, world)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=shuffle, num_workers=num_workers,
                      collate_fn=passthrough_collate, persistent_workers=num_workers > 0)


class EpisodeWindowDataset(Dataset):
    """Windows over one or more ``TrajectoryFile``s.

    Args:
        files: the files; each is its own task segment, so no window crosses files.
        context_length: K, the steps per window.
        episodes: per file, the episode numbers to draw windows from (None: all).
        task_ids: per file, an integer task id returned with each window (default: the file's position).
        obs_layout / action_layout: slot layouts by domain (default: one slot per domain in file order).
        state: return ``observations``; pixels: return ``pixels`` (uint8; the files must hold frames).
        pixel_cache_bytes: frames of whole files are loaded into RAM while they fit in this budget (shared with
            forked DataLoader workers); the rest are read from disk per window.
        labelled_episodes: per file, the episode numbers whose actions are labelled (None: all); the others are
            served with zero actions and ``has_action`` False.
    """

    def __init__(
        self,
        files: Sequence[TrajectoryFile],
        context_length: int,
        episodes: Sequence[np.ndarray | None] | None = None,
        task_ids: Sequence[int] | None = None,
        obs_layout: SlotLayout | None = None,
        action_layout: SlotLayout | None = None,
        state: bool = True,
        pixels: bool = False,
        pixel_cache_bytes: int = 0,
        labelled_episodes: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        if not files:
            raise DatasetError("no dataset files were given")
        self.files, self.K, self.state, self.pixels = list(files), int(context_length), state, pixels
        self.obs_layout = obs_layout or SlotLayout.from_sizes([(f.domain, f.obs_dim) for f in files])
        self.action_layout = action_layout or SlotLayout.from_sizes([(f.domain, f.action_dim) for f in files])
        domains = list(self.action_layout.slots)
        if state and list(self.obs_layout.slots) != domains:  # domain_id numbers the slots of both layouts
            raise ValueError(f"observation layout {self.obs_layout.slots} and action layout "
                             f"{self.action_layout.slots} list their domains in different orders")
        task_ids = list(task_ids) if task_ids is not None else list(range(len(files)))
        episodes = list(episodes) if episodes is not None else [None] * len(files)
        labelled = list(labelled_episodes) if labelled_episodes is not None else [None] * len(files)

        sizes = [f.num_steps for f in files]
        self.file_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self.file_offsets[-1])
        self.observations = np.zeros((total, self.obs_layout.size), np.float32) if state else None
        self.actions = np.zeros((total, self.action_layout.size), np.float32)
        self.rewards = np.empty(total, np.float32)
        self.rtg = np.empty(total, np.float32)
        self.rtg_avg = np.empty(total, np.float32)
        self.has_action = np.ones(total, bool)
        self.timesteps = np.empty(total, np.int64)
        self.action_masks = np.zeros((len(files), self.action_layout.size), np.float32)
        self.file_task = np.asarray(task_ids, np.int64)
        self.file_domain = np.asarray([domains.index(f.domain) for f in files], np.int64)

        starts, window_file = [], []
        for i, (f, sel, lab) in enumerate(zip(files, episodes, labelled)):
            lo, hi = self.file_offsets[i], self.file_offsets[i + 1]
            a_off, a_dim = self.action_layout.slots[f.domain]
            self.actions[lo:hi, a_off : a_off + a_dim] = f.actions
            if lab is not None:
                self.has_action[lo:hi] = np.isin(f.index.episode_of_step(), lab)
                self.actions[lo:hi][~self.has_action[lo:hi]] = 0.0
            self.action_masks[i, a_off : a_off + a_dim] = 1.0
            if state:
                o_off, o_dim = self.obs_layout.slots[f.domain]
                self.observations[lo:hi, o_off : o_off + o_dim] = f.observations
            self.rewards[lo:hi] = f.rewards
            self.rtg[lo:hi] = f.index.returns_to_go(f.rewards)
            self.rtg_avg[lo:hi] = f.index.average_returns_to_go(f.rewards)
            self.timesteps[lo:hi] = f.index.timesteps()
            index = f.index if sel is None else EpisodeIndex(f.index.starts[sel], f.index.ends[sel])
            s = index.window_starts(self.K) + lo
            starts.append(s)
            window_file.append(np.full(len(s), i, np.int32))
        self.starts = np.concatenate(starts)
        self.window_file = np.concatenate(window_file)
        if len(self.starts) == 0:
            raise DatasetError(
                f"no complete window of {self.K} steps in {', '.join(f.path for f in files)}: every selected "
                "episode is shorter than the context length. Lower --model.context_length or use longer episodes."
            )
        self._arange = np.arange(self.K)
        if pixels:
            budget = pixel_cache_bytes
            for f in files:
                if f.pixels is None:
                    raise DatasetError(f"{f.path}: opened without frames, but pixel windows were asked for.")
                if f.pixels.nbytes <= budget:
                    f.pixels.load_into_ram()
                    budget -= f.pixels.nbytes

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        starts = self.starts[idx]  # (B,)
        steps = starts[:, None] + self._arange  # (B, K)
        files = self.window_file[idx]
        batch = {
            "actions": self.actions[steps],  # (B, K, A)
            "rewards": self.rewards[steps],  # (B, K)
            "rtg": self.rtg[steps],  # (B, K)
            "rtg_avg": self.rtg_avg[steps],  # (B, K) MTM's return token
            "timesteps": self.timesteps[steps],  # (B, K)
            "action_mask": self.action_masks[files],  # (B, A)
            "task_id": self.file_task[files],  # (B,)
            "domain_id": self.file_domain[files],  # (B,) slot number in both layouts
            "has_action": self.has_action[starts],  # (B,) false: actions are zeros, not labels
        }
        if self.state:
            batch["observations"] = self.observations[steps]  # (B, K, D)
        if self.pixels:
            frames = np.empty((len(idx), self.K, *self.files[0].pixels.frame_shape), np.uint8)  # (B, K, 3, H, W)
            for b, (start, fi) in enumerate(zip(starts, files)):
                self.files[fi].pixels.read_into(frames[b], int(start - self.file_offsets[fi]))
            batch["pixels"] = frames
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}
