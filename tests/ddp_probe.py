"""A callback for the DDP tests: each rank writes what it trained on and its weights' fingerprints to
``{out_dir}/rank{r}.json``. Passed to the real CLI with ``--trainer.callbacks`` (tests/ is on PYTHONPATH), so
the processes Lightning launches load it too."""

import hashlib
import json
import os

import torch
from lightning.pytorch import Callback

from control_pretrain.lit.probes import RepresentationProbes


def fingerprint(module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def window_keys(batch) -> list[str]:
    """A window is identified by its task and its first observation (continuous states never repeat)."""
    first = batch["observations"][:, 0].numpy()
    return [f"{int(t)}:{hashlib.sha1(row.tobytes()).hexdigest()}" for t, row in zip(batch["task_id"], first)]


class RecordWindows(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.windows: dict[int, list[str]] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial_target = fingerprint(pl_module.model.target_obs_encoder)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.windows:
            self.rng = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
        self.windows.setdefault(trainer.current_epoch, []).extend(window_keys(batch))

    def on_train_end(self, trainer, pl_module) -> None:
        dataset = trainer.datamodule.train_set
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "windows": self.windows,
            "all_windows": window_keys(dataset.__getitems__(range(len(dataset)))),
            "initial_target": self.initial_target,
            "target": fingerprint(pl_module.model.target_obs_encoder),
            "online": fingerprint(pl_module.model.obs_encoder),
            "rng": self.rng,  # torch's RNG state at the first training step
            # this rank's own computation of the observation statistics (DDP would broadcast rank 0's buffers)
            "obs_stats": hashlib.sha256(trainer.datamodule.obs_stats.mean.tobytes()
                                        + trainer.datamodule.obs_stats.std.tobytes()).hexdigest(),
            "normalizer": fingerprint(pl_module.model.obs_normalizer),
            # this rank's own representation-probe values of the last validation epoch, before any sync
            "probe_scores": next((c.last_scores for c in trainer.callbacks if isinstance(c, RepresentationProbes)), None),
        }
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)


class RecordMasks(Callback):
    """MTM: the visible mask (B, K, M) each training step showed on this rank, in step order."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.masks: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.masks.append(pl_module.mtm.last_visible.tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump({"rank": trainer.global_rank, "masks": self.masks}, f)
