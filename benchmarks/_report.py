"""What the benchmark scripts share: reading a run's TensorBoard scalars, writing a section of docs/benchmarks.md."""

from __future__ import annotations

import glob
import os
import re

HEADER = """# Benchmarks

Benchmarks are run **by hand** (never in CI or as timed unit tests) and each section records the date, the
machine and the exact command. CPU numbers on the shared 2-core build machines are noisy (±20% idle, 2-4x
slower under contention, platform.md): compare **ratios measured within one run**, not absolute numbers across
sections or runs.
"""


def write_section(out: str, section: str, body: str) -> None:
    """Replace the ``section`` heading's part of ``out`` with ``body`` (or append it), keeping a hand-written
    ``### Findings`` subsection of the old part. The file is re-read just before writing (other scripts write
    their sections too) and replaced atomically."""
    text = HEADER
    if os.path.exists(out):
        with open(out) as f:
            text = f.read()
    start = text.find(section + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + body
    else:
        nxt = text.find("\n## ", start + len(section))
        old = text[start : nxt if nxt >= 0 else len(text)]
        findings = re.search(r"\n### Findings.*?(?=\n### |\Z)", old, re.DOTALL)
        if findings and "\n### Findings" not in body:  # written by hand: keep it, after the introduction
            first = body.find("\n### ")
            first = len(body) if first < 0 else first
            body = body[:first].rstrip("\n") + "\n" + findings.group(0).rstrip("\n") + "\n" + body[first:]
        text = text[:start] + body.rstrip("\n") + "\n" + ("\n" + text[nxt + 1 :] if nxt >= 0 else "")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    os.replace(tmp, out)


def tb_scalars(run_dir: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the newest TensorBoard log under ``{run_dir}/tb_logs/`` as {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted(glob.glob(os.path.join(run_dir, "tb_logs", "*")))
    acc = EventAccumulator(runs[-1], size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
