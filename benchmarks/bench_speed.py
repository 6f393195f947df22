"""Pretraining step speed against an older commit, side by side (issue 16), run by hand:

    python benchmarks/bench_speed.py [--configs paper,reduced,state] [--rounds 3] [--steps 5]
                                     [--baseline 8beba91] [--precision 32 bf16-mixed] [--accelerator cpu|gpu]
                                     [--compile] [--out docs/benchmarks.md]

The stand-in for the original SMART code is commit 8beba91 (main before this wave) with ``share_passes=False``:
three transformer passes per step like microsoft/smart, measured at 1.05x the original's samples/s on one machine
(issue 16). That commit is checked out in a temporary git worktree (benchmarks/_work/wt_<commit>) and timed in the
same run as the working tree: each round runs one fresh process per side, alternating, and each process times
``--steps`` steps after 2 warm-up steps (forward of the three SMART objectives + backward + AdamW + EMA update on
random batches shaped like the data pipeline's, batch 32, K=30; each tree's own ``benchmarks/bench_pretrain.py``
builds its module and batch). Reported: median samples/s per side, the median of the per-round ratios, counted
matrix-multiply GFLOP per sample [derived], achieved GFLOP/s, peak RSS (CPU) or peak allocated memory (GPU).

``--precision`` lists the working tree's precisions to time (the baseline is always float32: it is the original's
setting); ``bf16-mixed`` is ``torch.autocast`` in bfloat16, what ``--trainer.precision bf16-mixed`` does.
``--accelerator gpu`` runs both sides on the first CUDA device and adds MFU (achieved / the device's peak dense
bf16 or fp32 FLOP/s, ``--peak_tflops`` or a table of known devices). ``--compile`` wraps the trunk and the
encoders in ``torch.compile`` (working tree only). ``--out`` replaces the section "## Speed (issue 16)".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from _report import cpu_model, markdown_table, publish  # benchmarks/_report.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "benchmarks", "_work")
SECTION = "## Speed (issue 16)"
THREADS = 2
CONFIGS = {  # name: (bench_pretrain size, obs_type)
    "paper": ("paper", "pixels"),  # 8 layers x 256, 8 heads, pixels 84x84
    "reduced": ("small", "pixels"),  # 4 layers x 128, 4 heads, pixels
    "state": ("paper", "state"),  # paper size, state observations (obs 24)
}
# Dense peak TFLOP/s (bf16, fp32 without TF32) of devices we may be lent, from the vendors' data sheets.
PEAK_TFLOPS = {"H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5), "L40S": (362.0, 91.6),
               "A10": (125.0, 31.2), "V100": (125.0, 15.7)}


# ------------------------------------------------------------------------------------------------- worker
def worker(spec: dict) -> dict:
    """One side in a fresh process: ``spec['tree']``'s own bench_pretrain builds module, batch and step."""
    sys.path[:0] = [os.path.join(spec["tree"], "src"), os.path.join(spec["tree"], "benchmarks")]
    import bench_pretrain as bp
    import torch

    torch.set_num_threads(THREADS)
    size, obs_type = CONFIGS[spec["config"]]
    module = bp.build_module(size, obs_type, spec["share_passes"])
    device = torch.device("cuda" if spec["accelerator"] == "gpu" else "cpu")
    module.to(device)
    batch = {k: v.to(device) for k, v in bp.make_batch(obs_type).items()}
    opt = bp.make_optimizer(module)
    if spec["compile"]:
        model = module.model
        model.forward_tokens = torch.compile(model.forward_tokens)
        model.obs_encoder.compile()
        model.target_obs_encoder.compile()
    bf16 = spec["precision"] == "bf16-mixed"

    def step():  # the tree's own step (its EMA update API differs); autocast only changes the listed ops
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            bp.plain_step(module, opt, batch)
        if device.type == "cuda":
            torch.cuda.synchronize()

    calls = []
    hook = module.model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    step()  # warm-up 1, counts the transformer passes
    hook.remove()
    step()  # warm-up 2
    times = []
    for _ in range(spec["steps"]):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"step_s": statistics.median(times), "passes": len(calls), "peak_bytes": peak,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else cpu_model()}


def run_side(spec: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(spec)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": ""}
    out = subprocess.run(cmd, cwd=spec["tree"], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def baseline_tree(commit: str) -> str:
    """A detached worktree of ``commit`` under benchmarks/_work (made once, reused)."""
    path = os.path.join(WORK, f"wt_{commit}")
    if not os.path.isdir(path):
        os.makedirs(WORK, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", path, commit], cwd=ROOT, check=True,
                       capture_output=True)
    return path


# ------------------------------------------------------------------------------------------------- report
def flops_per_sample(config: str, passes: int) -> float:
    import bench_pretrain as bp  # this tree's (the script's folder is on sys.path); workers import their tree's

    size, obs_type = CONFIGS[config]
    return bp.flops_per_sample(size, obs_type, passes)


def peak_flops(device: str, bf16: bool, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for name, (p_bf16, p_fp32) in PEAK_TFLOPS.items():
        if name in device:
            return (p_bf16 if bf16 else p_fp32) * 1e12
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="paper,reduced,state")
    p.add_argument("--rounds", type=int, default=3, help="alternating process pairs per config and precision")
    p.add_argument("--steps", type=int, default=5, help="timed steps per process (after 2 warm-up steps)")
    p.add_argument("--baseline", default="8beba91", help="the commit timed with share_passes=False")
    p.add_argument("--precision", nargs="+", default=["32", "bf16-mixed"], choices=["32", "bf16-mixed"])
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--compile", action="store_true", help="torch.compile the working tree's trunk and encoders")
    p.add_argument("--peak_tflops", type=float, help="the device's peak dense TFLOP/s for MFU")
    p.add_argument("--out", help="markdown file whose speed section is written/replaced")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._worker:
        print(json.dumps(worker(json.loads(args._worker))))
        return

    base = baseline_tree(args.baseline)
    common = {"accelerator": args.accelerator, "steps": args.steps}
    rows, raw, t0 = [], {}, time.time()
    for config in args.configs.split(","):
        for precision in args.precision:
            ours_spec = {**common, "tree": ROOT, "config": config, "share_passes": True, "precision": precision,
                         "compile": args.compile}
            base_spec = {**common, "tree": base, "config": config, "share_passes": False, "precision": "32",
                         "compile": False}
            ours, old = [], []
            for r in range(args.rounds):
                for side, spec in ((old, base_spec), (ours, ours_spec))[:: 1 if r % 2 == 0 else -1]:
                    side.append(run_side(spec))
                print(f"[bench_speed] {config} {precision} round {r + 1}: ours {32 / ours[-1]['step_s']:.2f} vs "
                      f"{args.baseline} {32 / old[-1]['step_s']:.2f} samples/s", flush=True)
            ratios = [o["step_s"] / n["step_s"] for o, n in zip(old, ours)]
            sps_ours = 32 / statistics.median(r["step_s"] for r in ours)
            sps_old = 32 / statistics.median(r["step_s"] for r in old)
            fl_ours, fl_old = flops_per_sample(config, ours[0]["passes"]), flops_per_sample(config, old[0]["passes"])
            row = [config, precision, f"{ours[0]['passes']} / {old[0]['passes']}", f"{sps_old:.2f}", f"{sps_ours:.2f}",
                   f"**{statistics.median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f})",
                   f"{fl_old / 1e9:.2f} / {fl_ours / 1e9:.2f}",
                   f"{fl_old * sps_old / 1e9:.0f} / {fl_ours * sps_ours / 1e9:.0f}",
                   (f"{statistics.median(r['peak_bytes'] for r in old) / 2**30:.2f} / "
                   f"{statistics.median(r['peak_bytes'] for r in ours) / 2**30:.2f}")]
            peak = peak_flops(ours[0]["device"], precision == "bf16-mixed", args.peak_tflops)
            if args.accelerator == "gpu":
                row.append(f"{100 * fl_ours * sps_ours / peak:.0f}%" if peak else "?")
            rows.append(row)
            raw[f"{config}/{precision}"] = {"ours": ours, "baseline": old, "ratios": ratios}
    header = ["config", "precision (ours)", "passes (ours / base)", f"{args.baseline} samples/s",
              "ours samples/s", "ours / base (median of rounds, range)", "GFLOP/sample (base / ours) [derived]",
              "achieved GFLOP/s (base / ours)", "peak memory GiB (base / ours)"]
    if args.accelerator == "gpu":
        header.append("MFU (ours)")
    os.makedirs(WORK, exist_ok=True)
    with open(os.path.join(WORK, "bench_speed.json"), "w") as f:
        json.dump(raw, f, indent=1)
    import torch

    text = "\n".join([
        SECTION, "",
        f"- Date: {datetime.date.today().isoformat()}; {(time.time() - t0) / 60:.1f} min",
        (f"- Machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}, torch "
        f"{torch.__version__}, {THREADS} torch threads; device: {ours[0]['device']}; 1-min load average at the end "
        f"{os.getloadavg()[0]:.2f}"),
        f"- Command: `python benchmarks/bench_speed.py {' '.join(sys.argv[1:])}`",
        (f"- Baseline: commit {args.baseline} with `share_passes=False` (3 passes, the original's), float32; "
        f"{args.rounds} rounds of one process per side, alternating; {args.steps} timed steps per process "
        f"after 2 warm-up steps; batch 32, K=30{'; ours under torch.compile' if args.compile else ''}."),
        "", markdown_table(header, rows), ""])
    print(text)
    if args.out:
        publish(text, args.out, SECTION)


if __name__ == "__main__":
    main()
