"""Callbacks every run gets: throughput and data-wait share of the step time."""

from __future__ import annotations

import time

from lightning.pytorch import Callback


class ThroughputMonitor(Callback):
    """Logs ``train/samples_per_sec`` (windows per second over all ranks: rank 0's rate x world size, as DDP ranks
    step in lockstep on equal batches) and ``train/data_wait_frac`` (the share of
    wall time between two steps spent waiting for the DataLoader), averaged over the Trainer's
    ``log_every_n_steps`` steps."""

    def __init__(self) -> None:
        self.window = 50
        self._last_end: float | None = None
        self._wait = self._total = 0.0
        self._samples = self._steps = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.window = max(1, trainer.log_every_n_steps)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last_end = None  # the first batch of an epoch includes worker start-up: not counted

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self._wait += self._start - self._last_end
            self._total += now - self._last_end
            self._samples += len(batch["actions"])
            self._steps += 1
        self._last_end = now
        if self._steps >= self.window:
            pl_module.log_dict({"train/samples_per_sec": self._samples * trainer.world_size / self._total,
                                "train/data_wait_frac": self._wait / self._total}, on_step=True, on_epoch=False)
            self._wait = self._total = 0.0
            self._samples = self._steps = 0
