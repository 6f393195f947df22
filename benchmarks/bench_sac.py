"""SAC data-collection benchmarks (issue 4/7), run by hand:

    python benchmarks/bench_sac.py [--curve_steps 50000] [--quick] [--out docs/benchmarks.md]

Measures:

1. SAC gradient updates/s on one CPU thread (``SACAgent.update`` on a filled replay buffer), for the default config
   (256x2, batch 128) and two alternatives (batch 256; SAC-AE's 1024x2), cheetah-run sizes (obs 17, action 6).
   Median of 3 rounds, the alternatives called round-robin so that load from other processes hits all alike.
2. Whole-collector speed: agent steps/s of ``collect --policy sac`` (env + update + recording), state only, and the
   per-frame cost of 84x84 pixels at default visuals and with ``--fast_render``.
3. Learning curves: ``collect --policy sac`` on cheetah-run and walker-walk in parallel (one process each, 1 torch
   thread), ``--curve_steps`` agent steps each, deterministic evaluation every 5,000 steps (5 episodes); plotted to
   docs/img/sac_curves.png if matplotlib is importable.
4. Disk per step of a pixel file, and the extrapolated time and disk of the full SMART suite (10 tasks x 5 replay
   ids x (100k random + 1M SAC) steps).

Scratch files go to benchmarks/_work/bench_sac/ (git-ignored). ``--out`` replaces (or appends) the section
"## SAC data collection (issue 4/7)" of the markdown file; other sections are left as they are.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
from _report import publish  # benchmarks/_report.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
WORK = os.path.join(ROOT, "benchmarks", "_work", "bench_sac")
SECTION = "## SAC data collection (issue 4/7)"
CURVE_TASKS = [("cheetah", "run"), ("walker", "walk")]
SUITE = [("walker", "stand"), ("walker", "walk"), ("walker", "run"), ("cheetah", "run"), ("hopper", "hop"),
         ("hopper", "stand"), ("cartpole", "swingup"), ("cartpole", "balance"), ("finger", "spin"),
         ("pendulum", "swingup")]
# CURL (Laskin et al. 2020), Table 1, column "State SAC" (environment steps = agent steps x action repeat)
PUBLISHED = {"cheetah-run": {100_000: 616, 500_000: 795}, "walker-walk": {100_000: 891, 500_000: 948}}


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_updates(rounds: int, n_updates: int) -> dict[str, float]:
    import torch

    from control_pretrain.agents.replay import ReplayBuffer
    from control_pretrain.agents.sac import SACAgent, SACConfig

    torch.set_num_threads(1)
    configs = {"256x2, batch 128 (default)": SACConfig(), "256x2, batch 256": SACConfig(batch_size=256),
               "1024x2, batch 128 (SAC-AE state)": SACConfig(hidden_dim=1024)}
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(17, 6, 20_000)
    n = 20_000
    buf.add(rng.normal(size=(n, 17)), rng.uniform(-1, 1, (n, 6)), rng.uniform(0, 4, n), np.ones(n), np.zeros(n, bool))
    agents = {k: SACAgent(17, 6, c) for k, c in configs.items()}
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(rounds):
        for k, agent in agents.items():
            reps = n_updates if "1024" not in k else max(n_updates // 8, 20)
            for _ in range(10):
                agent.update(*buf.sample(agent.cfg.batch_size))
            t = time.perf_counter()
            for _ in range(reps):
                agent.update(*buf.sample(agent.cfg.batch_size))
            times[k].append(reps / (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in times.items()}


def run_collect(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "src", "dmc_data.py"), "collect", *args, "--quiet",
                    "--overwrite"], check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - t


def bench_collector(steps: int) -> dict[str, float]:
    """Agent steps/s of the whole sac collector after its random phase, and frame costs."""
    from control_pretrain.envs.dmc import make_env

    out = {}
    d = os.path.join(WORK, "speed")
    # learning phase: from the first episode end after the 1,000 random steps and their catch-up updates
    logs = os.path.join(d, "logs")
    shutil.rmtree(logs, ignore_errors=True)
    common = ["--domain", "cheetah", "--task", "run", "--policy", "sac", "--data_dir_prefix", d, "--eval_every", "0",
              "--log_dir", logs]
    run_collect([*common, "--num_steps", str(steps + 1250), "--replay_id", "1"])
    with open(os.path.join(logs, "cheetah_run_s1", "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    a, b = recs[4], recs[-1]  # episode 5 ends at step 1,250
    out["sac_steps_per_s"] = (b["step"] - a["step"]) / (b["wall_s"] - a["wall_s"])
    t_rand = run_collect([*common, "--num_steps", str(steps), "--replay_id", "2", "--sac.init_steps",
                          str(steps + 1000)])
    out["random_phase_steps_per_s"] = steps / t_rand  # includes process start-up
    for fast in (False, True):
        env = make_env("cheetah", "run", pixels=True, fast_render=fast)
        env.reset()
        env.render()
        k = 300 if fast else 60
        t = time.perf_counter()
        for _ in range(k):
            env.render()
        out["fps_fast" if fast else "fps_default"] = k / (time.perf_counter() - t)
        env.close()
    # bytes per step of a pixel file (fast frames have the same size on disk: uncompressed uint8)
    run_collect(["--domain", "cheetah", "--task", "run", "--policy", "random", "--num_steps", "2000", "--pixels",
                 "--fast_render", "--data_dir_prefix", d, "--replay_id", "3"])
    path = os.path.join(d, "randcollect_cheetah_run", "cheetah_run_s3.h5")
    out["bytes_per_step"] = os.path.getsize(path) / 2000
    return out


def bench_curves(steps: int) -> dict[str, list[dict]]:
    from control_pretrain.collect.job import CollectJob
    from control_pretrain.collect.run import collect_many

    d = os.path.join(WORK, "curves")
    jobs = [CollectJob(domain=dom, task=task, replay_id=1, num_steps=steps, data_dir_prefix=d, policy="sac",
                       eval_every=5000, eval_episodes=5, overwrite=True, log_dir=os.path.join(d, "logs"))
            for dom, task in CURVE_TASKS]
    for j in jobs:  # a rerun starts fresh
        shutil.rmtree(os.path.join(d, "logs", f"{j.domain}_{j.task}_s1"), ignore_errors=True)
    t = time.perf_counter()
    collect_many(jobs, workers=len(jobs), quiet=True)
    wall = time.perf_counter() - t
    curves = {}
    for j in jobs:
        with open(os.path.join(d, "logs", f"{j.domain}_{j.task}_s1", "metrics.jsonl")) as f:
            curves[f"{j.domain}-{j.task}"] = [json.loads(line) for line in f]
    curves["_wall_s"] = wall
    return curves


def plot(curves: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(CURVE_TASKS), figsize=(5 * len(CURVE_TASKS), 3.5))
    for ax, (dom, task) in zip(axes, CURVE_TASKS, strict=True):
        name = f"{dom}-{task}"
        recs = curves[name]
        tr = [(r["step"], r["train/episode_return"]) for r in recs if "train/episode_return" in r]
        ev = [(r["step"], r["eval/return_mean"]) for r in recs if "eval/return_mean" in r]
        ax.plot(*zip(*tr, strict=True), ".", ms=2, alpha=0.5, label="train episodes")
        ax.plot(*zip(*ev, strict=True), "o-", label="eval (mean action, 5 ep.)")
        for env_steps, ret in PUBLISHED[name].items():
            ax.axhline(ret, ls="--", lw=0.8, color="gray")
            ax.text(0, ret, f" CURL State SAC @{env_steps // 1000}k env steps", fontsize=7, va="bottom")
        ax.set(title=name, xlabel="agent steps (x4 = env steps)", ylabel="episode return", ylim=(0, 1000))
        ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


def suite_estimate(speed: dict, fast: bool) -> dict[str, float]:
    """Core-hours and bytes for 10 tasks x 5 ids x (100k random + 1M SAC) with pixels (one core per run)."""
    fps = speed["fps_fast" if fast else "fps_default"]
    runs = len(SUITE) * 5
    rand_steps, sac_steps = 100_000, 1_000_000
    rand_s = rand_steps / speed["random_phase_steps_per_s"] + rand_steps / fps
    sac_s = sac_steps / speed["sac_steps_per_s"] + sac_steps / fps
    return {"core_hours": runs * (rand_s + sac_s) / 3600, "rand_h": rand_s / 3600, "sac_h": sac_s / 3600,
            "bytes": runs * (rand_steps + sac_steps) * speed["bytes_per_step"]}


def report(upd: dict, speed: dict, curves: dict | None, plotted: bool, before: str, after: str, args) -> str:
    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], check=False,
                         capture_output=True, text=True).stdout.strip()
    import torch

    lines = [SECTION, "", f"- Date: {datetime.date.today()}",
             (f"- Machine: {os.cpu_count()} CPUs, {cpu}, Python {platform.python_version()}, torch {torch.__version__}; "
             f"load average (1/5/15 min) {before} before, {after} after (the cores are shared with other work)"),
             (f"- Command: `python benchmarks/bench_sac.py --curve_steps {args.curve_steps}"
             f"{' --quick' if args.quick else ''} --out docs/benchmarks.md`"), "",
             "### SAC updates/s (one thread, cheetah-run sizes: obs 17, action 6)", "",
             "| network, batch | updates/s (median of 3) |", "|---|---|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in upd.items()]
    lines += ["", "### Collector speed (cheetah-run, 1 torch thread)", "",
              "| what | rate |", "|---|---|",
              (f"| `--policy sac`, learning phase (1 update per step, env + update + recording) | "
              f"{speed['sac_steps_per_s']:,.0f} agent steps/s |"),
              (f"| random phase / `--policy random`, state only (incl. process start-up) | "
              f"{speed['random_phase_steps_per_s']:,.0f} agent steps/s |"),
              f"| 84x84 frame, default visuals | {speed['fps_default']:,.0f} frames/s |",
              f"| 84x84 frame, `--fast_render` | {speed['fps_fast']:,.0f} frames/s |",
              f"| disk per step with pixels (HDF5, uncompressed) | {speed['bytes_per_step'] / 1000:,.1f} KB |", ""]
    if curves is not None:
        lines += ["### Learning curves (one seed each, run in parallel)", ""]
        if plotted:
            lines += ["![SAC learning curves](img/sac_curves.png)", ""]
        lines += [("| task | agent steps | env steps | eval return (mean action, 5 episodes) at 10k / 25k / last | "
                  "best eval | published State SAC (CURL Table 1) |"), "|---|---|---|---|---|---|"]
        for name, recs in curves.items():
            if name.startswith("_"):
                continue
            ev = {r["step"]: r["eval/return_mean"] for r in recs if "eval/return_mean" in r}
            last = max(ev)

            def at(s, ev=ev):
                return f"{ev[s]:.0f}" if s in ev else "-"

            pub = ", ".join(f"{v} at {k // 1000}k env steps" for k, v in PUBLISHED[name].items())
            lines.append(f"| {name} | {last:,} | {4 * last:,} | {at(10000)} / {at(25000)} / {ev[last]:.0f} | "
                         f"{max(ev.values()):.0f} | {pub} |")
        lines += ["", (f"Both runs together took {curves['_wall_s'] / 60:.1f} min wall. The published numbers count "
                  "environment steps (agent steps x action repeat) and are means over several seeds of a differently "
                  "tuned state SAC (CURL, Laskin et al. 2020, Table 1, column 'State SAC': cheetah-run 616 +- 18 at "
                  "100k and 795 +- 30 at 500k env steps; walker-walk 891 +- 82 and 948 +- 54), so they are a rough "
                  "target for one seed, not a like-for-like comparison. With action repeat 4 and one update per agent "
                  "step, N env steps are only N/4 gradient updates, while a state SAC at action repeat 1 has made N "
                  "updates by N env steps."), ""]
    lines += ["### Regenerating the SMART suite (10 tasks x 5 replay ids x (100k random + 1M SAC steps), pixels)", "",
              ("| frames | per (task, id): random / SAC, core-hours | all 50 runs, core-hours | on 2 cores, days | "
              "disk |"), "|---|---|---|---|---|"]
    for fast in (False, True):
        e = suite_estimate(speed, fast)
        lines.append(f"| {'fast_render' if fast else 'default visuals (as the paper)'} | {e['rand_h']:.1f} / "
                     f"{e['sac_h']:.1f} | {e['core_hours']:,.0f} | {e['core_hours'] / 2 / 24:.1f} | "
                     f"{e['bytes'] / 1e12:.2f} TB |")
    lines += ["", ("Extrapolated linearly from the rates above (one run per core, as `scripts/collect_smart_data.sh` "
              "does); the SAC rate is cheetah-run's, and walker/hopper physics is 1.5-2x slower per step but small "
              "next to an update. Disk: steps x bytes per step."), ""]
    return "\n".join(lines)



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curve_steps", type=int, default=50_000, help="agent steps per learning curve (0: skip)")
    p.add_argument("--quick", action="store_true", help="fewer updates and steps (a smoke run)")
    p.add_argument("--out", default=None, help="markdown file to write the section into")
    args = p.parse_args()
    os.makedirs(WORK, exist_ok=True)
    before = load()
    upd = bench_updates(3, 100 if args.quick else 500)
    print("updates/s", upd, flush=True)
    speed = bench_collector(500 if args.quick else 3000)
    print("collector", speed, flush=True)
    curves = bench_curves(args.curve_steps) if args.curve_steps else None
    plotted = curves is not None and plot(curves, os.path.join(ROOT, "docs", "img", "sac_curves.png"))
    after = load()
    text = report(upd, speed, curves, plotted, before, after, args)
    publish(text, args.out, SECTION)


if __name__ == "__main__":
    main()
