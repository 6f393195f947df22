"""lit/callbacks.py in a real Lightning Trainer: Lightning's ThroughputMonitor gets our FLOPs estimate and batch
size, and DataWaitMonitor logs the DataLoader's share of step time."""

import time

import pytest
import torch
from conftest import scalars
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from control_pretrain.lit.callbacks import (
    TRAIN_FLOPS_PER_FORWARD,
    DataWaitMonitor,
    FlopsPerBatchEstimate,
    throughput_monitor,
)

BATCH, IN, OUT = 4, 8, 16


class Windows(Dataset):
    """Batches shaped like the window datasets' (a dict with ``actions``); ``delay_s`` per item slows loading."""

    def __init__(self, n: int = 64, delay_s: float = 0.0):
        self.x = torch.randn(n, IN, generator=torch.Generator().manual_seed(0))
        self.delay_s = delay_s

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        time.sleep(self.delay_s)
        return {"actions": self.x[i]}


class Linear(LightningModule):
    """One linear layer and dropout: 2 * BATCH * IN * OUT forward FLOPs per batch."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(IN, OUT)
        self.drop = torch.nn.Dropout(0.5)

    def compute_losses(self, batch):
        return {"loss": self.drop(self.layer(batch["actions"])).pow(2).mean()}

    def training_step(self, batch, batch_idx):
        return self.compute_losses(batch)["loss"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, callbacks, delay_s: float = 0.0, steps: int = 8) -> Linear:
    torch.manual_seed(0)
    module = Linear()
    trainer = Trainer(max_steps=steps, log_every_n_steps=2, callbacks=callbacks, accelerator="cpu",
                      logger=TensorBoardLogger(tmp_path, name="tb_logs"), enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(Windows(delay_s=delay_s), batch_size=BATCH))
    return module


def test_throughput_flops_and_data_wait_are_logged(tmp_path):
    flops = FlopsPerBatchEstimate()
    module = fit(tmp_path, [throughput_monitor(2), flops, DataWaitMonitor()])
    assert flops.forward_flops == 2 * BATCH * IN * OUT  # the one matmul, counted
    assert module.flops_per_batch == TRAIN_FLOPS_PER_FORWARD * 2 * BATCH * IN * OUT
    tags = scalars(tmp_path)
    for tag in ("train/device/samples_per_sec", "train/device/flops_per_sec", "train/data_wait_frac"):
        assert tag in tags and all(v > 0 for v in tags[tag]), tag
    assert "train/samples_per_sec" not in tags  # all-ranks rate: Lightning logs it only with more than one device
    ratio = [f / s for f, s in zip(tags["train/device/flops_per_sec"], tags["train/device/samples_per_sec"])]
    assert ratio == pytest.approx([module.flops_per_batch / BATCH] * len(ratio))  # FLOPs per sample
    assert all(0 < v < 1 for v in tags["train/data_wait_frac"])


def test_data_wait_frac_sees_a_slow_loader(tmp_path):
    fit(tmp_path / "slow", [DataWaitMonitor()], delay_s=0.01)  # 40 ms of loading per 4-window batch
    fit(tmp_path / "fast", [DataWaitMonitor()])
    slow, fast = scalars(tmp_path / "slow")["train/data_wait_frac"], scalars(tmp_path / "fast")["train/data_wait_frac"]
    assert min(slow) > 0.5 and max(fast) < min(slow)


def test_flops_count_leaves_training_unchanged(tmp_path):
    """Counted under no_grad with the RNG forked: the same weights as a run without it (dropout draws included)."""
    a = fit(tmp_path / "a", [FlopsPerBatchEstimate()])
    b = fit(tmp_path / "b", [])
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
