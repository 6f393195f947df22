"""Seconds per MWM round (issue 18), run by hand:

    python benchmarks/bench_mwm.py [--presets paper,small,tiny] [--rounds 3] [--threads 1] [--out docs/benchmarks.md]

One round = what ``train_every`` (5) policy steps earn after pretraining (agents/mwm/agent.py): one MAE update, then
one world-model + actor-critic update. Per preset (agents/mwm/presets.py) an agent on a replay of 2,000 random 64 px
frames in 500-step episodes (cartpole's 1,000 env steps at action repeat 2) with 6 action dimensions; each part
timed as the median over ``--rounds`` after one warm-up call, presets round-robin so that load from other processes
hits all alike. Also the stop-gradient MAE features of one world-model batch (part of the world-model update) and
one acting step. mlr_mwm.md §C.3 gives the spec's figures (2 threads: tiny 1.8 s, small 9.3 s, paper 89 s).
``--out`` writes the section "## MWM (issue 18)" of the markdown file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np
from _report import markdown_table, publish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
SECTION = "## MWM (issue 18)"
SPEC = {"tiny": 1.8, "small": 9.3, "paper": 89}
ROWS, EPISODE, ACTIONS = 2000, 500, 6


def replay():
    from control_pretrain.agents.replay import ReplayBuffer

    rng = np.random.default_rng(0)
    buf = ReplayBuffer((3, 64, 64), ACTIONS, ROWS + 8, obs_dtype=np.uint8)
    ends = (np.arange(ROWS) % EPISODE) == EPISODE - 1
    buf.add(rng.integers(0, 256, (ROWS, 3, 64, 64), dtype=np.uint8), rng.uniform(-1, 1, (ROWS, ACTIONS)),
            rng.uniform(0, 1, ROWS), np.ones(ROWS), ends,
            rng.integers(0, 256, (int(ends.sum()), 3, 64, 64), dtype=np.uint8))
    return buf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="paper,small,tiny")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (one is faster on a shared machine)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import torch

    from control_pretrain.agents.mwm.agent import MWMAgent
    from control_pretrain.agents.mwm.config import MWMConfig
    from control_pretrain.agents.mwm.presets import PRESETS

    torch.set_num_threads(args.threads)
    buf, frame = replay(), np.zeros((3, 64, 64), np.uint8)
    agents = {}
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        agents[preset] = MWMAgent((3, 64, 64), ACTIONS, MWMConfig.from_dict(PRESETS[preset]))

    def features(agent) -> None:
        cfg = agent.cfg
        obs = buf.sample_sequences(cfg.batch_size, cfg.seq_len)["obs"]  # (B, T, 3, 64, 64)
        with torch.no_grad():
            agent.mae.features(obs.flatten(0, 1))

    parts = {"mae": lambda a: a.update_mae(buf), "wm_ac": lambda a: a.update_world_model_and_behavior(buf),
             "features": features, "act": lambda a: a.act(frame)}
    times = {(preset, part): [] for preset in agents for part in parts}
    for r in range(args.rounds + 1):  # round 0 warms up
        for preset, agent in agents.items():
            for part, fn in parts.items():
                t0 = time.perf_counter()
                fn(agent)
                if r:
                    times[preset, part].append(time.perf_counter() - t0)
            if r:
                print(f"round {r}: {preset} {times[preset, 'mae'][-1] + times[preset, 'wm_ac'][-1]:.2f} s", flush=True)
    rows = []
    for preset, agent in agents.items():
        med = {part: statistics.median(times[preset, part]) for part in parts}
        counts = agent.parameter_counts()
        rows.append([preset, " / ".join(f"{counts[k] / 1e6:.2f}M" for k in ("mae", "world_model", "actor_critic")),
                     f"{med['mae']:.2f}", f"{med['wm_ac']:.2f}", f"{med['features']:.2f}",
                     f"{med['mae'] + med['wm_ac']:.2f}", f"{med['act'] * 1000:.0f}", SPEC.get(preset, "-")])
    text = "\n".join([
        SECTION, "",
        (f"{datetime.date.today()}, {platform.machine()} with {os.cpu_count()} cores, torch {torch.__version__}, "
         f"{args.threads} thread(s); `python benchmarks/bench_mwm.py --presets {args.presets} --rounds {args.rounds} "
         f"--threads {args.threads}`. Median of {args.rounds} rounds after a warm-up, presets round-robin, random 64 px "
         "frames."), "",
        markdown_table(["preset", "parameters (MAE / world model / actor-critic)", "MAE update s", "WM + AC update s",
                        "of which MAE features s", "s / round", "act ms", "spec s / round (2 threads, §C.3)"], rows),
    ])
    publish(text, args.out, SECTION)


if __name__ == "__main__":
    main()
