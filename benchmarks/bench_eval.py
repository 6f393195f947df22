"""Rollout-evaluation benchmark (issue 3/7), run by hand:

    python benchmarks/bench_eval.py [--episodes 50] [--steps N] [--threads 1 2] [--out docs/benchmarks.md]

50 episodes of cheetah-run (state observations) with a randomly initialised control transformer (4 layers x 128,
K=30, BC head), evaluated two ways in the same run:

- batched: ``evaluate`` with all 50 episodes side by side, one model call per time step for every live episode;
- one at a time: the reference's protocol (smart.md §3.5), 50 sequential episodes with batch-1 model calls
  (``evaluate`` called once per seed).

Reported: agent steps/s (all episodes' steps / wall time, model calls and env steps included) per torch thread
count, the speed-up, and the env-only ceiling (50 envs stepped with zero actions, no model). ``--steps`` times a
fixed number of steps per episode instead of whole 250-step episodes. ``--out`` replaces (or appends) the
section "## Evaluation (issue 3/7)" of the markdown file, creating the file with a header if needed.
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
from _report import cpu_model, publish, wait_for_other_benchmarks  # benchmarks/_report.py

SECTION = "## Evaluation (issue 3/7)"
K = 30


def build_policy():
    from control_pretrain.eval.policies import BehaviorCloningPolicy
    from control_pretrain.models.control_transformer import ControlTransformer, ControlTransformerConfig
    from control_pretrain.objectives import BehaviorCloningObjective

    torch.manual_seed(0)
    config = ControlTransformerConfig(obs_type="state", obs_dim=17, action_dim=6, n_layer=4, n_head=4, n_embd=128,
                                      context_length=K, dropout=0.1)
    model, head = ControlTransformer(config).eval(), BehaviorCloningObjective(128, 6).eval()
    return BehaviorCloningPolicy(model, head), model.num_params()


def cheetah(seed):
    from control_pretrain.envs.dmc import make_env

    return make_env("cheetah", "run", seed=seed)


def env_only(seeds, steps):
    envs = [cheetah(s) for s in seeds]
    start, n = time.perf_counter(), 0
    for env in envs:
        env.reset()
    for _ in range(steps or 250):
        for env in envs:
            env.step(np.zeros(env.action_dim))
            n += 1
    return n / (time.perf_counter() - start)


def call_ms(policy, batch_size: int, reps: int) -> float:
    """Median milliseconds of one model call on a full window (T = K)."""
    batch = {"observations": torch.randn(batch_size, K, 17), "actions": torch.randn(batch_size, K - 1, 6),
             "timesteps": torch.arange(K).expand(batch_size, K)}
    times = []
    with torch.inference_mode():
        policy(batch)
        for _ in range(reps):
            t = time.perf_counter()
            policy(batch)
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def machine() -> str:
    return (f"{os.cpu_count()} CPUs (`nproc`), {cpu_model()} (`lscpu`), Python {platform.python_version()}, "
            f"torch {torch.__version__}")



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=50, help="episodes per mode")
    p.add_argument("--steps", type=int, default=None, help="steps per episode (default: whole 250-step episodes)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count()], help="torch thread counts")
    p.add_argument("--out", help="markdown file whose evaluation section is written/replaced")
    args = p.parse_args()

    from control_pretrain.eval.rollout import evaluate

    policy, n_params = build_policy()
    seeds = list(range(1000, 1000 + args.episodes))
    waited = wait_for_other_benchmarks("bench_eval", poll_s=15.0) or "no other benchmark running"
    load0 = os.getloadavg()[0]
    rows, best = [], {}
    ceiling = env_only(seeds, args.steps)
    for threads in dict.fromkeys(args.threads):
        torch.set_num_threads(threads)
        batched = evaluate(policy, cheetah, seeds, max_steps=args.steps)
        singles = [evaluate(policy, cheetah, [s], max_steps=args.steps) for s in seeds]
        seq_steps = sum(int(r.lengths.sum()) for r in singles)
        seq_wall = sum(r.wall_time_s for r in singles)
        b_rate, s_rate = batched.steps_per_sec, seq_steps / seq_wall
        best["batched"] = max(best.get("batched", 0.0), b_rate)
        best["sequential"] = max(best.get("sequential", 0.0), s_rate)
        calls = (call_ms(policy, 1, 200), call_ms(policy, len(seeds), 20))
        rows.append((threads, batched.wall_time_s, b_rate, seq_wall, s_rate, *calls))
        print(f"threads={threads}: batched {b_rate:,.0f} steps/s ({batched.wall_time_s:.1f} s), one at a time "
              f"{s_rate:,.0f} steps/s ({seq_wall:.1f} s), speed-up {b_rate / s_rate:.1f}x", file=sys.stderr)
    load1 = os.getloadavg()[0]

    steps_note = f"{args.steps} steps per episode" if args.steps else "whole episodes (250 steps)"
    lines = [
        SECTION, "",
        f"- Date: {datetime.date.today().isoformat()}",
        f"- Machine: {machine()}; CPU only; load average {load0:.2f} before, {load1:.2f} after ({waited})",
        f"- Command: `python benchmarks/bench_eval.py {' '.join(sys.argv[1:])}`",
        (f"- Setup: cheetah-run, state observations, {args.episodes} episodes, {steps_note}, control transformer "
         f"4 layers x 128, K={K} ({n_params / 1e6:.2f}M params, random init, eval mode), BC head, float32."),
        ("- Steps/s = agent steps of all episodes / wall time from the resets to the end (env steps with action "
         "repeat 4 and model calls included). Model call = median time of one call on a full K-step window."),
        "",
        ("| torch threads | batched wall s | batched steps/s | one-at-a-time wall s | one-at-a-time steps/s | "
         f"speed-up | model call, batch 1 | model call, batch {args.episodes} |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for t, bw, br, sw, sr, c1, cn in rows:
        lines.append(f"| {t} | {bw:.1f} | {br:,.0f} | {sw:.1f} | {sr:,.0f} | {br / sr:.1f}x | {c1:.2f} ms "
                     f"| {cn:.1f} ms |")
    lines += [
        "",
        (f"- Best of each mode: batched {best['batched']:,.0f} steps/s vs one at a time {best['sequential']:,.0f} "
         f"steps/s: **{best['batched'] / best['sequential']:.1f}x** (target >= 5x)."),
        f"- Env-only ceiling (50 envs, zero actions, no model): {ceiling:,.0f} steps/s.",
        "",
    ]
    body = "\n".join(lines)
    publish(body, args.out, SECTION)


if __name__ == "__main__":
    main()
