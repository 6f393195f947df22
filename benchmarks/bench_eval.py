"""Rollout-evaluation benchmark (issues 3/7 and 16), run by hand:

    python benchmarks/bench_eval.py [--episodes 20] [--steps 100] [--configs small/state,small/pixels,...]
                                    [--threads 1] [--out docs/benchmarks.md]

cheetah-run episodes with a randomly initialised control transformer (BC head, eval mode, float32, K=30) at 4 layers
x 128 ("small") and at the paper size 8 x 256 ("paper"), state observations and pixels (84x84 frames rendered with
``fast_render``, so that rendering does not hide the model's cost), evaluated three ways in the same run:

- batched: ``evaluate`` with all episodes side by side, one model call per time step for every live episode, each
  observation encoded once and the last block on the last token only (``IncrementalPolicy``, the default);
- one at a time: the same engine with one episode per ``evaluate`` call (batch-1 model calls);
- reference work: one at a time and every step re-encoding the whole K-step window through the full trunk
  (``incremental=False``), the per-step work of the reference's protocol (smart.md §3.5).

Reported: agent steps/s (all episodes' steps / wall time, model calls and env steps included), the speed-ups of
batched over both one-at-a-time modes, and the env-only ceiling (the same envs stepped with zero actions, and
rendered for pixels, no model). ``--out`` replaces (or appends) the section "## Evaluation (issue 3/7)" of the
markdown file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np
import torch
from _report import cpu_model, markdown_table, publish, wait_for_other_benchmarks  # benchmarks/_report.py

SECTION = "## Evaluation (issue 3/7)"
K = 30
SIZES = {"small": (4, 128, 4), "paper": (8, 256, 8)}  # n_layer, n_embd, n_head


def build_policy(size: str, obs_type: str):
    from control_pretrain.eval.policies import BehaviorCloningPolicy
    from control_pretrain.models.control_transformer import ControlTransformer, ControlTransformerConfig
    from control_pretrain.objectives import BehaviorCloningObjective

    torch.manual_seed(0)
    n_layer, n_embd, n_head = SIZES[size]
    config = ControlTransformerConfig(obs_type=obs_type, obs_dim=17 if obs_type == "state" else 0, action_dim=6,
                                      n_layer=n_layer, n_head=n_head, n_embd=n_embd, context_length=K)
    model, head = ControlTransformer(config).eval(), BehaviorCloningObjective(n_embd, 6).eval()
    return BehaviorCloningPolicy(model, head), model.num_params()


def cheetah_maker(pixels: bool):
    from control_pretrain.envs.dmc import make_env

    return lambda seed: make_env("cheetah", "run", seed=seed, pixels=pixels, fast_render=pixels)


def env_only(make, seeds, steps, pixels):
    envs = [make(s) for s in seeds]
    for env in envs:  # the first render of each env sets up its renderer: not part of the per-step rate
        env.reset()
        if pixels:
            env.render()
    start, n = time.perf_counter(), 0
    for _ in range(steps):
        for env in envs:
            env.step(np.zeros(env.action_dim))
            if pixels:
                env.render()
            n += 1
    for env in envs:
        env.close()
    return n / (time.perf_counter() - start)


def machine() -> str:
    return (f"{os.cpu_count()} CPUs (`nproc`), {cpu_model()} (`lscpu`), Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=20, help="episodes per mode")
    p.add_argument("--steps", type=int, default=100, help="steps per episode")
    p.add_argument("--configs", default="small/state,small/pixels,paper/state,paper/pixels")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on 2 shared cores)")
    p.add_argument("--out", help="markdown file whose evaluation section is written/replaced")
    args = p.parse_args()

    from control_pretrain.eval.rollout import evaluate

    torch.set_num_threads(args.threads)
    seeds = list(range(1000, 1000 + args.episodes))
    waited = wait_for_other_benchmarks("bench_eval", poll_s=15.0) or "no other benchmark running"
    load0, t0 = os.getloadavg()[0], time.time()
    rows = []
    for config in args.configs.split(","):
        size, obs_type = config.split("/")
        pixels = obs_type == "pixels"
        make = cheetah_maker(pixels)
        policy, n_params = build_policy(size, obs_type)
        ceiling = env_only(make, seeds, args.steps, pixels)
        batched = evaluate(policy, make, seeds, max_steps=args.steps).steps_per_sec
        rates = {}
        for name, incremental in (("single", True), ("reference", False)):
            runs = [evaluate(policy, make, [s], max_steps=args.steps, incremental=incremental) for s in seeds]
            rates[name] = sum(int(r.lengths.sum()) for r in runs) / sum(r.wall_time_s for r in runs)
        rows.append([f"{size} ({SIZES[size][0]}x{SIZES[size][1]}, {n_params / 1e6:.2f}M)", obs_type,
                     f"{batched:,.0f}", f"{rates['single']:,.0f}", f"{rates['reference']:,.0f}",
                     f"**{batched / rates['reference']:.1f}x**", f"{batched / rates['single']:.1f}x",
                     f"{ceiling:,.0f}"])
        print(f"[bench_eval] {config}: batched {batched:,.0f}, one at a time {rates['single']:,.0f}, reference "
              f"work {rates['reference']:,.0f}, env only {ceiling:,.0f} steps/s", file=sys.stderr, flush=True)
    header = ["model", "obs", "batched steps/s", "one at a time steps/s", "reference work steps/s",
              "batched / reference", "batched / one at a time", "env-only steps/s"]
    lines = [
        SECTION, "",
        f"- Date: {datetime.date.today().isoformat()}; {(time.time() - t0) / 60:.1f} min",
        (f"- Machine: {machine()}, {args.threads} torch thread(s); CPU only; load average {load0:.2f} before, "
         f"{os.getloadavg()[0]:.2f} after ({waited})"),
        f"- Command: `python benchmarks/bench_eval.py {' '.join(sys.argv[1:])}`",
        (f"- Setup: cheetah-run, {args.episodes} episodes x {args.steps} steps per mode, control transformer "
         f"(random init, eval mode, BC head, float32, K={K}); pixels rendered with `fast_render`."),
        ("- Steps/s = agent steps of all episodes / wall time from the resets to the end (env steps with action "
         "repeat 4, rendering and model calls included). Batched and one at a time encode each observation once "
         "and run the last block on the last token only; reference work re-encodes the window through the full "
         "trunk at every step, batch 1."),
        "", markdown_table(header, rows), "",
    ]
    publish("\n".join(lines), args.out, SECTION)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
