"""Pretraining benchmarks (issue 2/7), run by hand:

    python benchmarks/bench_pretrain.py [--quick] [--sections throughput,passes,lightning,datawait,losses]
                                        [--out docs/benchmarks.md]

On this CPU with 2 torch threads; 1 sample = one K=30 window; a training step = forward of all three SMART
objectives (forward dynamics, inverse dynamics, RMHC) + backward + AdamW step + EMA target update, train mode.

1. throughput: samples/s and peak RSS for tiny (2x64, 2 heads), small (4x128, 4 heads), paper (8x256, 8 heads),
   state (obs 24, action 17) and pixels (uint8 3x84x84), batch 32. One subprocess per config (its own
   ``ru_maxrss``), plain PyTorch loop on random tensors shaped like ``EpisodeWindowDataset`` batches.
2. passes: ``share_passes=True`` (2 transformer passes) vs ``False`` (the original's 3), interleaved in one
   process; passes counted with a forward hook on ``model.blocks[0]``.
3. lightning: the same module/batch/step through a real ``lightning.pytorch.Trainer`` (``PretrainModule``,
   DataLoader over in-memory batches) vs the plain loop, interleaved in one process (small, state and pixels).
4. datawait: the real CLI (``src/dmc_pretrain.py``) on real collected files, num_workers 0 and 2, reading
   ``train/device/samples_per_sec`` (Lightning's ThroughputMonitor) and ``train/data_wait_frac`` (DataWaitMonitor)
   from the TensorBoard event file.
5. losses: a short state pretraining run (small model, K=30, batch 64) on the test task set; plots the losses to
   docs/img/pretrain_losses.png and evaluates RMHC at fixed mask sizes on the validation set per epoch.

Timings are medians of >= 3 repetitions (5 for the interleaved comparisons 2 and 3). Every timed subprocess first
waits (up to 90 s) for other processes to use < 0.3 cores and is repeated once if they used > 0.5 cores while it
ran; the tables report that background load. Two torch threads on two shared cores slow down several-fold when
anything else runs, so numbers taken next to other work are not comparable.

Duration on a quiet machine: ~20 min (throughput ~3, passes ~2, lightning ~2, datawait ~6, losses ~6); longer
under load (gating, repeats). ``--quick``: a ~5 min smoke run with separate, smaller data. ``--sections`` runs a
subset; ``--reuse-losses`` re-evaluates and re-plots the last losses run without training again.

Scratch files: benchmarks/_work/ (git-ignored; collected data is reused when present). Needs matplotlib for the
plot (benchmark-only, deliberately not in setup.py: ``pip install matplotlib``). ``--out`` replaces (or appends)
the section "## Pretraining (issue 2/7)" of the markdown file, creating it with a header if needed; subsections
not run this time are taken from the previous run's cache (benchmarks/_work/sections.json), and a hand-written
``### Findings`` subsection is kept.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

from _report import (  # benchmarks/_report.py
    cpu_model,
    markdown_table,
    publish,
    samples_per_sec,
    tb_scalars,
    wait_for_other_benchmarks,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "benchmarks", "_work")
IMG_DIR = os.path.join(ROOT, "docs", "img")
SECTION = "## Pretraining (issue 2/7)"
K, BATCH, THREADS, REPS = 30, 32, 2, 3
STATE_OBS_DIM, ACTION_DIM = 24, 17
SIZES = {"tiny": (2, 64, 2), "small": (4, 128, 4), "paper": (8, 256, 8)}  # n_layer, n_embd, n_head
TEST_TASKS = "configs/pretrain_configs/multipretrain_source_test.json"
PY = sys.executable


# ------------------------------------------------------------------------------------------------- helpers
def fmt(x, digits=1):
    return f"{x:,.{digits}f}"


def rss_mb() -> tuple[float, float]:
    """(current RSS, high-water mark) of this process in MB, from /proc/self/status."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def load_snapshot() -> str:
    """1-minute load average and the top CPU users other than this benchmark's own processes."""
    out = subprocess.run(["top", "-bn1", "-w", "200"], capture_output=True, text=True, check=False).stdout.splitlines()
    procs = []
    start = next((i for i, line in enumerate(out) if line.strip().startswith("PID")), None)
    if start is not None:
        for line in out[start + 1:start + 6]:
            parts = line.split(None, 11)
            if len(parts) == 12 and float(parts[8].replace(",", ".")) >= 5.0:
                procs.append(f"{parts[11][:40]} {parts[8]}%")
    return f"load {os.getloadavg()[0]:.2f}" + (f"; top: {', '.join(procs)}" if procs else "")


HZ = os.sysconf("SC_CLK_TCK")


def cpu_busy_s() -> float:
    """CPU-seconds all cores have spent busy since boot (/proc/stat, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / HZ


def wait_until_quiet(max_cores: float = 0.3, sample_s: float = 3.0, max_wait_s: float = 90.0) -> float:
    """Block until other processes use < ``max_cores`` over a ``sample_s`` window (at most ``max_wait_s``);
    returns the last measured background load in cores. 2 torch threads on 2 cores are very sensitive to any
    other CPU user (an OpenMP barrier waits for the descheduled thread), so every timed run is gated."""
    t_end = time.perf_counter() + max_wait_s
    while True:
        b0, t0 = cpu_busy_s(), time.perf_counter()
        time.sleep(sample_s)
        load = (cpu_busy_s() - b0) / (time.perf_counter() - t0)
        if load < max_cores or time.perf_counter() > t_end:
            return load
        print(f"[bench_pretrain] background load {load:.2f} cores; waiting for a quiet machine", flush=True)


MAX_BACKGROUND = 0.5  # cores of other load above which a timed run is repeated (up to RETRIES times)
RETRIES = 1


def run_measured(cmd: list[str], log_path: str, env: dict | None = None, timed: bool = True) -> dict:
    """``run_once`` repeated while other processes used more than MAX_BACKGROUND cores during it (at most RETRIES
    more times); the run with the least background load is returned, with ``attempts``."""
    best = None
    for attempt in range(1 + (RETRIES if timed else 0)):
        res = run_once(cmd, log_path, env, gate=timed)
        if res["rc"] != 0:
            return res
        if best is None or res["background_cores"] < best["background_cores"]:
            best = res
        best["attempts"] = attempt + 1
        if res["background_cores"] <= MAX_BACKGROUND:
            break
        print(f"[bench_pretrain] {res['background_cores']:.2f} cores of other load during the run; repeating",
              flush=True)
    return best


def run_once(cmd: list[str], log_path: str, env: dict | None = None, gate: bool = True) -> dict:
    """Run ``cmd`` (from the repo root) after a quiet gate; returns its exit code, wall time, own CPU time and
    peak RSS (``wait4``: covers the largest of it and its reaped children) and the average CPU load of *other*
    processes while it ran, in cores."""
    gate = wait_until_quiet() if gate else None
    b0 = cpu_busy_s()
    t = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    own = usage.ru_utime + usage.ru_stime
    with open(log_path) as f:
        out = f.read()
    return {"rc": os.waitstatus_to_exitcode(status), "wall": wall, "peak_rss_mb": usage.ru_maxrss / 1024,
            "background_cores": max(0.0, (cpu_busy_s() - b0 - own) / wall), "gate_cores": gate, "out": out}


def machine() -> dict[str, str]:
    free = subprocess.run(["free", "-g"], capture_output=True, text=True, check=False).stdout.splitlines()
    import torch

    return {"nproc": subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip(),
            "cpu": cpu_model(),
            "mem": "/".join(free[1].split()[1:3]) if len(free) > 1 else "?",
            "torch": torch.__version__, "python": platform.python_version()}


# ------------------------------------------------------------------------------------------------- model and batches
def make_batch(obs_type: str, batch: int = BATCH, obs_dim: int = STATE_OBS_DIM, action_dim: int = ACTION_DIM,
               seed: int = 0) -> dict:
    """Random tensors with the keys, dtypes and shapes of ``EpisodeWindowDataset.__getitems__``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    t0 = torch.randint(0, 250 - K, (batch, 1), generator=g)
    # Two fake domains, each owning a slot of the concatenated action vector (as in SlotLayout).
    domain = torch.randint(0, 2, (batch,), generator=g)
    half = action_dim // 2
    mask = torch.zeros(batch, action_dim)
    mask[domain == 0, :half] = 1.0
    mask[domain == 1, half:] = 1.0
    out = {
        "actions": (torch.rand(batch, K, action_dim, generator=g) * 2 - 1) * mask[:, None],  # (B, K, A) f32
        "rewards": torch.rand(batch, K, generator=g),  # (B, K) f32
        "rtg": torch.rand(batch, K, generator=g) * 250,  # (B, K) f32
        "timesteps": t0 + torch.arange(K),  # (B, K) int64
        "action_mask": mask,  # (B, A) f32
        "task_id": domain.clone(),  # (B,) int64
        "domain_id": domain,  # (B,) int64
    }
    if obs_type == "state":
        out["observations"] = torch.randn(batch, K, obs_dim, generator=g)  # (B, K, D) f32
    else:
        out["pixels"] = torch.randint(0, 256, (batch, K, 3, 84, 84), dtype=torch.uint8, generator=g)
    return out


def build_module(size: str, obs_type: str, share_passes: bool = True, seed: int = 0):
    import torch

    from control_pretrain.lit.pretrain_module import PretrainModule

    torch.manual_seed(seed)
    n_layer, n_embd, n_head = SIZES[size]
    # Fixed RMHC mask sizes (mid-curriculum); the mask size does not change the cost of a step.
    objectives = [{"class_path": f"control_pretrain.objectives.{name}",
                   "init_args": {"config": {"share_passes": share_passes}}}
                  for name in ("ForwardDynamicsObjective", "InverseDynamicsObjective")]
    objectives.append({"class_path": "control_pretrain.objectives.MaskedHindsightControlObjective"})
    return PretrainModule(obs_type=obs_type, obs_dim=STATE_OBS_DIM if obs_type == "state" else 0,
                          action_dim=ACTION_DIM, n_layer=n_layer, n_head=n_head, n_embd=n_embd, context_length=K,
                          objectives=objectives, mask_actions=15, mask_obs=6, lr_schedule="constant").train()


def make_optimizer(module):
    import torch

    from control_pretrain.models.control_transformer import param_groups

    hp = module.hparams
    return torch.optim.AdamW(param_groups(module, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))


def plain_step(module, opt, batch) -> None:
    """What a Lightning training step does, without Lightning: forward (3 objectives), backward, AdamW, EMA."""
    opt.zero_grad(set_to_none=True)
    loss = module.compute_losses(batch)["loss"]
    loss.backward()
    opt.step()
    for objective in module.objectives.values():
        objective.after_optimizer_step(module.model)  # the EMA target update


def count_passes(module, opt, batch) -> int:
    """Transformer passes in one training step (calls of the first block)."""
    calls = []
    handle = module.model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        plain_step(module, opt, batch)
    finally:
        handle.remove()
    return len(calls)


def flops_per_sample(size: str, obs_type: str, passes: int) -> float:
    """[derived] Matrix-multiply FLOPs of one training step per sample (fwd + 2x for backward), like the anchor
    table in platform.md: transformer passes + online CNN (fwd+bwd) + EMA target CNN (fwd)."""
    n_layer, C, _ = SIZES[size]
    L = 2 * K
    per_pass = n_layer * L * (24 * C * C + 4 * L * C)  # qkv+proj+mlp, QK^T and AV, forward
    total = 3 * passes * per_pass
    if obs_type == "pixels":
        cnn = 2 * (400 * 32 * 192 + 81 * 64 * 512 + 49 * 64 * 576 + 3136 * C)  # per frame, forward
        total += K * cnn * 4  # online fwd+bwd (3x) + target fwd (1x)
    else:
        total += K * 2 * (STATE_OBS_DIM * 256 + 256 * C) * 4
    return float(total)


def time_steps(step, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n


def pick_steps(step_s: float, target_s: float, lo: int = 2, hi: int = 60) -> int:
    return max(lo, min(hi, round(target_s / max(step_s, 1e-6))))


# ------------------------------------------------------------------------------------------------- 1-2 workers
def worker_throughput(spec: dict) -> dict:
    """One config in a fresh process: step time for each ``share_passes`` variant (interleaved reps), passes per
    step, peak RSS of this process."""
    import torch

    torch.set_num_threads(THREADS)
    rss0 = rss_mb()[0]
    batch = make_batch(spec["obs_type"])
    variants = {}
    for share in spec["variants"]:
        module = build_module(spec["size"], spec["obs_type"], share)
        opt = make_optimizer(module)
        variants[share] = [module, opt, None, []]
    rss_built = rss_mb()[0]
    for share, v in variants.items():
        module, opt = v[0], v[1]
        v[2] = count_passes(module, opt, batch)  # also the first warm-up step
        plain_step(module, opt, batch)
    probe = time_steps(lambda: plain_step(variants[spec["variants"][0]][0], variants[spec["variants"][0]][1],
                                          batch), 1)
    n = pick_steps(probe, spec["target_s"], hi=spec.get("max_steps", 60))
    for _ in range(spec["reps"]):
        for v in variants.values():
            module, opt = v[0], v[1]
            v[3].append(time_steps(lambda m=module, o=opt: plain_step(m, o, batch), n))
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    m = variants[spec["variants"][0]][0]
    return {"size": spec["size"], "obs_type": spec["obs_type"], "steps_per_rep": n, "reps": spec["reps"],
            "threads": torch.get_num_threads(), "params_m": m.model.num_params() / 1e6,
            "rss_start_mb": rss0, "rss_built_mb": rss_built, "peak_rss_mb": ru,
            "variants": {str(share): {"passes": v[2], "step_s": v[3]} for share, v in variants.items()}}


def worker_lightning(spec: dict) -> dict:
    """Plain loop vs a real Trainer on the same module/batch/step, interleaved reps in one process."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, Dataset

    torch.set_num_threads(THREADS)
    batch = make_batch(spec["obs_type"])

    class Batches(Dataset):  # in-memory, pre-built batches: the loader costs ~nothing, as in the plain loop
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return batch

    class StepTimer(pl.Callback):
        """Wall time per step from the start of batch ``warmup`` to the end of the last batch: includes the
        loader's ``next``, every hook, logging, backward, optimizer step (everything Lightning does)."""

        def __init__(self, warmup):
            self.warmup, self.t0, self.t1, self.n = warmup, None, None, 0

        def on_train_batch_start(self, trainer, pl_module, b, batch_idx):
            if batch_idx == self.warmup:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
            if batch_idx >= self.warmup:
                self.t1, self.n = time.perf_counter(), batch_idx - self.warmup + 1

    plain = build_module(spec["size"], spec["obs_type"])
    opt = make_optimizer(plain)
    lit = build_module(spec["size"], spec["obs_type"])
    for _ in range(2):
        plain_step(plain, opt, batch)
    n = pick_steps(time_steps(lambda: plain_step(plain, opt, batch), 1), spec["target_s"])
    warmup = 2
    res = {"plain": [], "lightning": [], "lightning_fit_wall": []}
    for _ in range(spec["reps"]):
        res["plain"].append(time_steps(lambda: plain_step(plain, opt, batch), n))
        timer = StepTimer(warmup)
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=warmup + n,
                             limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False, logger=False,
                             enable_checkpointing=False, enable_model_summary=False, callbacks=[timer])
        loader = DataLoader(Batches(warmup + n), batch_size=None, shuffle=False, num_workers=0)
        t = time.perf_counter()
        trainer.fit(lit, train_dataloaders=loader)
        res["lightning_fit_wall"].append(time.perf_counter() - t)
        assert timer.n == n, (timer.n, n)
        res["lightning"].append((timer.t1 - timer.t0) / timer.n)
    return {"size": spec["size"], "obs_type": spec["obs_type"], "steps_per_rep": n, "reps": spec["reps"],
            "threads_after": torch.get_num_threads(), **res}


def run_worker(kind: str, spec: dict) -> dict:
    res = run_measured([PY, os.path.abspath(__file__), "--_worker", kind, json.dumps(spec)],
                       os.path.join(WORK, "worker.log"))
    if res["rc"] != 0:
        raise RuntimeError(f"worker {kind} {spec} failed:\n{res['out'][-3000:]}")
    out = json.loads(res["out"].strip().splitlines()[-1])
    out["background_cores"] = res["background_cores"]
    out["attempts"] = res.get("attempts", 1)
    return out


def load_cell(r: dict) -> str:
    return f"{r['background_cores']:.2f}" + (f" ({r['attempts']} runs)" if r.get("attempts", 1) > 1 else "")


# ------------------------------------------------------------------------------------------------- sections
def section_throughput(quick: bool) -> tuple[str, list]:
    target = 1.0 if quick else 4.0
    rows, results = [], []
    for size in SIZES:
        for obs_type in ("state", "pixels"):
            spec = {"size": size, "obs_type": obs_type, "variants": [True], "reps": REPS, "target_s": target,
                    "max_steps": 60}
            if size == "paper" and obs_type == "pixels":
                spec["max_steps"] = 3 if not quick else 2
            r = run_worker("throughput", spec)
            results.append(r)
            v = r["variants"]["True"]
            step = statistics.median(v["step_s"])
            fl = flops_per_sample(size, obs_type, v["passes"])
            rows.append([f"{size} ({'x'.join(map(str, SIZES[size][:2]))}, {SIZES[size][2]} heads)", obs_type,
                         fmt(r["params_m"], 2), v["passes"], f"{r['steps_per_rep']}x{r['reps']}",
                         fmt(step * 1000, 0), fmt(BATCH / step, 1),
                         " / ".join(fmt(BATCH / s, 0) for s in v["step_s"]),
                         fmt(fl / 1e9, 2), fmt(fl * BATCH / step / 1e9, 0),
                         fmt(r["rss_built_mb"], 0), fmt(r["peak_rss_mb"], 0),
                         fmt(r["peak_rss_mb"] - r["rss_built_mb"], 0), load_cell(r)])
            print(f"[throughput] {size} {obs_type}: {BATCH / step:.1f} samples/s, peak {r['peak_rss_mb']:.0f} MB",
                  flush=True)
    header = ["config", "obs", "params (M)", "passes/step", "steps x reps", "ms/step (median)",
              "samples/s (median)", "samples/s per rep", "GFLOP/sample [derived]", "GFLOP/s achieved",
              "RSS before 1st step (MB)", "peak RSS (MB)", "peak - before (MB)", "other load (cores)"]
    return markdown_table(header, rows), results


def section_passes(quick: bool) -> tuple[str, list]:
    rows, results = [], []
    configs = [("small", "state"), ("small", "pixels"), ("paper", "pixels")]
    for size, obs_type in configs:
        spec = {"size": size, "obs_type": obs_type, "variants": [True, False], "reps": 5,
                "target_s": 1.0 if quick else 3.0, "max_steps": 2 if size == "paper" else 60}
        r = run_worker("throughput", spec)
        results.append(r)
        two, three = r["variants"]["True"], r["variants"]["False"]
        s2, s3 = statistics.median(two["step_s"]), statistics.median(three["step_s"])
        ratios = [b / a for a, b in zip(two["step_s"], three["step_s"])]
        rows.append([f"{size} {obs_type}", f"{three['passes']} → {two['passes']}", f"{r['steps_per_rep']}x{r['reps']}",
                     fmt(BATCH / s3, 1), fmt(BATCH / s2, 1), f"**{s3 / s2:.2f}x**",
                     " / ".join(f"{x:.2f}" for x in ratios),
                     f"{flops_per_sample(size, obs_type, 3) / flops_per_sample(size, obs_type, 2):.2f}x",
                     load_cell(r)])
        print(f"[passes] {size} {obs_type}: {s3 / s2:.2f}x", flush=True)
    header = ["config (batch 32)", "passes/step (hook count) False → True", "steps x reps",
              "share_passes=False samples/s", "share_passes=True samples/s", "speed-up (median)",
              "speed-up per rep", "FLOP ratio [derived]", "other load (cores)"]
    return markdown_table(header, rows), results


def section_lightning(quick: bool) -> tuple[str, list]:
    rows, results = [], []
    for obs_type in ("state", "pixels"):
        r = run_worker("lightning", {"size": "small", "obs_type": obs_type, "reps": 5,
                                     "target_s": 1.0 if quick else 4.0})
        results.append(r)
        p, lt = statistics.median(r["plain"]), statistics.median(r["lightning"])
        per_rep = [b / a - 1 for a, b in zip(r["plain"], r["lightning"])]
        rows.append([f"small {obs_type}", f"{r['steps_per_rep']}x{r['reps']}", fmt(p * 1000, 1), fmt(lt * 1000, 1),
                     f"**{(lt / p - 1) * 100:+.1f}%**", " / ".join(f"{x * 100:+.0f}%" for x in per_rep),
                     fmt(BATCH / p, 1), fmt(BATCH / lt, 1), fmt(statistics.median(r["lightning_fit_wall"]), 1),
                     load_cell(r)])
        print(f"[lightning] small {obs_type}: {(lt / p - 1) * 100:+.1f}%", flush=True)
    header = ["config (batch 32)", "steps x reps", "plain ms/step", "Lightning ms/step", "Lightning overhead (median)",
              "overhead per rep", "plain samples/s", "Lightning samples/s", "Trainer.fit wall s (incl. setup)",
              "other load (cores)"]
    return markdown_table(header, rows), results


# ---- 4. data waiting through the real CLI
def collect(args: list[str], log_name: str) -> float:
    t = time.perf_counter()
    res = subprocess.run([PY, "src/dmc_data.py", "collect", *args, "--quiet"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}, check=False)
    if res.returncode != 0 and "already exists" not in res.stderr:
        raise RuntimeError(f"collect failed: {res.stderr[-3000:]}")
    return time.perf_counter() - t


def ensure_data(prefix: str, extra: list[str], replay_ids: list[int], num_steps: int) -> tuple[str, float]:
    """Collect the test task set unless all files exist; returns (command, seconds or 0 if reused)."""
    pattern = os.path.join(ROOT, prefix, "randcollect_*", "*_s*.h5")
    have = glob.glob(pattern)
    cmd = ["--multi_config", TEST_TASKS, "--num_steps", str(num_steps), "--replay_id", *map(str, replay_ids),
           "--data_dir_prefix", prefix, *extra]
    shown = "python src/dmc_data.py collect " + " ".join(cmd)
    if len(have) >= 2 * len(replay_ids):
        return shown, 0.0
    shutil.rmtree(os.path.join(ROOT, prefix), ignore_errors=True)
    return shown, collect(cmd, prefix)


def run_cli(args: list[str], out_dir: str, timed: bool = True) -> tuple[dict, str]:
    """``python src/dmc_pretrain.py args`` in a subprocess: (``run_measured`` result, command line)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [PY, "src/dmc_pretrain.py", *args, "--output_dir", os.path.relpath(out_dir, ROOT)]
    res = run_measured(cmd, os.path.join(WORK, "cli.log"), timed=timed)
    if res["rc"] != 0:
        raise RuntimeError(f"CLI failed ({res['rc']}): {' '.join(cmd)}\n{res['out'][-4000:]}")
    return res, "python " + " ".join(cmd[1:])


def section_datawait(quick: bool) -> tuple[str, dict]:
    state_steps, pix_steps = (2000, 1000) if quick else (5000, 2000)
    q = "_quick" if quick else ""  # files are reused when present, so quick runs keep their smaller data apart
    state_dir, pix_dir = f"benchmarks/_work/data{q}", f"benchmarks/_work/pix{q}"
    cmd_s, t_s = ensure_data(state_dir, [], [1], state_steps)
    cmd_p, t_p = ensure_data(pix_dir, ["--pixels", "--fast_render"], [1], pix_steps)
    print(f"[datawait] data ready (collected in {t_s:.0f} s + {t_p:.0f} s)", flush=True)
    rows, runs, cmds = [], {}, []
    # (obs, size): (log_every_n_steps L, logged windows m). DataWaitMonitor skips the first batch of an epoch, so
    # its windows end at batch L, 2L, ... while the logger writes at batches L-1, 2L-1, ...: each value is written
    # one interval late and the last one is lost, hence (m + 1) * L batches for m logged windows. (Lightning's
    # ThroughputMonitor logs at L-1, 2L-1, ... directly: m + 1 values of samples/s.)
    plan = {
        ("state", "tiny"): (20, 4), ("state", "small"): (20, 4), ("state", "paper"): (10, 3),
        ("pixels", "tiny"): (10, 3), ("pixels", "small"): (10, 3), ("pixels", "paper"): (5, 3),
    }
    for (obs_type, size), (every, windows) in plan.items():
        if quick:
            every, windows = max(2, every // 4), 2
        n_layer, n_embd, n_head = SIZES[size]
        for workers in (0, 2):
            out = os.path.join(WORK, "runs", f"wait_{obs_type}_{size}_w{workers}")
            prefix = state_dir if obs_type == "state" else pix_dir
            args = ["--multi_config", TEST_TASKS, "--source_data_type", "rand", "--train_replay_id", "1",
                    "--num_steps", str(state_steps if obs_type == "state" else pix_steps), "--epochs", "1",
                    "--data_dir_prefix", prefix, "--obs_type", obs_type, "--model.n_layer", str(n_layer),
                    "--model.n_embd", str(n_embd), "--model.n_head", str(n_head), "--data.batch_size", str(BATCH),
                    "--data.num_workers", str(workers), "--trainer.limit_train_batches", str((windows + 1) * every),
                    "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", str(every), "--quiet"]
            res, cmd = run_cli(args, out)
            wall, peak, bg = res["wall"], res["peak_rss_mb"], load_cell(res)
            tags = tb_scalars(out)
            shutil.rmtree(out, ignore_errors=True)  # checkpoints of the paper config are ~100 MB each
            sps = [v for _, v in samples_per_sec(tags)]
            wait = [v for _, v in tags.get("train/data_wait_frac", [])]
            runs[f"{obs_type}_{size}_w{workers}"] = {"samples_per_sec": sps, "data_wait_frac": wait, "wall": wall,
                                                     "peak_rss_mb": peak, "background_cores": res["background_cores"]}
            if not sps:
                rows.append([f"{size} {obs_type}", workers, "no train/samples_per_sec logged", "", "", "",
                             fmt(wall, 0), fmt(peak, 0), bg])
                continue
            rows.append([f"{size} {obs_type}", workers, len(sps), fmt(statistics.median(sps), 1),
                         f"{statistics.median(wait) * 100:.2f}%", f"{max(wait) * 100:.2f}%", fmt(wall, 0),
                         fmt(peak, 0), bg])
            cmds.append(cmd)
            print(f"[datawait] {size} {obs_type} w{workers}: {statistics.median(sps):.1f} samples/s, wait "
                  f"{statistics.median(wait) * 100:.2f}%", flush=True)
    header = ["config (batch 32)", "num_workers", "logged windows", "train/samples_per_sec (median)",
              "train/data_wait_frac (median)", "data_wait_frac (max)", "CLI wall s (incl. start-up)",
              "peak RSS of largest process (MB)", "other load (cores)"]
    extra = {"collect_cmds": [cmd_s, cmd_p], "collect_s": [t_s, t_p], "example_cmd": cmds[:1] + cmds[-1:]}
    return markdown_table(header, rows), {"runs": runs, **extra}


# ---- 5. loss curves
LOSSES = ("forward", "inverse", "masked_hindsight")


def fixed_mask_eval(out_dir: str, data_prefix: str, num_steps: int, mask_sizes: list[int], batches: int) -> dict:
    """Validation losses per epoch checkpoint (and at initialisation) with RMHC at fixed mask sizes, dropout off,
    the same random masks for every checkpoint (seeded), on the run's own validation episodes."""
    import torch

    from control_pretrain.data.datamodules.pretrain import MultiTaskDataModule
    from control_pretrain.lit.pretrain_module import PretrainModule

    torch.set_num_threads(THREADS)
    ckpts = sorted(glob.glob(os.path.join(out_dir, "epochs", "ep*.ckpt")))
    first = PretrainModule.load_from_checkpoint(ckpts[0], map_location="cpu")
    dm = MultiTaskDataModule(multi_config=TEST_TASKS, train_replay_id=2, num_steps=num_steps,
                             data_dir_prefix=data_prefix, obs_type="state", context_length=K, batch_size=64,
                             num_workers=0)
    dm.setup()
    loader = dm.val_dataloader()
    val_batches = [b for _, b in zip(range(batches), loader)]
    torch.manual_seed(123)  # the CLI's default seed_everything: the same initial weights as the run
    init = PretrainModule(**{k: v for k, v in first.hparams.items() if k != "init_from"})
    models = [("init", init)] + [(os.path.basename(c)[:-5], PretrainModule.load_from_checkpoint(c, map_location="cpu"))
                                 for c in ckpts]
    result = {}
    for name, m in models:
        m.eval()
        rmhc = m.objective("masked_hindsight")
        row = {}
        with torch.no_grad():
            for size in mask_sizes:
                rmhc.mask_actions, rmhc.mask_obs = size, min(K // 2, size)
                torch.manual_seed(0)
                row[f"rmhc@{size}"] = statistics.fmean(float(m.compute_losses(b)["masked_hindsight_loss"])
                                                       for b in val_batches)
            torch.manual_seed(0)
            losses = [m.compute_losses(b) for b in val_batches]
            row["forward"] = statistics.fmean(float(x["forward_loss"]) for x in losses)
            row["inverse"] = statistics.fmean(float(x["inverse_loss"]) for x in losses)
        result[name] = row
    return result


def plot_losses(tags: dict, path: str, fixed: dict, mask_sizes: list[int]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    axes = axes.ravel()
    epoch_steps = [s for s, _ in tags.get("val/loss", [])]
    for ax, name in zip(axes, LOSSES):
        tr = tags.get(f"train/{name}_loss", [])
        va = tags.get(f"val/{name}_loss", [])
        if tr:
            ax.plot([s for s, _ in tr], [v for _, v in tr], lw=0.8, alpha=0.8, label="train (per logged step)")
        if va:
            ax.plot([s for s, _ in va], [v for _, v in va], "o-", color="C3", label="val (per epoch)")
        for s in epoch_steps:
            ax.axvline(s, color="grey", lw=0.5, ls=":")
        if name != "forward":
            ax.axhline(1 / 3, color="k", lw=0.8, ls="--", label="predict 0: Var U(-1,1) = 1/3")
        ax.set_title(f"{name}_loss")
        ax.set_xlabel("global step")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    masks = tags.get("train/mask_actions", [])
    if masks:
        txt = ", ".join(str(int(v)) for _, v in masks)
        axes[2].set_title(f"masked_hindsight_loss\n(curriculum: masked actions per epoch {txt})", fontsize=10)
    ax = axes[3]
    names = list(fixed)
    for size in mask_sizes:
        ax.plot(range(len(names)), [fixed[n][f"rmhc@{size}"] for n in names], "o-",
                label=f"{size} actions / {min(K // 2, size)} obs masked")
    ax.axhline(1 / 3, color="k", lw=0.8, ls="--", label="predict 0: Var U(-1,1) = 1/3")
    ax.set_xticks(range(len(names)), ["init"] + [f"ep{i}" for i in range(len(names) - 1)])
    ax.set_title("val RMHC loss at FIXED mask sizes\n(dropout off, same masks per checkpoint)", fontsize=10)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.suptitle("SMART pretraining (bench_pretrain.py), state obs, cartpole-swingup + pendulum-swingup random data,\n"
                 "4 layers x 128, K=30, batch 64")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def section_losses(quick: bool, reuse: bool = False) -> tuple[str, dict]:
    steps = 3000 if quick else 20000
    curve_dir = "benchmarks/_work/curve" + ("_quick" if quick else "")
    cmd_c, t_c = ensure_data(curve_dir, [], [1, 2], steps)
    out = os.path.join(WORK, "runs", "losses" + ("_quick" if quick else ""))
    epochs, limit = (2, 30) if quick else (5, 150)
    cb_cfg = os.path.join(WORK, "epoch_ckpt.yaml")
    with open(cb_cfg, "w") as f:  # one checkpoint per epoch, for the fixed-mask evaluation
        f.write("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
                f"      init_args:\n        dirpath: {os.path.join(out, 'epochs')}\n        filename: ep{{epoch}}\n"
                "        save_top_k: -1\n        every_n_epochs: 1\n        auto_insert_metric_name: false\n")
    args = ["--config", os.path.relpath(cb_cfg, ROOT), "--multi_config", TEST_TASKS, "--source_data_type", "rand",
            "--train_replay_id", "2", "--num_steps", str(steps), "--epochs", str(epochs),
            "--data_dir_prefix", curve_dir, "--obs_type", "state", "--context_length", str(K),
            "--model.n_layer", "4", "--model.n_embd", "128", "--model.n_head", "4", "--data.batch_size", "64",
            "--data.num_workers", "0", "--trainer.limit_train_batches", str(limit), "--trainer.log_every_n_steps",
            "10", "--quiet"]
    meta_path = os.path.join(out, "bench_meta.json")
    if reuse and os.path.exists(meta_path):  # --reuse-losses: re-evaluate and re-plot the existing run
        with open(meta_path) as f:
            meta = json.load(f)
    else:
        started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        res, cmd = run_cli(args, out, timed=False)  # only the losses matter here: no quiet gate, no repeats
        meta = {"cmd": cmd, "wall": res["wall"], "background_cores": res["background_cores"], "started": started}
        with open(meta_path, "w") as f:
            json.dump(meta, f)
    cmd, wall = meta["cmd"], meta["wall"]
    reused = f"the training run started {meta.get('started', '?')} and is reused here (`--reuse-losses`); " if (
        reuse and "started" in meta) else ""
    tags = tb_scalars(out)
    mask_sizes = [3, 15, 30] if quick else [6, 15, 30]
    fixed = fixed_mask_eval(out, curve_dir, steps, mask_sizes, 8 if quick else 20)
    img_path = os.path.join(WORK, "pretrain_losses_quick.png") if quick else os.path.join(IMG_DIR, "pretrain_losses.png")
    img = plot_losses(tags, img_path, fixed, mask_sizes)
    print(f"[losses] run {wall:.0f} s, plot {img}", flush=True)

    rows = []
    for name in LOSSES:
        for split in ("train", "val"):
            v = tags.get(f"{split}/{name}_loss", [])
            if v:
                first, last = v[0][1], v[-1][1]
                rows.append([f"{split}/{name}_loss", f"{first:.4f} (step {v[0][0]})", f"{last:.4f} (step {v[-1][0]})",
                             f"{last / first:.2f}x"])
    t1 = markdown_table(["metric", "first logged", "last logged", "last / first"], rows)
    val_by_epoch = {name: [v for _, v in tags.get(f"val/{name}_loss", [])] for name in LOSSES}
    masks = [int(v) for _, v in tags.get("train/mask_actions", [])]
    mobs = [int(v) for _, v in tags.get("train/mask_obs", [])]
    rows2 = [[e, masks[e] if e < len(masks) else "", mobs[e] if e < len(mobs) else "",
              *(f"{val_by_epoch[n][e]:.4f}" if e < len(val_by_epoch[n]) else "" for n in LOSSES)]
             for e in range(epochs)]
    t2 = markdown_table(["epoch", "masked actions", "masked obs", "val/forward_loss", "val/inverse_loss",
                "val/masked_hindsight_loss"], rows2)
    names = list(fixed)
    rows3 = [[n, *(f"{fixed[n][f'rmhc@{s}']:.4f}" for s in mask_sizes), f"{fixed[n]['inverse']:.4f}",
              f"{fixed[n]['forward']:.5f}"] for n in names]
    t3 = markdown_table(["checkpoint", *(f"val RMHC, {s} act / {min(K // 2, s)} obs masked" for s in mask_sizes),
                "val inverse", "val forward (moving EMA target)"], rows3)
    return t1 + "\n\n" + t2 + "\n\n" + t3, {"cmd": cmd, "background_cores": meta["background_cores"], "reused": reused, "collect_cmd": cmd_c, "collect_s": t_c, "wall": wall,
                                             "img": img, "fixed": fixed, "steps_per_epoch": limit, "epochs": epochs}


# ------------------------------------------------------------------------------------------------- doc
def sgemm_gflops() -> float:
    import torch

    torch.set_num_threads(THREADS)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        times.append((time.perf_counter() - t) / 5)
    return 2 * 2048**3 / statistics.median(times) / 1e9


TITLES = {"throughput": "1. Throughput and peak memory (plain PyTorch loop, batch 32)",
          "passes": "2. Two vs three transformer passes per step (`share_passes`)",
          "lightning": "3. Lightning overhead (small config, batch 32)",
          "datawait": "4. Data waiting through the real CLI (real collected files)",
          "losses": "5. Loss curves: short state pretraining run"}


def describe(name: str, raw) -> str:
    if name == "throughput":
        return ("One subprocess per config, started once other processes use < 0.3 cores (\"other load\" = "
                "average CPU use of all other processes while it ran, from /proc/stat minus its own rusage) (`--_worker throughput`), 2 torch threads, random tensors shaped like "
                "`EpisodeWindowDataset` batches (state: obs 24, 17 action dims in two domain slots; pixels: uint8 "
                "3x84x84), `PretrainModule` in train mode with `share_passes=True`, RMHC masks 15 actions / 6 obs. "
                "Step = `compute_losses` (3 objectives) + backward + AdamW + EMA update. 2 warm-up steps, then "
                "3 timed repetitions of N steps each. GFLOP/sample counts matrix multiplies only (transformer "
                "passes x3 for backward, CNN online fwd+bwd and EMA target fwd), like the anchor table in "
                "platform.md. Peak RSS = the worker's `ru_maxrss` (includes Python, torch and the batch).")
    if name == "passes":
        return ("Both variants in one process, repetitions interleaved (True, False, True, ...), same batch. Passes "
                "are calls of `model.blocks[0]` counted by a forward hook during one training step.")
    if name == "lightning":
        return ("One process: the plain loop and a real `lightning.pytorch.Trainer` (`PretrainModule`, "
                "`DataLoader(batch_size=None)` over in-memory pre-built batches, `logger=False`, "
                "`enable_progress_bar=False`, `enable_checkpointing=False`, no gradient clipping, constant LR) "
                "doing the same step, interleaved repetitions. Lightning time per step = wall time from the start "
                "of batch 2 to the end of the last batch (so it includes the loader's `next`, all hooks, `self.log` "
                "calls and the optimizer closure), excluding `Trainer.fit` set-up, which is shown separately.")
    if name == "datawait":
        return ("Data (collected once, reused if present):\n\n```\n" + "\n".join(raw["collect_cmds"])
                + "\n```\n\nEach row is one run of the real CLI in a subprocess, started once the machine is quiet (1 epoch, `--trainer.limit_val_batches 1`, "
                "batch 32, torch's default 2 threads); values are `train/device/samples_per_sec` (Lightning's "
                "`ThroughputMonitor`) and `train/data_wait_frac` (`DataWaitMonitor`) read back from the TensorBoard "
                "event file (one value per `log_every_n_steps` window; the first batch of the epoch, which "
                "includes worker start-up, is not counted). Example commands (first and last row):\n\n```\n"
                + "\n".join(raw["example_cmd"]) + "\n```")
    if name == "losses":
        return ("Data and run:\n\n```\n" + raw["collect_cmd"] + "\n" + raw["cmd"] + "\n```\n\n"
                f"({raw.get('reused', '')}{raw['epochs']} epochs x {raw['steps_per_epoch']} steps of 64 windows, "
                "cosine LR with warmup, "
                f"gradient clip 1.0, run wall time {raw['wall']:.0f} s with {raw['background_cores']:.2f} cores of "
                "other load; `epoch_ckpt.yaml` only adds a "
                f"ModelCheckpoint per epoch.) Plot: `{os.path.relpath(raw['img'] or '-', ROOT)}`. Tables: first vs "
                "last logged "
                "value of each loss; validation per epoch with that epoch's curriculum mask sizes; and validation "
                "RMHC at *fixed* mask sizes for the initial weights and each epoch's checkpoint (dropout off, the "
                "same seeded masks for every checkpoint, first 20 validation batches).")
    return ""



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and smaller data (a smoke run, ~5 min)")
    p.add_argument("--sections", default="throughput,passes,lightning,datawait,losses",
                   help="comma-separated subset of: throughput, passes, lightning, datawait, losses")
    p.add_argument("--out", help="markdown file whose pretraining section is written/replaced (docs/benchmarks.md)")
    p.add_argument("--json", default=os.path.join(WORK, "bench_pretrain.json"), help="raw results")
    p.add_argument("--no-wait", action="store_true", help="do not wait for other benchmark scripts")
    p.add_argument("--reuse-losses", action="store_true",
                   help="losses: re-evaluate and re-plot the last run instead of training again")
    p.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "src"))
    if args._worker:
        kind, spec = args._worker
        fn = {"throughput": worker_throughput, "lightning": worker_lightning}[kind]
        print(json.dumps(fn(json.loads(spec))))
        return
    os.makedirs(WORK, exist_ok=True)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    waited = "" if args.no_wait else wait_for_other_benchmarks("bench_pretrain")
    info = machine()
    load_before = load_snapshot()
    gflops = sgemm_gflops()
    print(f"[bench_pretrain] sgemm 2048^2: {gflops:.0f} GFLOP/s; {load_before}", flush=True)
    command = "python benchmarks/bench_pretrain.py" + (" --quick" if args.quick else "") + (
        f" --sections {args.sections}" if args.sections != p.get_default("sections") else "") + (
        " --reuse-losses" if args.reuse_losses else "") + (" --no-wait" if args.no_wait else "") + (
        f" --out {args.out}" if args.out else "")
    # Rendered subsections are cached, so a run of some sections keeps the others' latest results in the doc.
    cache_path = os.path.join(WORK, "sections_quick.json" if args.quick else "sections.json")
    cache = {}
    if os.path.exists(cache_path):
        with open(cache_path) as f:
            cache = json.load(f)
    raw = {"machine": info, "sgemm_gflops": gflops, "command": command}
    fns = {"throughput": section_throughput, "passes": section_passes, "lightning": section_lightning,
           "datawait": section_datawait, "losses": section_losses}
    for name in sections:
        started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        before, t = load_snapshot(), time.perf_counter()
        table_md, raw[name] = (fns[name](args.quick, args.reuse_losses) if name == "losses"
                               else fns[name](args.quick))
        took, after = time.perf_counter() - t, load_snapshot()
        print(f"[bench_pretrain] {name} done in {took:.0f} s ({after})", flush=True)
        cache[name] = (f"### {TITLES[name]}\n\n*Measured {started}{' (quick mode)' if args.quick else ''} by "
                       f"`{command}` in {took / 60:.1f} min; sgemm 2048² {gflops:.0f} GFLOP/s at the start of "
                       f"that run; {before} before, {after} after{'; ' + waited if waited else ''}.*\n\n"
                       f"{describe(name, raw[name])}\n\n{table_md}\n")
        with open(cache_path, "w") as f:
            json.dump(cache, f, indent=1)
    with open(args.json, "w") as f:
        json.dump(raw, f, indent=1, default=str)
    body = [f"{SECTION}\n",
            ("Written by `python benchmarks/bench_pretrain.py --out docs/benchmarks.md` (each subsection names "
             "the run that measured it; a `### Findings` subsection written by hand is kept when the section is "
             "regenerated).\n"),
            (f"- Machine: `nproc` {info['nproc']}; `lscpu` model name: {info['cpu']}; `free -g`: {info['mem']} GB "
             f"total/used; torch {info['torch']} with {THREADS} threads; Python {info['python']}."),
            ("- Other processes shared the 2 cores during these runs (other engineers' tests and benchmarks): "
             "every timed subprocess waits up to 90 s for < 0.3 cores of other load, is repeated once if other "
             "load exceeded 0.5 cores while it ran, and its column \"other load (cores)\" reports the average CPU "
             "use of all other processes during the kept run."), ""]
    for name in TITLES:
        if name in cache:
            body.append(cache[name])
    text = "\n".join(body)
    publish(text, args.out, SECTION)


if __name__ == "__main__":
    main()
