"""MWM's T1 benchmark on this CPU (issue 18, mlr_mwm.md §C.5): the ``tiny`` MWM agent on cartpole-swingup for 20k
env steps (action repeat 2, 10k policy steps), against a uniformly random policy scored by the same evaluation
harness at the same action repeat.

What it can claim: the pipeline learns (the MAE's masked-patch PSNR rises, the world model's feature loss falls,
returns rise above random). Not the paper's numbers: one seed, a tiny model, and MWM's own README says its DMC
results do not reproduce (§B.6).

Cells (task, arm, seed), each a JSON under studies/mwm/results/<preset>/cells/: the evaluation curve, the final
return, the training curves (MAE loss and PSNR, world-model feature loss and KL per episode), wall time and the
exact command. Runs live in studies/mwm/runs/ (not committed) and resume where a job stopped.

Usage:
  python studies/mwm/run.py                          # the CPU preset: random and mwm on cartpole-swingup
  python studies/mwm/run.py --report                 # the table from the committed cells
  python studies/mwm/run.py --preset gpu --dry_run   # the paper-size agent on 3 DMC tasks x 3 seeds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, os.path.join(ROOT, "studies", "mlr"))

from run import read_json, read_metrics, run_random  # studies/mlr/run.py: the same cell mechanics

ACTION_REPEAT = 2  # MWM's, every task (§B.5)
PRESETS = {
    "cpu": {"tasks": ["cartpole-swingup"], "seeds": [1], "env_steps": 20_000, "agent_preset": "tiny",
            "eval_every_env": 5_000, "eval_episodes": 5, "device": "cpu"},
    "gpu": {"tasks": ["cartpole-swingup", "walker-walk", "cheetah-run"], "seeds": [1, 2, 3], "env_steps": 500_000,
            "agent_preset": "paper", "eval_every_env": 20_000, "eval_episodes": 5, "device": "cuda"},
}
ARMS = ["random", "mwm"]
# Per-episode training metrics kept in a cell (None where an episode made no such update).
TRAIN_KEYS = ["train/episode_return", "train/mae_loss", "train/mae_psnr", "train/wm_feature_loss", "train/wm_kl"]


def cell_name(task: str, arm: str, seed: int) -> str:
    return f"{task}_{arm}_s{seed}"


def command(preset: dict, task: str, seed: int, folder: str) -> list[str]:
    domain, name = task.split("-")
    return [sys.executable, os.path.join(ROOT, "src", "dmc_online.py"), "--agent", "mwm", "--obs_type", "pixels",
            "--domain", domain, "--task", name, "--action_repeat", str(ACTION_REPEAT),
            "--num_steps", str(preset["env_steps"] // ACTION_REPEAT), "--preset", preset["agent_preset"],
            "--seed", str(seed), "--eval_every", str(preset["eval_every_env"] // ACTION_REPEAT),
            "--eval_episodes", str(preset["eval_episodes"]), "--checkpoint_every", "5", "--device",
            preset["device"], "--output_dir", folder]


def run_cell(preset_name: str, task: str, arm: str, seed: int, dry_run: bool) -> None:
    preset = PRESETS[preset_name]
    out = os.path.join(HERE, "results", preset_name, "cells", cell_name(task, arm, seed) + ".json")
    if os.path.exists(out):
        return
    folder = os.path.join(HERE, "runs", preset_name, cell_name(task, arm, seed))
    cell = {"preset": preset_name, "task": task, "arm": arm, "seed": seed, "env_steps": preset["env_steps"],
            "action_repeat": ACTION_REPEAT, "machine": f"{platform.node()} ({os.cpu_count()} cores)",
            "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                     check=False).stdout.strip()}
    if arm == "random":
        if dry_run:
            print(f"random policy on {task}, seed {seed}, action repeat {ACTION_REPEAT}")
            return
        cell.update(run_random(preset, task, seed, ACTION_REPEAT), command="studies/mwm/run.py (random arm)")
    else:
        cmd = command(preset, task, seed, folder)
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
        episodes = [m for m in records if "train/episode_return" in m]
        cell.update(command=" ".join(["python", *[os.path.relpath(c, ROOT) if c.startswith(ROOT) else c
                                                  for c in cmd[1:] if c != "--resume"]]),
                    eval_curve=[[m["step"] * ACTION_REPEAT, m["eval/return_mean"], m["eval/return_std"]]
                                for m in evals],
                    final_return_mean=evals[-1]["eval/return_mean"], final_return_std=evals[-1]["eval/return_std"],
                    wall_s=wall, train_keys=["env_steps", *TRAIN_KEYS],
                    train_curve=[[m["step"] * ACTION_REPEAT, *[m.get(k) for k in TRAIN_KEYS]] for m in episodes])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(cell, f, indent=1)
    os.replace(tmp, out)
    print(f"[{cell_name(task, arm, seed)}] final return {cell['final_return_mean']:.1f}", flush=True)


def first_last(curve: list, column: int) -> str:
    values = [row[column] for row in curve if row[column] is not None]
    return f"{values[0]:.3g} → {values[-1]:.3g}" if values else "-"


def report(preset_name: str) -> str:
    folder = os.path.join(HERE, "results", preset_name, "cells")
    cells = [read_json(os.path.join(folder, f)) for f in sorted(os.listdir(folder)) if f.endswith(".json")]
    lines = [("| task | arm | seed | final return (mean ± std over eval episodes) | evaluations (env steps: return) | "
              "MAE masked PSNR (dB) | feature loss | KL | wall time |"), "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        curve = ", ".join(f"{s // 1000}k: {r:.0f}" for s, r, _ in c.get("eval_curve", []))
        train = c.get("train_curve", [])
        wall = f"{c['wall_s'] / 3600:.2f} h" if "wall_s" in c else "-"
        lines.append(f"| {c['task']} | {c['arm']} | {c['seed']} | {c['final_return_mean']:.1f} ± "
                     f"{c['final_return_std']:.1f} | {curve or '-'} | {first_last(train, 3)} | "
                     f"{first_last(train, 4)} | {first_last(train, 5)} | {wall} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu", choices=list(PRESETS))
    p.add_argument("--only", default=",".join(ARMS), help="comma-separated arms")
    p.add_argument("--report", action="store_true")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args()
    if args.report:
        print(report(args.preset))
        return
    preset = PRESETS[args.preset]
    for task in preset["tasks"]:
        for seed in preset["seeds"]:
            for arm in args.only.split(","):
                run_cell(args.preset, task, arm, seed, args.dry_run)


if __name__ == "__main__":
    main()
