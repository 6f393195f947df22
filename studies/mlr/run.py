"""MLR's T1 benchmark on this CPU (issue 17, mlr_mwm.md §C.5): pixel SAC with and without MLR on cartpole-swingup
at the smoke preset, against a uniformly random policy scored by the same evaluation harness.

The CPU preset runs 15k env steps, half the spec's 30k: one MLR update costs 2.1 s here (docs/benchmarks.md), so
30k steps take about 2.4 CPU hours, and a run's resume state (its replay) lives outside git, so it cannot be
continued in a later session. ``--env_steps 30000`` runs the spec's length where one job may run that long.

What it can claim: pipeline parity (both arms rise clearly above random). Not MLR's benefit: one seed per arm, and
the paper's own 100k standard deviations are 16-114 points (48 on cartpole).

Cells (task, arm, seed), each a JSON under studies/mlr/results/<preset>/cells/: the evaluation curve (env steps,
mean and std of the deterministic returns), the final return, updates/s and wall time, and the exact command.
Training runs live in studies/mlr/runs/ (not committed) and are resumed where a job stopped (``dmc_online.py
--resume``), so the study can be split across jobs.

Usage:
  python studies/mlr/run.py                          # the CPU preset: random, sac and sac_mlr on cartpole-swingup
  python studies/mlr/run.py --only sac               # some arms
  python studies/mlr/run.py --report                 # the table from the committed cells
  python studies/mlr/run.py --preset gpu --dry_run   # DMC-100k at the paper's configuration, 3 tasks x 5 seeds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "src"))

# Per preset: tasks, seeds, agent steps per task (env steps / the paper's action repeat), the agent preset,
# evaluation every N env steps with M episodes, and the device.
PRESETS = {
    "cpu": {"tasks": ["cartpole-swingup"], "seeds": [1], "env_steps": 15_000, "agent_preset": "smoke",
            "eval_every_env": 5_000, "eval_episodes": 10, "device": "cpu"},
    "gpu": {"tasks": ["cartpole-swingup", "reacher-easy", "walker-walk"], "seeds": [1, 2, 3, 4, 5],
            "env_steps": 100_000, "agent_preset": "paper", "eval_every_env": 5_000, "eval_episodes": 10,
            "device": "cuda"},
}
ARMS = ["random", "sac", "sac_mlr"]


def cell_name(task: str, arm: str, seed: int) -> str:
    return f"{task}_{arm}_s{seed}"


def command(preset: dict, task: str, arm: str, seed: int, folder: str) -> list[str]:
    from control_pretrain.agents.pixel_presets import paper_action_repeat

    domain, name = task.split("-")
    repeat = paper_action_repeat(domain)
    return [sys.executable, os.path.join(ROOT, "src", "dmc_online.py"), "--agent", arm, "--obs_type", "pixels",
            "--domain", domain, "--task", name, "--num_steps", str(preset["env_steps"] // repeat),
            "--preset", preset["agent_preset"], "--seed", str(seed), "--eval_every",
            str(preset["eval_every_env"] // repeat), "--eval_episodes", str(preset["eval_episodes"]),
            "--checkpoint_every", "5", "--device", preset["device"], "--output_dir", folder]


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def read_metrics(folder: str) -> tuple[list[dict], float]:
    """The run's records (a record logged again after a resume replaces the earlier one) and its wall time over
    all jobs (``wall_s`` restarts at 0 in each job)."""
    records, wall, segment = {}, 0.0, 0.0
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if m["wall_s"] < segment:
                wall += segment
            segment = m["wall_s"]
            records[m["step"], "eval/return_mean" in m] = m
    return [records[k] for k in sorted(records)], wall + segment


def run_random(preset: dict, task: str, seed: int, action_repeat: int | None = None) -> dict:
    """A uniformly random policy through the loop's evaluation (agents/loop.py ``evaluate``) on the evaluation
    environment of a seed-``seed`` run: the same initial states the agents are scored on (``action_repeat``: the
    paper's for the domain unless given; studies/mwm/run.py uses MWM's 2)."""
    import numpy as np

    from control_pretrain.agents.loop import EVAL_SEED_OFFSET, evaluate
    from control_pretrain.agents.pixel_presets import paper_action_repeat
    from control_pretrain.envs.dmc import make_env

    domain, name = task.split("-")
    repeat = action_repeat or paper_action_repeat(domain)
    env = make_env(domain, name, seed=seed + EVAL_SEED_OFFSET, action_repeat=repeat)
    rng = np.random.default_rng(seed)

    class Random:
        def act(self, obs, deterministic=False):
            return rng.uniform(-1, 1, env.action_dim).astype(np.float32)

    returns = evaluate(Random(), env, 3 * preset["eval_episodes"])
    env.close()
    return {"final_return_mean": float(np.mean(returns)), "final_return_std": float(np.std(returns)),
            "returns": returns}


def run_cell(preset_name: str, task: str, arm: str, seed: int, dry_run: bool) -> None:
    preset = PRESETS[preset_name]
    out = os.path.join(HERE, "results", preset_name, "cells", cell_name(task, arm, seed) + ".json")
    if os.path.exists(out):
        return
    folder = os.path.join(HERE, "runs", preset_name, cell_name(task, arm, seed))
    cell = {"preset": preset_name, "task": task, "arm": arm, "seed": seed, "env_steps": preset["env_steps"],
            "machine": f"{platform.node()} ({os.cpu_count()} cores)",
            "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                     check=False).stdout.strip()}
    if arm == "random":
        if dry_run:
            print(f"random policy on {task}, seed {seed}")
            return
        cell.update(run_random(preset, task, seed), command="studies/mlr/run.py (random arm)")
    else:
        cmd = command(preset, task, arm, seed, folder)
        if os.path.exists(os.path.join(folder, "state.pt")):
            cmd.append("--resume")
        if dry_run:
            print(" ".join(cmd[1:]))
            return
        if not os.path.exists(os.path.join(folder, "agent.pt")):
            print(f"[{cell_name(task, arm, seed)}] {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
        records, wall = read_metrics(folder)
        evals = [m for m in records if "eval/return_mean" in m]
        repeat = read_json(os.path.join(folder, "run.json"))["action_repeat"]
        episodes = [m for m in records if "train/updates_per_s" in m]
        cell.update(command=" ".join(["python", *[os.path.relpath(c, ROOT) if c.startswith(ROOT) else c
                                                  for c in cmd[1:] if c != "--resume"]]),
                    eval_curve=[[m["step"] * repeat, m["eval/return_mean"], m["eval/return_std"]] for m in evals],
                    final_return_mean=evals[-1]["eval/return_mean"], final_return_std=evals[-1]["eval/return_std"],
                    updates_per_s_last_job=episodes[-1]["train/updates_per_s"], wall_s=wall,
                    train_curve=[[m["step"] * repeat, m["train/episode_return"],
                                  m.get("train/mlr_loss"), m.get("train/critic_loss")] for m in episodes])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(cell, f, indent=1)
    os.replace(tmp, out)
    print(f"[{cell_name(task, arm, seed)}] final return {cell['final_return_mean']:.1f}", flush=True)


def report(preset_name: str) -> str:
    folder = os.path.join(HERE, "results", preset_name, "cells")
    cells = [read_json(os.path.join(folder, f)) for f in sorted(os.listdir(folder)) if f.endswith(".json")]
    lines = [("| task | arm | seed | final return (mean ± std over eval episodes) | evaluations (env steps: return) | "
              "wall time | updates/s |"), "|---|---|---|---|---|---|---|"]
    for c in cells:
        curve = ", ".join(f"{s // 1000}k: {r:.0f}" for s, r, _ in c.get("eval_curve", []))
        wall = f"{c['wall_s'] / 3600:.2f} h" if "wall_s" in c else "-"
        ups = f"{c['updates_per_s_last_job']:.2f}" if "updates_per_s_last_job" in c else "-"
        lines.append(f"| {c['task']} | {c['arm']} | {c['seed']} | {c['final_return_mean']:.1f} ± "
                     f"{c['final_return_std']:.1f} | {curve or '-'} | {wall} | {ups} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu", choices=list(PRESETS))
    p.add_argument("--only", default=",".join(ARMS), help="comma-separated arms")
    p.add_argument("--report", action="store_true")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--env_steps", type=int, default=None, help="override the preset's env steps per run")
    args = p.parse_args()
    if args.env_steps:
        PRESETS[args.preset]["env_steps"] = args.env_steps
    if args.report:
        print(report(args.preset))
        return
    preset = PRESETS[args.preset]
    t0 = time.time()
    for task in preset["tasks"]:
        for seed in preset["seeds"]:
            for arm in args.only.split(","):
                run_cell(args.preset, task, arm, seed, args.dry_run)
    if not args.dry_run:
        print(f"done in {(time.time() - t0) / 3600:.2f} h")


if __name__ == "__main__":
    main()
