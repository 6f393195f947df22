"""Seconds per update of pixel SAC and SAC+MLR (issue 17), run by hand:

    python benchmarks/bench_mlr.py [--presets paper,reduced,smoke] [--rounds 3] [--out docs/benchmarks.md]

One update = what one interaction earns (agents/pixel_sac.py ``train_step``: SAC batch crop, critic, MLR, and
actor + targets every 2nd), on a replay of random 100 px frames in 125-step episodes (cartpole-swingup's: action
repeat 8, 1 action). Per preset (agents/pixel_presets.py) both arms, sac and sac_mlr; the median over ``--rounds``
rounds of 2 updates (an actor step in each pair) after one warm-up update, the arms called round-robin so that load
from other processes hits all alike. All torch threads of this machine; mlr_mwm.md §C.2 gives the spec's figures
(paper 109 s, SAC only 27 s, reduced 4.8 s, smoke 1.05 s) for comparison. ``--out`` writes the section
"## Pixel SAC and MLR (issue 17)" of the markdown file.
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
SECTION = "## Pixel SAC and MLR (issue 17)"
SPEC = {("paper", "sac_mlr"): 109, ("paper", "sac"): 27, ("reduced", "sac_mlr"): 4.8, ("smoke", "sac_mlr"): 1.05}


def replay(rows: int = 1000):
    from control_pretrain.agents.replay import ReplayBuffer

    rng = np.random.default_rng(0)
    buf = ReplayBuffer((3, 100, 100), 1, rows + 8, obs_dtype=np.uint8, frame_stack=3)
    ends = (np.arange(rows) % 125) == 124
    buf.add(rng.integers(0, 256, (rows, 3, 100, 100), dtype=np.uint8), rng.uniform(-1, 1, (rows, 1)),
            rng.uniform(0, 1, rows), np.ones(rows), ends,
            rng.integers(0, 256, (int(ends.sum()), 3, 100, 100), dtype=np.uint8))
    return buf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="paper,reduced,smoke")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import torch

    from control_pretrain.agents.pixel_presets import preset_options
    from control_pretrain.agents.registry import AGENTS

    buf = replay()
    agents = {}
    for preset in args.presets.split(","):
        for arm in ("sac", "sac_mlr"):
            config_cls, agent_cls = AGENTS[arm, "pixels"]
            torch.manual_seed(0)
            agents[preset, arm] = agent_cls((9, 100, 100), 1, config_cls.from_dict(preset_options("cartpole", preset)))
    times: dict = {k: [] for k in agents}
    for r in range(args.rounds + 1):
        for key, agent in agents.items():
            t0 = time.perf_counter()
            for _ in range(2 if r else 1):  # round 0 warms up with one update
                agent.train_step(buf)
            if r:
                times[key].append((time.perf_counter() - t0) / 2)
                print(f"round {r}: {key} {times[key][-1]:.2f} s/update", flush=True)
    rows = []
    for (preset, arm), agent in agents.items():
        cfg = agent.cfg
        mlr = f"{cfg.mlr_batch}x{cfg.mlr_clip_len}" if cfg.mlr else "-"
        spec = SPEC.get((preset, arm))
        rows.append([preset, arm, cfg.batch_size, mlr, cfg.filters, f"{statistics.median(times[preset, arm]):.2f}",
                     f"{spec}" if spec else "-"])
    text = "\n".join([
        SECTION, "",
        (f"{datetime.date.today()}, {platform.machine()} with {os.cpu_count()} cores, torch "
         f"{torch.__version__}, {torch.get_num_threads()} threads; `python benchmarks/bench_mlr.py "
         f"--presets {args.presets} --rounds {args.rounds}`. Median of {args.rounds} rounds of 2 updates, arms "
         "round-robin, random 100 px frames."), "",
        markdown_table(["preset", "agent", "SAC batch", "MLR clips x frames", "filters", "s / update",
                        "spec (mlr_mwm.md §C.2)"], rows),
    ])
    publish(text, args.out, SECTION)


if __name__ == "__main__":
    main()
