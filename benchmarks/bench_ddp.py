"""Data-parallel scaling of pretraining: samples/s with 1 vs N processes at the same global batch.

    python benchmarks/bench_ddp.py --out docs/benchmarks.md               # CPU: 1 proc (1 and 2 threads) vs 2 procs
    python benchmarks/bench_ddp.py --preset paper --accelerator gpu --devices 1 2 4 --peak_tflops 989 \\
        --precision bf16-mixed --out docs/benchmarks.md                   # GPUs: also utilisation and MFU

Every run is the real CLI (``src/dmc_pretrain.py``) on the same data; throughput is the median of the logged
samples/s of all ranks (Lightning's ``ThroughputMonitor``: ``train/samples_per_sec``, or
``train/device/samples_per_sec`` with one process) after the first logging window. Model FLOPs per sample are counted with
``torch.utils.flop_counter`` on one training step (forward + backward of every objective), so MFU = samples/s x
FLOPs per sample / peak FLOP/s of all devices. The data-wait fraction is the median of ``train/data_wait_frac``
(``DataWaitMonitor``: the share of wall time rank 0 waited for its next batch). ``--precision`` is passed on as
``--trainer.precision`` (``bf16-mixed``: autocast in bfloat16).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

from _report import samples_per_sec, tb_scalars, write_section  # benchmarks/_report.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
WORK = os.path.join(ROOT, "benchmarks", "_work", "ddp")
SECTION = "## Data-parallel scaling (issue 6/7)"
TASKS = "configs/pretrain_configs/multipretrain_source_test.json"
PRESETS = {  # model and data: (obs_type, n_layer, n_head, n_embd, K, global batch, steps)
    "cpu": ("state", 4, 4, 128, 30, 64, 60),
    "paper": ("pixels", 8, 8, 256, 30, 256, 100),  # smart.md: the paper's control transformer
}


def ensure_data(obs_type: str) -> str:
    prefix = os.path.join(WORK, f"data_{obs_type}")
    if not os.path.exists(os.path.join(prefix, "randcollect_pendulum_swingup")):
        cmd = [sys.executable, "src/dmc_data.py", "collect", "--multi_config", TASKS, "--num_steps", "5000",
               "--data_dir_prefix", prefix, "--quiet"] + (["--pixels", "--fast_render"] if obs_type == "pixels" else [])
        subprocess.run(cmd, cwd=ROOT, check=True)
    return prefix


def model_args(preset: str) -> list[str]:
    obs_type, n_layer, n_head, n_embd, K, _, _ = PRESETS[preset]
    return ["--model.obs_type", obs_type, "--model.n_layer", str(n_layer), "--model.n_head", str(n_head),
            "--model.n_embd", str(n_embd), "--model.context_length", str(K)]


def flops_per_sample(preset: str, prefix: str) -> float:
    """Counted matmul/conv FLOPs of one training step (all objectives, forward + backward), per window."""
    from torch.utils.flop_counter import FlopCounterMode

    from control_pretrain.data.datamodules.pretrain import MultiTaskDataModule
    from control_pretrain.lit.pretrain_module import PretrainModule

    obs_type, n_layer, n_head, n_embd, K, _, _ = PRESETS[preset]
    dm = MultiTaskDataModule(multi_config=TASKS, num_steps=5000, data_dir_prefix=prefix, obs_type=obs_type,
                             context_length=K, num_workers=0)
    dm.setup()
    module = PretrainModule(obs_type=obs_type, obs_dim=dm.obs_dim, action_dim=dm.action_dim, n_layer=n_layer,
                            n_head=n_head, n_embd=n_embd, context_length=K)
    batch = dm.train_set.__getitems__(list(range(8)))
    with FlopCounterMode(display=False) as counter:
        module.compute_losses(batch)["loss"].backward()
    return counter.get_total_flops() / 8


def run(preset: str, prefix: str, devices: int, threads: int, accelerator: str, precision: str) -> dict:
    _, _, _, _, _, global_batch, steps = PRESETS[preset]
    out = tempfile.mkdtemp(dir=WORK)
    cmd = [sys.executable, "src/dmc_pretrain.py", "--multi_config", TASKS, "--num_steps", "5000",
           "--data_dir_prefix", prefix, "--output_dir", out, "--epochs", "1", *model_args(preset),
           "--data.batch_size", str(global_batch // devices), "--data.num_workers", "1",
           "--trainer.limit_train_batches", str(steps), "--trainer.limit_val_batches", "0",
           "--trainer.log_every_n_steps", "10", "--trainer.accelerator", accelerator,
           "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
           "--trainer.precision", precision, "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    util = None
    if accelerator == "gpu":
        util = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                 "-lms", "500"], stdout=subprocess.PIPE, text=True)
    load = os.getloadavg()[0]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    gpu_util = None
    if util is not None:
        util.terminate()
        values = [float(v) for v in util.communicate()[0].split() if v.replace(".", "").isdigit()]
        gpu_util = statistics.median(values) if values else None
    scalars = tb_scalars(out)
    rates = [value for _, value in samples_per_sec(scalars)][1:]
    waits = [value for _, value in scalars.get("train/data_wait_frac", [])][1:]
    return {"devices": devices, "threads": threads, "samples_per_sec": statistics.median(rates),
            "readings": rates, "gpu_util": gpu_util, "load_before": load,
            "data_wait": statistics.median(waits) if waits else None}


def report(preset: str, results: list[dict], flops: float, peak_tflops: float | None, accelerator: str,
           precision: str) -> str:
    import torch

    base = results[0]["samples_per_sec"]
    obs_type, n_layer, n_head, n_embd, K, global_batch, steps = PRESETS[preset]
    lines = [SECTION, "",
             (f"- Date: {datetime.date.today()}; machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
             f"torch {torch.__version__}, Python {platform.python_version()}"),
             (f"- Command: `python benchmarks/bench_ddp.py --preset {preset} --accelerator {accelerator} "
              f"--precision {precision} ...`"),
             (f"- Model: {obs_type}, {n_layer} layers x {n_embd} wide, {n_head} heads, K={K}; global batch "
             f"{global_batch} windows split over the processes; {steps} steps per run; all three objectives; "
             f"{flops / 1e9:.2f} GFLOP per window per training step (counted)."), "", "### Throughput", "",
             "| processes | threads each | samples/s (median, all ranks) | vs first row | achieved GFLOP/s"
             + (" | GPU util (median) | MFU" if accelerator == "gpu" else "") + " | data wait | load avg before |",
             "|---|---|---|---|---" + ("|---|---" if accelerator == "gpu" else "") + "|---|---|"]
    for r in results:
        row = (f"| {r['devices']} | {r['threads']} | {r['samples_per_sec']:.0f} | {r['samples_per_sec'] / base:.2f}x "
               f"| {r['samples_per_sec'] * flops / 1e9:.1f}")
        if accelerator == "gpu":
            mfu = r["samples_per_sec"] * flops / (peak_tflops * 1e12 * r["devices"]) if peak_tflops else None
            row += f" | {r['gpu_util'] if r['gpu_util'] is not None else '-'}% | " + (f"{mfu:.1%}" if mfu else "-")
        wait = f"{r['data_wait']:.1%}" if r.get("data_wait") is not None else "-"
        lines.append(row + f" | {wait} | {r['load_before']:.2f} |")
    return "\n".join(lines) + "\n"



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--repeats", type=int, default=2, help="runs per configuration (interleaved); the median is kept")
    p.add_argument("--precision", default="32-true", help="--trainer.precision of every run (e.g. bf16-mixed)")
    p.add_argument("--peak_tflops", type=float, help="peak dense FLOP/s of one device (H100 SXM bf16: 989)")
    p.add_argument("--out", help="markdown file whose section is written/replaced (docs/benchmarks.md)")
    args = p.parse_args()
    os.makedirs(WORK, exist_ok=True)
    obs_type = PRESETS[args.preset][0]
    prefix = ensure_data(obs_type)
    flops = flops_per_sample(args.preset, prefix)
    cores = os.cpu_count() or 1
    # CPU: one process with 1 thread, one with all cores, then N processes sharing the cores.
    configs = ([(1, 1), (1, cores)] + [(n, max(1, cores // n)) for n in args.devices if n > 1]
               if args.accelerator == "cpu" else [(n, 4) for n in args.devices])
    runs: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    for rep in range(args.repeats):
        for devices, threads in configs:
            print(f"repeat {rep + 1}/{args.repeats}: {devices} process(es) x {threads} thread(s)", flush=True)
            runs[(devices, threads)].append(run(args.preset, prefix, devices, threads, args.accelerator,
                                                   args.precision))
    results = []
    for c in configs:
        med = statistics.median(r["samples_per_sec"] for r in runs[c])
        results.append({**runs[c][0], "samples_per_sec": med,
                        "load_before": max(r["load_before"] for r in runs[c]), "all": [r["samples_per_sec"] for r in runs[c]]})
    body = report(args.preset, results, flops, args.peak_tflops, args.accelerator, args.precision)
    print(body)
    with open(os.path.join(WORK, "bench_ddp.json"), "w") as f:
        json.dump({"flops_per_sample": flops, "results": results}, f, indent=2)
    if args.out:
        write_section(args.out, SECTION, body)


if __name__ == "__main__":
    main()
