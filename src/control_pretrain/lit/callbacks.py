"""Speed metrics every training run gets: Lightning's ``ThroughputMonitor`` (samples/s, FLOP/s, MFU), the FLOPs
estimate it reads, and the share of step time spent waiting for the DataLoader, which Lightning's monitor does not
measure (its clock runs from one batch end to the next, data loading included).

Metric keys (docs/benchmarks.md): ``train/device/samples_per_sec`` on every run and ``train/samples_per_sec``
(all ranks) only with more than one device, as Lightning names them; ``train/device/flops_per_sec`` and, on
GPUs Lightning knows the peak of, ``train/device/mfu``; ``train/data_wait_frac`` from ``DataWaitMonitor``.
"""

from __future__ import annotations

import time

import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ThroughputMonitor

# Training FLOPs per forward FLOP: the backward pass costs about twice the forward (Kaplan et al. 2020, §2.1).
TRAIN_FLOPS_PER_FORWARD = 3


def windows_in_batch(batch: dict[str, torch.Tensor]) -> int:
    """Samples of a batch for the throughput metrics: its windows (the leading dimension of ``actions``)."""
    return len(batch["actions"])


def throughput_monitor(log_every_n_steps: int) -> ThroughputMonitor:
    """Lightning's monitor, its rates over the last ``log_every_n_steps`` batches (Lightning's default window
    of 100 batches would log nothing in a short run). The first batch's time (worker start-up) is not in a rate:
    the window starts at its end."""
    return ThroughputMonitor(batch_size_fn=windows_in_batch, window_size=max(2, log_every_n_steps))


class FlopsPerBatchEstimate(Callback):
    """Sets ``pl_module.flops_per_batch``, which Lightning's ``ThroughputMonitor`` reads: the forward FLOPs of the
    module's ``compute_losses`` on the first training batch (matmuls and convolutions, counted by
    ``measure_flops``), times ``TRAIN_FLOPS_PER_FORWARD`` while training and times 1 while validating. Counted
    once per fit, under ``no_grad`` and with the RNG forked, so the run's weights and random draws are unchanged.
    A module without ``compute_losses`` gets ``None`` (no FLOP metrics, and no warning from Lightning)."""

    def __init__(self) -> None:
        self.forward_flops: int | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not hasattr(pl_module, "flops_per_batch"):
            pl_module.flops_per_batch = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.forward_flops is None and hasattr(pl_module, "compute_losses"):
            devices = [trainer.strategy.root_device] if trainer.strategy.root_device.type == "cuda" else []
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                self.forward_flops = measure_flops(pl_module, lambda: pl_module.compute_losses(batch))
        if self.forward_flops is not None:
            pl_module.flops_per_batch = TRAIN_FLOPS_PER_FORWARD * self.forward_flops

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.forward_flops is not None:
            pl_module.flops_per_batch = self.forward_flops


class DataWaitMonitor(Callback):
    """Logs ``train/data_wait_frac``: the share of wall time between two training steps spent waiting for the
    DataLoader (from one batch's end to the next batch's start), averaged over the Trainer's
    ``log_every_n_steps`` steps; the first batch of an epoch (worker start-up) is not counted. Rank 0's value."""

    def __init__(self) -> None:
        self.window = 50
        self._last_end: float | None = None
        self._start = 0.0
        self._wait = self._total = 0.0
        self._steps = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.window = max(1, trainer.log_every_n_steps)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last_end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last_end is not None:
            self._wait += self._start - self._last_end
            self._total += now - self._last_end
            self._steps += 1
        self._last_end = now
        if self._steps >= self.window:
            pl_module.log("train/data_wait_frac", self._wait / self._total, on_step=True, on_epoch=False)
            self._wait = self._total = 0.0
            self._steps = 0
