"""Multi-task pretraining data (SMART ``DMCMultiDomainDataModule``, smart.md §1.6), rebuilt.

For every (domain, task) of the ``--multi_config`` task set, every data kind of ``--source_data_type`` and every
replay id 1..``--train_replay_id``, the first ``--num_steps`` steps (whole episodes) of
``{prefix}/{kind}_{domain}_{task}/{domain}_{task}_s{id}.h5`` are used. Deliberate changes from the reference:
- a real validation split: held-out *episodes* of every file (or a held-out replay id), never the training set;
- windows never cross episodes in any file (the reference's boundaries were wrong after the first buffer);
- frames stay uint8 until they reach the model, and are read lazily beyond ``pixel_cache_gb``;
- every missing file is named before training starts, with the command that makes it;
- state observations get per-dimension statistics of the training split (``obs_stats``, data/obs_stats.py),
  which the module hands to the model (``normalize_obs``);
- heteromodal data (MTM, ``action_label_fraction``): the action-labelled episodes are a seeded random choice among
  each file's training episodes, where the MTM reference took the first 5% in file order (mtm_maskdp.md §A.11 #4).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from ...errors import DatasetError
from ...storage import blob as storage
from ..obs_stats import ObsStats
from ..schema import KINDS, dataset_path, open_h5
from ..slots import SlotLayout
from ..task_sets import load_task_set
from ..trajectory_file import TrajectoryFile
from ..windows import VALIDATION_CACHE_SHARE, EpisodeWindowDataset, window_loader

log = logging.getLogger(__name__)


def split_episodes(num_episodes: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) episode numbers; at least one episode each side when there are two or more."""
    order = np.random.default_rng(seed).permutation(num_episodes)
    n_val = 0 if num_episodes < 2 or val_fraction <= 0 else min(num_episodes - 1, max(1, round(val_fraction * num_episodes)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def choose_labelled(train_episodes: np.ndarray, fraction: float, seed: tuple[int, ...]) -> np.ndarray:
    """A seeded random ``max(1, round(fraction * n))`` of the n training episodes: those with action labels."""
    count = max(1, round(fraction * len(train_episodes)))
    return np.sort(np.random.default_rng(seed).choice(train_episodes, count, replace=False))


class MultiTaskDataModule(LightningDataModule):
    def __init__(
        self,
        multi_config: str = "configs/pretrain_configs/multipretrain_source_test.json",
        source_data_type: str = "rand",
        train_replay_id: int = 1,
        val_replay_id: int | None = None,
        num_steps: int = 80000,
        data_dir_prefix: str = "data",
        obs_type: str = "pixels",
        context_length: int = 30,
        batch_size: int = 256,
        num_workers: int = 2,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        pixel_cache_gb: float = 2.0,
        cache_dir: str | None = None,
        cache_size_gb: float | None = None,
        normalize_obs: bool = True,
        action_label_fraction: float = 1.0,
    ) -> None:
        """
        Args:
            multi_config: task-set JSON, ``{"walker": ["stand", "run"], "cheetah": ["run"]}``.
            source_data_type: rand (randcollect), full (fullcollect, SAC replay) or mix (both, half the steps each).
            train_replay_id: use replay ids 1..N of every task.
            val_replay_id: validate on this replay id instead of held-out episodes (must not be in 1..N).
            num_steps: steps per replay id (first ones, whole episodes).
            data_dir_prefix: root of the dataset layout.
            obs_type: pixels or state (set from --model.obs_type).
            context_length: K steps per window (set from --model.context_length).
            batch_size: windows per batch and per device.
            num_workers: DataLoader worker processes.
            val_fraction: fraction of each file's episodes held out for validation (when no val_replay_id).
            split_seed: seed of the held-out episode choice (the same on every rank).
            pixel_cache_gb: frames of whole files kept in RAM up to this size; the rest are read from disk.
            cache_dir: local cache of files read from an Azure Blob prefix (az://..., docs/blob.md); default
                $CONTROL_PRETRAIN_BLOB_CACHE_DIR or ~/.cache/control_pretrain/blob.
            cache_size_gb: size cap of cache_dir, least recently opened files evicted first; default
                $CONTROL_PRETRAIN_BLOB_CACHE_GB or 50.
            normalize_obs: normalise state observations per dimension with the mean and std of the training
                split, per domain (the model applies them); false feeds raw observations, as before.
            action_label_fraction: fraction of each file's training episodes whose actions are labelled (seeded
                by split_seed); the others are served with zero actions and has_action false (heteromodal MTM).
        """
        super().__init__()
        self.save_hyperparameters()
        storage.configure(cache_dir, cache_size_gb)
        if source_data_type not in ("rand", "full", "mix"):
            raise DatasetError(f"--source_data_type must be rand, full or mix, not '{source_data_type}'.")
        if val_replay_id is not None and 1 <= val_replay_id <= train_replay_id:
            raise DatasetError(f"--data.val_replay_id {val_replay_id} is also a training replay id (1..{train_replay_id}).")
        if not 0 < action_label_fraction <= 1:
            raise DatasetError(f"--data.action_label_fraction must be in (0, 1] (the fraction of training episodes "
                               f"whose actions are labelled), not {action_label_fraction}.")
        self.tasks = [(d, t) for d, ts in load_task_set(multi_config).items() for t in ts]
        kinds = [KINDS[k] for k in (("rand", "full") if source_data_type == "mix" else (source_data_type,))]
        self.steps_per_file = num_steps // len(kinds)
        ids = list(range(1, train_replay_id + 1))
        self.train_paths = [(dataset_path(data_dir_prefix, k, d, t, r), ti)
                            for ti, (d, t) in enumerate(self.tasks) for k in kinds for r in ids]
        self.val_paths = ([(dataset_path(data_dir_prefix, k, d, t, val_replay_id), ti)
                           for ti, (d, t) in enumerate(self.tasks) for k in kinds] if val_replay_id else [])
        self._check_files_exist()
        self.obs_layout, self.action_layout = self._read_layouts()
        self.train_set: EpisodeWindowDataset | None = None
        self.val_set: EpisodeWindowDataset | None = None
        self.obs_stats: ObsStats | None = None  # set in setup (state observations with normalize_obs)

    def _check_files_exist(self) -> None:
        if storage.is_remote(self.hparams.data_dir_prefix):
            storage.check_container(self.hparams.data_dir_prefix)  # names container and prefix when missing
        paths = list(dict.fromkeys(p for p, _ in self.train_paths + self.val_paths))
        missing = [storage.display(p) for p in paths if not storage.exists(p)]
        if not missing and storage.is_remote(self.hparams.data_dir_prefix):
            storage.prefetch(paths)  # parallel downloads into the blob cache: cold start bounded by bandwidth
        if missing:
            hp = self.hparams
            listing = "\n  ".join(missing)
            raise DatasetError(
                f"{len(missing)} dataset file(s) missing under --data_dir_prefix {hp.data_dir_prefix}:\n  {listing}\n"
                "Collect them first, e.g. `python src/dmc_data.py collect --multi_config "
                f"{hp.multi_config} --policy random --num_steps {hp.num_steps} --replay_id "
                f"{' '.join(str(i) for i in range(1, hp.train_replay_id + 1))} --data_dir_prefix {hp.data_dir_prefix}"
                + (" --pixels" if hp.obs_type == "pixels" else "") + "`."
            )

    def _read_layouts(self) -> tuple[SlotLayout, SlotLayout]:
        """Slot layouts from the file headers only (cheap), so sizes are known before ``setup``."""
        obs, act = [], []
        for path, ti in self.train_paths:
            with open_h5(path) as h5:
                domain = self.tasks[ti][0]
                for key in ("observations", "actions"):
                    if key not in h5:
                        raise DatasetError(f"{path}: missing key '{key}'; check it with `dmc_data.py inspect`.")
                obs.append((domain, h5["observations"].shape[1]))
                act.append((domain, h5["actions"].shape[1]))
        return SlotLayout.from_sizes(obs), SlotLayout.from_sizes(act)

    @property
    def obs_dim(self) -> int:
        return self.obs_layout.size

    @property
    def action_dim(self) -> int:
        return self.action_layout.size

    def _open(self, paths: list[tuple[str, int]]) -> list[TrajectoryFile]:
        pixels = self.hparams.obs_type == "pixels"
        files = [TrajectoryFile(p, max_steps=self.steps_per_file, load_pixels=pixels) for p, _ in paths]
        for f, (p, ti) in zip(files, paths):
            if (f.domain, f.task) != self.tasks[ti]:
                raise DatasetError(f"{p}: holds {f.domain}-{f.task} data, but its path says {self.tasks[ti]}.")
        return files

    def _dataset(self, files, paths, episodes, cache_bytes: int, labelled=None) -> EpisodeWindowDataset:
        hp = self.hparams
        return EpisodeWindowDataset(
            files, hp.context_length, episodes=episodes, task_ids=[ti for _, ti in paths],
            obs_layout=self.obs_layout, action_layout=self.action_layout, state=hp.obs_type == "state",
            pixels=hp.obs_type == "pixels", pixel_cache_bytes=cache_bytes, labelled_episodes=labelled,
        )

    def _labelled(self, files, train_eps) -> list[np.ndarray] | None:
        """Per file, the action-labelled training episodes (None: all labelled, the default)."""
        hp = self.hparams
        if hp.action_label_fraction == 1:
            return None
        train_eps = [np.arange(f.index.num_episodes) if e is None else e for f, e in zip(files, train_eps)]
        labelled = [choose_labelled(e, hp.action_label_fraction, (hp.split_seed, i, 1))
                    for i, e in enumerate(train_eps)]
        log.info("action labels on %d of %d training episodes (--data.action_label_fraction %g)",
                 sum(map(len, labelled)), sum(map(len, train_eps)), hp.action_label_fraction)
        return labelled

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        cache = int(hp.pixel_cache_gb * 2**30)
        files = self._open(self.train_paths)
        if self.val_paths:
            train_eps = [None] * len(files)
            self.val_set = self._dataset(self._open(self.val_paths), self.val_paths, None,
                                         int(cache * VALIDATION_CACHE_SHARE))
        else:
            splits = [split_episodes(f.index.num_episodes, hp.val_fraction, hp.split_seed + i)
                      for i, f in enumerate(files)]
            train_eps = [s[0] for s in splits]
            if any(len(s[1]) for s in splits):
                # Same file objects, other episodes: the frames cached for training serve validation too.
                self.val_set = self._dataset(files, self.train_paths, [s[1] for s in splits], 0)
        self.train_set = self._dataset(files, self.train_paths, train_eps, cache, self._labelled(files, train_eps))
        if hp.normalize_obs and hp.obs_type == "state":
            # The whole training split on every rank (not a rank's share), so every rank gets the same numbers.
            start = time.perf_counter()
            self.obs_stats = ObsStats.compute(files, train_eps, self.obs_layout)
            log.info("observation statistics of %d training steps computed in %.2f s",
                     sum(self.obs_stats.steps.values()), time.perf_counter() - start)

    def train_dataloader(self) -> DataLoader:
        return window_loader(self.train_set, self.hparams.batch_size, self.hparams.num_workers, shuffle=True,
                             trainer=self.trainer)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return window_loader(self.val_set, self.hparams.batch_size, self.hparams.num_workers, shuffle=False,
                             trainer=self.trainer)

    def state_dict(self) -> dict:
        """Stored in checkpoints so finetuning knows which slot belongs to which domain."""
        return {"obs_layout": self.obs_layout.to_dict(), "action_layout": self.action_layout.to_dict(),
                "tasks": [list(t) for t in self.tasks]}
