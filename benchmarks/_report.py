"""What the benchmark scripts share: reading a run's TensorBoard scalars, describing the machine, waiting for other
benchmarks to finish, and writing markdown tables and a section of docs/benchmarks.md. A helper that a second
bench_*.py would need lives here, not copied into it (``duplicates`` on benchmarks/ finds none)."""

from __future__ import annotations

import glob
import os
import platform
import re
import subprocess
import time

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


def samples_per_sec(scalars: dict[str, list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """A run's logged training throughput over all ranks: Lightning's ``ThroughputMonitor`` writes
    ``train/samples_per_sec`` only with more than one device, and ``train/device/samples_per_sec`` (then the same
    number) always."""
    return scalars.get("train/samples_per_sec") or scalars.get("train/device/samples_per_sec", [])


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A markdown table; every cell through ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def publish(text: str, out: str | None, section: str) -> None:
    """Print a benchmark's report and, with ``--out``, write it as ``section`` of that markdown file."""
    print(text)
    if out:
        write_section(out, section, text)


def cpu_model() -> str:
    """The CPU's model name from ``lscpu`` (``platform.processor()`` where lscpu is missing)."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    found = re.search(r"Model name:\s*(.+)", lscpu)
    return found.group(1).strip() if found else (platform.processor() or platform.machine() or "?")


def wait_for_other_benchmarks(me: str, max_wait_s: float = 600.0, poll_s: float = 30.0) -> str:
    """Wait (up to ``max_wait_s``) while another benchmark script runs, so neither distorts the other; ``me`` is
    the calling script's name (its own command lines do not count). Returns a note for the report ("" if no
    other benchmark ran)."""
    pid = str(os.getpid())
    waited = 0.0
    while True:
        ps = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True,
                            check=False).stdout.splitlines()[1:]
        others = [line for line in ps if "bench" in line and me not in line and "grep" not in line
                  and pid not in line.split()[:2]]
        if not others or waited >= max_wait_s:
            return (f"waited {waited:.0f} s for other benchmarks" if waited else "") + (
                f"; still running: {others[0].split(None, 2)[2][:60]}" if others else "")
        print(f"[{me}] another benchmark is running ({others[0].split(None, 2)[2][:60]}); waiting", flush=True)
        time.sleep(poll_s)
        waited += poll_s
