"""MTM's benchmark on our data (issue 14; Wu et al. 2023 Table 1 and Fig. 5 at CPU scale): one MTM model against
the specialists it claims to replace, on the SAC replay of walker-walk (the whole learning history: returns from
near 0 to about 900).

Cells (method, seed), each a resumable JSON under studies/mtm/results/<preset>/cells/:
  mtm          MTM (random-autoregressive masks), every probe + bc and rcbc rollouts from the one checkpoint
  smtm-<cap>   S-MTM: the same model and budget trained on one capability's mask only (bc, rcbc, id, fd)
  mlp-<cap>    the MLP specialist of that capability (specialists.py), the same windows and steps
  mtm-5pct     heteromodal MTM: every state, actions of 5% of the training episodes (``action_label_fraction``)
  mlp-bc-5pct  BC on the labelled 5% alone
  mtm-masked   diagnostic: MTM scored on the hidden tokens only (``objective.loss_on masked``)
  mtm-6k       diagnostic: MTM with 6,000 steps instead of 2,000
Offline probes (MSE, eval/masked_probes.py positions) on every window of the held-out 5% of episodes; rollouts:
``eval_episodes`` dm_control episodes on seeds 2000.. with the last weights (no selection).

Usage:
  python src/dmc_data.py collect --domain walker --task walk --policy sac --num_steps 100000 --replay_id 1 \\
      --data_dir_prefix data/mtm                                     # the data (~1 h on one core)
  python studies/mtm/run.py                                          # every missing cell, then the report
  python studies/mtm/run.py --only mtm,mlp-bc --seeds 1              # some cells
  python studies/mtm/run.py --report                                 # the tables from the committed cells
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [HERE, os.path.join(ROOT, "src")]

import numpy as np
import torch
from specialists import KINDS, Specialist, SpecialistPolicy, specialist_error, train_specialist

from control_pretrain.data.datamodules.pretrain import MultiTaskDataModule
from control_pretrain.envs.dmc import make_env
from control_pretrain.eval.masked_probes import mean_probe_errors
from control_pretrain.eval.policies import MaskedTrajectoryPolicy
from control_pretrain.eval.rollout import evaluate
from control_pretrain.eval.stats import summarize
from control_pretrain.lit.mtm_module import MTMPretrainModule

log = logging.getLogger("mtm_study")

# The CPU preset: the paper's model is 512 wide over K=4 with batch 2048 for 140k steps (mtm_maskdp.md §A.8).
PRESET = {
    "name": "cpu",
    "tasks": "configs/pretrain_configs/mtm_walker_walk.json",
    "data_dir": "data/mtm",
    "num_steps": 100_000,
    "context_length": 4,
    "batch_size": 256,
    "steps": 2000,  # optimiser steps of every trained model (MTM, S-MTM, MLP)
    "model": ["--model.n_embd", "128", "--model.n_head", "4", "--model.n_enc_layer", "2", "--model.n_dec_layer", "1",
              "--model.lr", "0.001"],  # above the preset's 3e-4: a few thousand steps, not MTM's 140k
    "eval_episodes": 10,
    "rcbc_quantile": 0.9,  # rcbc's constant average return token: this quantile of training episodes' reward/step
    "label_fraction": 0.05,
}
METHODS = ("mtm", *(f"smtm-{k}" for k in KINDS), *(f"mlp-{k}" for k in KINDS), "mtm-5pct", "mlp-bc-5pct",
           "mtm-masked", "mtm-6k")
# Diagnostics beside the benchmark: MTM with the loss on hidden tokens only, and MTM trained 3x longer.
EXTRA_FLAGS = {"mtm-masked": ["--model.objective.loss_on", "masked"]}
STEPS = {"mtm-6k": 6_000}
TEST_SEED = 2000
RESULTS = os.path.join(HERE, "results", PRESET["name"])  # --results elsewhere for trial runs


def datamodule(label_fraction: float = 1.0) -> MultiTaskDataModule:
    dm = MultiTaskDataModule(multi_config=os.path.join(ROOT, PRESET["tasks"]), source_data_type="full",
                             num_steps=PRESET["num_steps"], data_dir_prefix=os.path.join(ROOT, PRESET["data_dir"]),
                             obs_type="state", context_length=PRESET["context_length"],
                             batch_size=PRESET["batch_size"], num_workers=0, action_label_fraction=label_fraction)
    dm.setup("fit")
    return dm


def rcbc_target(dm: MultiTaskDataModule) -> float:
    """The constant average return token of rcbc rollouts: a high quantile of the training episodes' mean reward
    per step, which is the average return-to-go at an episode's first step (lit/mtm_downstream_module.py does the
    same for ``dmc_downstream.py --mode rcbc``)."""
    train = dm.train_set
    return float(np.quantile(train.rtg_avg[train.timesteps == 0], PRESET["rcbc_quantile"]))


def rollouts(policy, seeds: int) -> dict:
    res = evaluate(policy, lambda s: make_env("walker", "walk", seed=s), range(TEST_SEED, TEST_SEED + seeds))
    return {"seeds": res.seeds, **summarize(res.returns)}


# ---- MTM and S-MTM --------------------------------------------------------------------------------------------
def pretrain(method: str, seed: int, out: str) -> str:
    """Train with the real CLI; the last checkpoint's path."""
    masks = {f"smtm-{k}": k for k in KINDS}.get(method)
    cmd = [sys.executable, "src/dmc_pretrain.py", "--method", "mtm", "--multi_config", PRESET["tasks"],
           "--source_data_type", "full", "--train_replay_id", "1", "--num_steps", str(PRESET["num_steps"]),
           "--data_dir_prefix", PRESET["data_dir"], "--obs_type", "state", "--context_length",
           str(PRESET["context_length"]), "--data.batch_size", str(PRESET["batch_size"]), "--data.num_workers", "0",
           *PRESET["model"], "--epochs", "1000", "--trainer.max_steps", str(STEPS.get(method, PRESET["steps"])),
           "--seed_everything", str(seed), "--output_dir", out, "--quiet", *EXTRA_FLAGS.get(method, [])]
    if masks:
        cmd += ["--model.objective.masks", json.dumps([masks])]
    if method == "mtm-5pct":
        cmd += ["--data.action_label_fraction", str(PRESET["label_fraction"])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    with open(os.path.join(out, "train.log"), "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        raise RuntimeError(f"{method} seed {seed}: pretraining failed, see {out}/train.log")
    return os.path.join(out, "checkpoints", "last.ckpt")


def mtm_cell(method: str, seed: int, dm: MultiTaskDataModule, out: str) -> dict:
    ckpt = pretrain(method, seed, out)
    module = MTMPretrainModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    names = list(KINDS) if method.startswith("mtm") else [method.split("-", 1)[1]]
    cell = {"probes": mean_probe_errors(module.model, dm.val_dataloader(), names), "rollouts": {}}
    for mode in [n for n in names if n in ("bc", "rcbc")]:
        target = rcbc_target(dm) if mode == "rcbc" else None
        policy = MaskedTrajectoryPolicy(module.model, module.mtm, target, PRESET["context_length"] - 1)
        cell["rollouts"][mode] = {**rollouts(policy, PRESET["eval_episodes"]), "rtg_avg": target}
    return cell


# ---- MLP specialists ------------------------------------------------------------------------------------------
def mlp_cell(method: str, seed: int, dm: MultiTaskDataModule) -> dict:
    kind = method.split("-")[1]
    torch.manual_seed(seed)
    train = dm.train_set
    starts = train.starts
    values = train.rtg_avg[starts]
    stats = dm.obs_stats
    specialist = Specialist(kind, train.observations.shape[-1], train.actions.shape[-1],
                            torch.as_tensor(stats.mean), torch.as_tensor(stats.std), float(values.mean()),
                            float(values.std()))
    loader = labelled_batches(dm, seed) if method.endswith("5pct") else dm.train_dataloader()
    losses = train_specialist(specialist, loader, PRESET["steps"])
    cell = {"probes": {kind: specialist_error(specialist, dm.val_dataloader())}, "train_loss_last": losses[-1],
            "rollouts": {}}
    if kind in ("bc", "rcbc"):
        target = rcbc_target(dm) if kind == "rcbc" else None
        cell["rollouts"][kind] = {**rollouts(SpecialistPolicy(specialist, target), PRESET["eval_episodes"]),
                                  "rtg_avg": target}
    return cell


def labelled_batches(dm: MultiTaskDataModule, seed: int):
    """Endless full-size batches of the training windows whose actions are labelled (the BC-on-5% baseline)."""
    train = dm.train_set
    windows = np.flatnonzero(train.has_action[train.starts])
    rng = np.random.default_rng(seed)
    while True:
        yield train.__getitems__(rng.choice(windows, PRESET["batch_size"]))


# ---- cells and report -----------------------------------------------------------------------------------------
def run_cell(method: str, seed: int, dms: dict, results: str) -> None:
    path = os.path.join(results, "cells", f"{method}_s{seed}.json")
    if os.path.exists(path):
        return
    fraction = PRESET["label_fraction"] if method.endswith("5pct") else 1.0
    if fraction not in dms:
        dms[fraction] = datamodule(fraction)
    start = time.time()
    out = os.path.join(ROOT, "outputs", "mtm_study", os.path.basename(results), f"{method}_s{seed}")
    shutil.rmtree(out, ignore_errors=True)  # a cell without its JSON starts over, never from an old checkpoint
    os.makedirs(out)
    torch.set_num_threads(1)
    cell = (mlp_cell(method, seed, dms[fraction]) if method.startswith("mlp") else
            mtm_cell(method, seed, dms[fraction], out))
    cell.update(method=method, seed=seed, preset=PRESET, wall_s=round(time.time() - start, 1))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(cell, f, indent=1)
    os.replace(path + ".tmp", path)
    log.info("%s seed %d: %s (%.0f s)", method, seed, {k: round(v, 4) for k, v in cell["probes"].items()},
             cell["wall_s"])


def report(results: str) -> str:
    cells = []
    for path in sorted(glob.glob(os.path.join(results, "cells", "*.json"))):
        with open(path) as f:
            cells.append(json.load(f))
    rows = {}
    for c in cells:
        rows.setdefault(c["method"], []).append(c)

    def fmt(values: list[float], digits: int) -> str:
        """Mean over seeds and the bootstrap 95% CI of that mean (eval/stats.py)."""
        if not values:
            return ""
        s = summarize(values)
        return f"{s['mean']:.{digits}f} [{s['ci95'][0]:.{digits}f}, {s['ci95'][1]:.{digits}f}] (n={len(values)})"

    lines = ["| method | " + " | ".join(f"{k} MSE" for k in KINDS) + " | bc return | rcbc return |",
             "|---|" + "---|" * (len(KINDS) + 2)]
    for method in METHODS:
        group = rows.get(method, [])
        if not group:
            continue
        probes = [fmt([c["probes"][k] for c in group if k in c["probes"]], 4) for k in KINDS]
        returns = [fmt([c["rollouts"][m]["mean"] for c in group if m in c["rollouts"]], 1) for m in ("bc", "rcbc")]
        lines.append(f"| {method} | " + " | ".join(probes + returns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--report", action="store_true", help="only print the table of the finished cells")
    parser.add_argument("--results", default=RESULTS, help="cell folder (trial runs: somewhere else)")
    parser.add_argument("--data_dir", default=PRESET["data_dir"])
    parser.add_argument("--steps", type=int, default=PRESET["steps"], help="optimiser steps per model")
    parser.add_argument("--eval_episodes", type=int, default=PRESET["eval_episodes"])
    args = parser.parse_args()
    PRESET.update(data_dir=args.data_dir, steps=args.steps, eval_episodes=args.eval_episodes)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.report:
        dms: dict = {}
        for seed in (int(s) for s in args.seeds.split(",")):
            for method in args.only.split(","):
                if method not in METHODS:
                    raise SystemExit(f"unknown method {method!r}; expected one of {METHODS}")
                run_cell(method, seed, dms, args.results)
    print(report(args.results))


if __name__ == "__main__":
    main()
