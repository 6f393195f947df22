"""Finetuning data for one task (SMART ``DMCBCDataModule`` + ``create_selected_dataset``, smart.md §1.7), rebuilt.

Train on replay ``train_replay_id`` and validate on ``val_replay_id`` of ``{kind}_{domain}_{task}``. Behaviour
cloning keeps the top ``select_rate`` of episodes by return; return-conditioned control (``rand_select``) keeps a
random ``select_rate`` (mixed quality); validation always keeps the top ones, as in the reference.
Deliberate changes: the last episode is not dropped (a DT-Atari leftover), selected episodes keep their true
timesteps (the reference shifted them by one), the random choice has its own seed, ``num_episodes`` selects an
exact count for few-shot studies, and state observations get per-dimension statistics of the selected training
episodes (``obs_stats``; the module decides whether a checkpoint's win, lit/downstream_module.py).
"""

from __future__ import annotations

import numpy as np
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from ...envs.dmc import RenderConfig, check_task
from ...errors import DatasetError
from ...storage import blob as storage
from ..obs_stats import ObsStats
from ..schema import KINDS, dataset_path
from ..trajectory_file import TrajectoryFile
from ..windows import VALIDATION_CACHE_SHARE, EpisodeWindowDataset, window_loader


def select_episodes(returns: np.ndarray, count: int, randomly: bool, seed: int) -> np.ndarray:
    """Episode numbers: the ``count`` best by return, or ``count`` drawn uniformly without replacement."""
    count = min(max(1, count), len(returns))
    if randomly:
        return np.sort(np.random.default_rng(seed).choice(len(returns), count, replace=False))
    return np.sort(np.argsort(-returns, kind="stable")[:count])


class DownstreamDataModule(LightningDataModule):
    def __init__(
        self,
        domain: str = "cheetah",
        task: str = "run",
        source_data_type: str = "full",
        data_dir_prefix: str = "data",
        train_replay_id: int = 1,
        val_replay_id: int = 2,
        num_steps: int = 1_000_000,
        select_rate: float = 0.1,
        rand_select: bool = False,
        num_episodes: int | None = None,
        selection_seed: int = 0,
        obs_type: str = "pixels",
        context_length: int = 30,
        batch_size: int = 256,
        num_workers: int = 2,
        pixel_cache_gb: float = 2.0,
        cache_dir: str | None = None,
        cache_size_gb: float | None = None,
        normalize_obs: bool = True,
    ) -> None:
        """
        Args:
            domain: dm_control domain of the downstream task.
            task: dm_control task.
            source_data_type: full (fullcollect: SAC replay, as in the reference) or rand (randcollect).
            data_dir_prefix: root of the dataset layout.
            train_replay_id: replay id of the training file.
            val_replay_id: replay id of the validation file (a different run of the same task).
            num_steps: steps read from each file (first ones, whole episodes).
            select_rate: fraction of episodes kept (at least one).
            rand_select: keep a random fraction (return-conditioned control) instead of the best by return (BC).
            num_episodes: keep exactly this many episodes instead of select_rate (few-shot studies).
            selection_seed: seed of the random selection.
            obs_type: pixels or state (set from --model.obs_type).
            context_length: K steps per window (set from --model.context_length).
            batch_size: windows per batch and per device.
            num_workers: DataLoader worker processes.
            pixel_cache_gb: frames of whole files kept in RAM up to this size; the rest are read from disk.
            cache_dir: local cache of files read from an Azure Blob prefix (az://..., docs/blob.md); default
                $CONTROL_PRETRAIN_BLOB_CACHE_DIR or ~/.cache/control_pretrain/blob.
            cache_size_gb: size cap of cache_dir, least recently opened files evicted first; default
                $CONTROL_PRETRAIN_BLOB_CACHE_GB or 50.
            normalize_obs: state observations of a domain the checkpoint has not seen (or from scratch) are
                normalised with the mean and std of the selected training episodes; a seen domain keeps the
                checkpoint's statistics either way. false: raw observations for them, as before.
        """
        super().__init__()
        self.save_hyperparameters()
        storage.configure(cache_dir, cache_size_gb)
        check_task(domain, task)
        if source_data_type not in KINDS:
            raise DatasetError(f"--data.source_data_type must be one of {sorted(KINDS)}, not '{source_data_type}'.")
        if train_replay_id == val_replay_id:
            raise DatasetError(f"train and validation replay ids are both {train_replay_id}; pick two runs.")
        kind = KINDS[source_data_type]
        self.train_path = dataset_path(data_dir_prefix, kind, domain, task, train_replay_id)
        self.val_path = dataset_path(data_dir_prefix, kind, domain, task, val_replay_id)
        if storage.is_remote(data_dir_prefix):
            storage.check_container(data_dir_prefix)  # names container and prefix when missing
        missing = [storage.display(p) for p in (self.train_path, self.val_path) if not storage.exists(p)]
        if not missing and storage.is_remote(data_dir_prefix):
            storage.prefetch([self.train_path, self.val_path])
        if missing:
            policy = "random" if source_data_type == "rand" else "sac"
            raise DatasetError(
                f"dataset file(s) missing: {', '.join(missing)}. Collect them first, e.g. `python src/dmc_data.py "
                f"collect --domain {domain} --task {task} --policy {policy} --replay_id {train_replay_id} "
                f"{val_replay_id} --data_dir_prefix {data_dir_prefix}" + (" --pixels" if obs_type == "pixels" else "")
                + "`."
            )
        train, val = (TrajectoryFile(p, max_steps=num_steps, load_pixels=obs_type == "pixels")
                      for p in (self.train_path, self.val_path))
        self.train_file, self.val_file = train, val
        self.train_set: EpisodeWindowDataset | None = None
        self.val_set: EpisodeWindowDataset | None = None
        self.obs_stats: ObsStats | None = None  # set in setup (state observations with normalize_obs)

    @property
    def obs_dim(self) -> int:
        return self.train_file.obs_dim

    @property
    def action_dim(self) -> int:
        return self.train_file.action_dim

    def _count(self, num_all: int) -> int:
        hp = self.hparams
        return hp.num_episodes if hp.num_episodes else int(hp.select_rate * num_all)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        cache = int(hp.pixel_cache_gb * 2**30)
        returns = self.train_file.episode_returns()
        self.train_episodes = select_episodes(returns, self._count(len(returns)), hp.rand_select, hp.selection_seed)
        val_returns = self.val_file.episode_returns()
        self.val_episodes = select_episodes(val_returns, self._count(len(val_returns)), False, hp.selection_seed)
        common = {"state": hp.obs_type == "state", "pixels": hp.obs_type == "pixels"}
        self.train_set = EpisodeWindowDataset([self.train_file], hp.context_length, [self.train_episodes],
                                              pixel_cache_bytes=cache, **common)
        self.val_set = EpisodeWindowDataset([self.val_file], hp.context_length, [self.val_episodes],
                                            pixel_cache_bytes=int(cache * VALIDATION_CACHE_SHARE), **common)
        if hp.normalize_obs and hp.obs_type == "state":  # the episodes the policy is trained on
            self.obs_stats = ObsStats.compute([self.train_file], [self.train_episodes], self.train_set.obs_layout)

    def env_kwargs(self) -> dict:
        """``make_env`` arguments that evaluate in the conditions the training data was collected in (action
        repeat, render size, camera, fast rendering), from the training file's attributes."""
        attrs, pixels, default = self.train_file.attrs, self.hparams.obs_type == "pixels", RenderConfig()
        camera = int(attrs.get("render_camera", -1))
        return {
            "action_repeat": int(attrs["action_repeat"]),
            "pixels": pixels,
            "height": int(attrs.get("render_height") or default.height),
            "width": int(attrs.get("render_width") or default.width),
            "camera_id": camera if camera >= 0 else default.camera_id,
            "fast_render": bool(attrs.get("render_fast", False)) and pixels,
        }

    def selection_summary(self) -> dict:
        returns = self.train_file.episode_returns()[self.train_episodes]
        return {"train_episodes": len(self.train_episodes), "train_return_mean": float(returns.mean()),
                "train_return_min": float(returns.min()), "train_return_max": float(returns.max())}

    def train_dataloader(self) -> DataLoader:
        return window_loader(self.train_set, self.hparams.batch_size, self.hparams.num_workers, shuffle=True,
                             trainer=self.trainer)

    def val_dataloader(self) -> DataLoader:
        return window_loader(self.val_set, self.hparams.batch_size, self.hparams.num_workers, shuffle=False,
                             trainer=self.trainer)

    def test_dataloader(self) -> DataLoader:
        """``trainer.test`` (the final report) measures the validation losses of the tested checkpoint on the
        held-out replay; its rollouts run in eval/callback.py."""
        return self.val_dataloader()
