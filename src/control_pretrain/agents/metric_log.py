"""Training curves of online agents: TensorBoard scalars plus the same records as JSON lines (``metrics.jsonl``),
which scripts, benchmarks and tests read without TensorBoard."""

from __future__ import annotations

import json
import os
import time


class MetricLog:
    """Appends to ``{folder}/metrics.jsonl`` (a resumed run continues the same file) and TensorBoard events."""

    def __init__(self, folder: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.tb = SummaryWriter(folder)
        self.jsonl = open(os.path.join(folder, "metrics.jsonl"), "a")  # noqa: SIM115 (closed in close())
        self.t0 = time.perf_counter()

    def log(self, step: int, **values: float) -> None:
        for k, v in values.items():
            if k != "episode":
                self.tb.add_scalar(k, v, step)
        wall_s = round(time.perf_counter() - self.t0, 3)  # since this process started the run (resets on resume)
        self.jsonl.write(json.dumps({"step": step, "wall_s": wall_s, **values}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        self.tb.close()
        self.jsonl.close()
