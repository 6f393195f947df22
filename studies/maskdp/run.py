"""MaskDP's zero-shot benchmark on our data (issue 15; Liu et al. 2022 Figs. 2, 3, 7, 10 at CPU scale): one MaskDP
checkpoint per task reaching held-out goals closed and open loop, against Goal-MLP and Goal-GPT (baselines.py)
trained on the same windows for the same steps, all scored by one harness with one budget
(src/control_pretrain/eval/goal_reaching.py); multi-goal and prompting from the same checkpoint.

Data per task: the 100k-step SAC replay (replay 1, training) and 40 held-out episodes of the final SAC agent with
action noise 0.1 (replay 2, near-expert as the paper's held-out set; goals, sequences and prompts come from it).

Cells (task, method, seed), each a JSON under studies/maskdp/results/<preset>/cells/:
  maskdp[-r<ratio>]  pretraining (mixed mask ratios, or one fixed ratio: the ablation), then goal (closed, open),
                     and for the mixed model multigoal (closed, open) and prompt
  goal-mlp, goal-gpt the baselines, goal and multigoal (they act on the nearest goal, so closed loop only)

Usage:
  python src/dmc_data.py collect --domain walker --task walk --policy sac --num_steps 100000 --replay_id 1 \\
      --save_agent --data_dir_prefix data/maskdp
  python src/dmc_data.py collect --domain walker --task walk --policy checkpoint --agent_path \\
      data/maskdp/fullcollect_walker_walk/walker_walk_s1.agent.pt --action_noise 0.1 --num_steps 10000 \\
      --replay_id 2 --data_dir_prefix data/maskdp
  python studies/maskdp/run.py --tasks walker-walk --only maskdp,goal-mlp,goal-gpt   # some cells
  python studies/maskdp/run.py --report                                              # the table
  python studies/maskdp/run.py --preset gpu                                          # the paper's sizes, on a GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(ROOT, "src")]

import torch
from baselines import GoalGPTPolicy, GoalMLPPolicy, train_goal_gpt, train_goal_mlp

from control_pretrain.data.datamodules.pretrain import MultiTaskDataModule
from control_pretrain.data.schema import dataset_path
from control_pretrain.data.trajectory_file import TrajectoryFile
from control_pretrain.eval.goal_policies import MaskedGoalPolicy
from control_pretrain.eval.goal_report import GoalEvalConfig, run_goal_mode
from control_pretrain.lit.mtm_module import MTMPretrainModule

log = logging.getLogger("maskdp_study")

PRESET = {
    "name": "cpu",
    "data_dir": "data/maskdp",
    "num_steps": 100_000,
    "context_length": 20,  # goals up to 19 steps ahead fit one window
    "batch_size": 64,
    "steps": 1500,
    "model": ["--model.n_embd", "128", "--model.n_head", "4", "--model.n_enc_layer", "2", "--model.n_dec_layer", "1",
              "--model.lr", "0.0006"],
}
# The paper's sizes (256 wide, 3 + 2 layers, K = 64, batch 384) for a lent GPU, at 50k of its 400k steps.
GPU_PRESET = {**PRESET, "name": "gpu", "context_length": 64, "batch_size": 384, "steps": 50_000,
              "model": ["--model.n_embd", "256", "--model.n_head", "4", "--model.n_enc_layer", "3",
                        "--model.n_dec_layer", "2", "--model.lr", "0.0003", "--trainer.accelerator", "gpu"]}
METHODS = ("maskdp", "goal-mlp", "goal-gpt", "maskdp-r0.15", "maskdp-r0.5", "maskdp-r0.95")
RESULTS = os.path.join(HERE, "results", PRESET["name"], "cells")


def held_out(domain: str, task: str) -> TrajectoryFile:
    return TrajectoryFile(dataset_path(os.path.join(ROOT, PRESET["data_dir"]), "fullcollect", domain, task, 2))


def evaluate(policy, file: TrajectoryFile, modes: list[str], loops: list[str]) -> dict:
    """Every mode's summary on the held-out ``file``, in the conditions it was recorded in (its action repeat)."""
    cfg, env_kwargs = GoalEvalConfig(loops=loops), {"action_repeat": int(file.attrs["action_repeat"])}
    return {mode: run_goal_mode(mode, cfg, policy, file, env_kwargs, file.domain, file.task) for mode in modes}


def task_file(domain: str, task: str, out: str) -> str:
    path = os.path.join(out, "tasks.json")
    with open(path, "w") as f:
        json.dump({domain: [task]}, f)
    return path


def pretrain(domain: str, task: str, ratio: str | None, seed: int, out: str) -> str:
    tasks = task_file(domain, task, out)
    cmd = [sys.executable, "src/dmc_pretrain.py", "--method", "maskdp", "--multi_config", tasks,
           "--source_data_type", "full", "--train_replay_id", "1", "--num_steps", str(PRESET["num_steps"]),
           "--data_dir_prefix", PRESET["data_dir"], "--obs_type", "state", "--context_length",
           str(PRESET["context_length"]), "--data.batch_size", str(PRESET["batch_size"]), "--data.num_workers", "0",
           *PRESET["model"], "--epochs", "1000", "--trainer.max_steps", str(PRESET["steps"]),
           "--seed_everything", str(seed), "--output_dir", out, "--quiet"]
    if ratio is not None:
        cmd += ["--model.objective.mask_ratios", f"[{ratio}]"]
    with open(os.path.join(out, "train.log"), "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=f,
                              stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        raise RuntimeError(f"maskdp {domain}-{task}: pretraining failed, see {out}/train.log")
    return os.path.join(out, "checkpoints", "last.ckpt")


def cell(domain: str, task: str, method: str, seed: int, out: str) -> dict:
    if method.startswith("maskdp"):
        ratio = method.split("-r", 1)[1] if "-r" in method else None
        module = MTMPretrainModule.load_from_checkpoint(pretrain(domain, task, ratio, seed, out), map_location="cpu",
                                                        weights_only=True)  # never runs code stored in the file
        model = module.model.eval()
        file = held_out(domain, task)
        policy = MaskedGoalPolicy(model, domain, file.obs_dim, file.action_dim)
        modes = ["goal"] if ratio else ["goal", "multigoal"]
        found = evaluate(policy, file, modes, ["closed", "open"])
        if not ratio:
            prompt = MaskedGoalPolicy(model, domain, file.obs_dim, file.action_dim, PRESET["context_length"] - 1)
            found.update(evaluate(prompt, file, ["prompt"], ["closed"]))
        return found
    dm = MultiTaskDataModule(multi_config=task_file(domain, task, out), source_data_type="full",
                             num_steps=PRESET["num_steps"], data_dir_prefix=os.path.join(ROOT, PRESET["data_dir"]),
                             obs_type="state", context_length=PRESET["context_length"],
                             batch_size=PRESET["batch_size"], num_workers=0)
    dm.setup("fit")
    mean, std = (torch.as_tensor(v, dtype=torch.float32) for v in (dm.obs_stats.mean, dm.obs_stats.std))
    train = train_goal_mlp if method == "goal-mlp" else train_goal_gpt
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, losses = train(dm, mean.to(device), std.to(device), PRESET["steps"], seed=seed, device=device)
    policy = GoalMLPPolicy(model) if method == "goal-mlp" else GoalGPTPolicy(model)
    return {"train": losses, **evaluate(policy, held_out(domain, task), ["goal", "multigoal"], ["closed"])}


def run(tasks: list[str], methods: list[str], seeds: list[int]) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    for name in tasks:
        domain, task = name.split("-")
        for method in methods:
            for seed in seeds:
                path = os.path.join(RESULTS, f"{name}_{method}_s{seed}.json")
                if os.path.exists(path):
                    continue
                out = os.path.join(ROOT, "outputs", "maskdp_study", f"{name}_{method}_s{seed}")
                os.makedirs(out, exist_ok=True)
                start = time.time()
                result = {"task": name, "method": method, "seed": seed, "preset": PRESET,
                          **cell(domain, task, method, seed, out), "wall_s": time.time() - start}
                with open(path + ".tmp", "w") as f:
                    json.dump(result, f)
                os.replace(path + ".tmp", path)
                log.info("%s %s seed %d done in %.0f s", name, method, seed, result["wall_s"])


def report() -> str:
    rows = [("| task | method | goal closed (obs / physics) | goal open | multigoal closed | multigoal open | "
             "prompt reward ratio |"), "|---|---|---|---|---|---|---|"]
    for fname in sorted(os.listdir(RESULTS)) if os.path.isdir(RESULTS) else []:
        with open(os.path.join(RESULTS, fname)) as f:
            r = json.load(f)

        def dist(mode, loop, r=r):
            s = r.get(mode, {}).get("loops", {}).get(loop)
            if not s:
                return "-"
            lo, hi = s["obs_distance_ci95"]
            return f"{s['obs_distance_mean']:.2f} [{lo:.2f}, {hi:.2f}] / {s['physics_distance_mean']:.2f}"
        prompt = r.get("prompt", {}).get("loops", {}).get("closed")
        rows.append(f"| {r['task']} | {r['method']} s{r['seed']} | {dist('goal', 'closed')} | {dist('goal', 'open')} | "
                    f"{dist('multigoal', 'closed')} | {dist('multigoal', 'open')} | "
                    + (f"{prompt['reward_ratio_mean']:.2f}" if prompt else "-") + " |")
    return "\n".join(rows)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="walker-walk,walker-stand,cheetah-run")
    p.add_argument("--only", default=",".join(METHODS))
    p.add_argument("--seeds", default="1")
    p.add_argument("--preset", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--report", action="store_true")
    a = p.parse_args()
    if a.preset == "gpu":
        global RESULTS
        PRESET.update(GPU_PRESET)
        RESULTS = os.path.join(HERE, "results", "gpu", "cells")
    if not a.report:
        run(a.tasks.split(","), a.only.split(","), [int(s) for s in a.seeds.split(",")])
    print(report())


if __name__ == "__main__":
    main()
