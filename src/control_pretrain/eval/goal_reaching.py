"""Goal reaching and prompting from recorded states in dm_control (MaskDP, Liu et al. 2022; mtm_maskdp.md
§B.6-B.7), batched like eval/rollout.py: one env per rollout, one policy call per step for all live rollouts.

Protocol (the same for every method): start states and goals are recorded states of held-out episodes, restored
exactly from the dataset's ``physics`` key (``DMCEnv.restore``), so distances are measured in raw observation space
(the paper's metric, velocities included) and in physics-state space. Single goal: 300 pairs, the goal 15-19
steps ahead, a budget of T + 3 steps, the minimum distance over the rollout. Multi-goal: 5 goals at fixed times,
goal g scored on its own budget (t_{g-1}, t_g + 5]. Prompting: 5 recorded (state, action) steps before the start
are the context, 40 steps are acted closed loop, the reward is compared with the data's over the same steps.

Deviations from MaskDP_public (eval_goal.py, eval_multigoal.py, eval_prompt.py; §B.7-B.8): the code gave MaskDP
a budget of T and the baselines T + 5, here every method gets T + 3; its multi-goal metric took each goal's
minimum over the whole 60-step rollout (later goals borrowed time), here each goal has its own window; 300 pairs
instead of 100; its prompt evaluation could not run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .stats import bootstrap_ci

RESTORE_TOLERANCE = 1e-3  # max |restored - recorded| observation; float32 storage gives ~1e-6


class GoalPolicy(Protocol):
    history_length: int  # past steps (the current one included) the policy wants in ``history``
    device: torch.device

    def plan(self, history: dict[str, Tensor], goals: Tensor, goal_steps: Tensor) -> Tensor:
        """history: 'observations' (n, T, D) raw, the current one last; 'actions' (n, T-1, A) between them.
        goals: (n, G, D) raw goal observations, goal_steps (n, G) int64 >= 1 steps until each is due, ascending
        (rows with fewer pending goals repeat their last; G = 0: prompting). Returns (n, H, A) planned actions."""
        ...


@dataclass
class GoalTask:
    """N rollouts, each from a recorded state towards G recorded goals (G = 0: prompting)."""

    episodes: np.ndarray  # (N,) episode numbers in the file
    starts: np.ndarray  # (N,) file step of the start state
    start_physics: np.ndarray  # (N, S)
    start_obs: np.ndarray  # (N, D)
    goal_obs: np.ndarray  # (N, G, D)
    goal_physics: np.ndarray  # (N, G, S)
    goal_times: np.ndarray  # (N, G) steps after the start each goal is due
    windows: np.ndarray  # (N, G, 2) goal g is scored on the states after steps lo < j <= hi
    num_steps: np.ndarray  # (N,) the budget
    prompt_obs: np.ndarray | None = None  # (N, P, D) recorded states before the start
    prompt_actions: np.ndarray | None = None  # (N, P, A) the actions taken in them
    data_rewards: np.ndarray | None = None  # (N,) the data's reward over the forecast steps


@dataclass
class GoalResults:
    obs_distance: np.ndarray  # (N, G) per-goal minimum L2 distance in raw observation space within its window
    physics_distance: np.ndarray  # (N, G) the same in physics-state space
    final_obs_distance: np.ndarray  # (N, G) at the window's last step
    returns: np.ndarray  # (N,) reward collected
    wall_time_s: float
    steps: int


def _draw_starts(file, episodes: np.ndarray, n: int, before: int, after: np.ndarray, rng) -> tuple:
    """n (episode, start) with ``before`` steps before the start and ``after[i]`` steps after it in the episode."""
    lengths = file.index.lengths[episodes]
    eps, starts = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for i in range(n):
        room = np.flatnonzero(lengths - before - after[i] > 0)
        if len(room) == 0:
            raise ValueError(f"{file.path}: no held-out episode is long enough for {before + after[i]} steps")
        e = episodes[room[rng.integers(len(room))]]
        eps[i] = e
        starts[i] = file.index.starts[e] + before + rng.integers(file.index.lengths[e] - before - after[i])
    return eps, starts


def _task(file, eps, starts, times: np.ndarray, windows: np.ndarray, num_steps: np.ndarray) -> GoalTask:
    physics = file.read_physics()
    at = starts[:, None] + times  # (N, G)
    return GoalTask(eps, starts, physics[starts], file.observations[starts], file.observations[at], physics[at],
                    times, windows, num_steps)


def single_goal_task(file, episodes, num_pairs: int = 300, horizon: tuple[int, int] = (15, 20),
                     extra_steps: int = 3, seed: int = 0) -> GoalTask:
    """Pairs (start, goal h steps later in the same episode), h uniform in [horizon), budget h + extra_steps."""
    rng = np.random.default_rng(seed)
    h = rng.integers(horizon[0], horizon[1], num_pairs)
    eps, starts = _draw_starts(file, np.asarray(episodes), num_pairs, 0, h, rng)
    budget = h + extra_steps
    windows = np.stack([np.zeros_like(budget), budget], -1)[:, None]  # (N, 1, 2)
    return _task(file, eps, starts, h[:, None], windows, budget)


def multi_goal_task(file, episodes, num_sequences: int = 100, goal_times=(12, 24, 36, 48, 60),
                    extra_steps: int = 5, seed: int = 0) -> GoalTask:
    """Goals at ``goal_times`` after each start; goal g scored on (t_{g-1}, t_g + extra_steps]."""
    rng = np.random.default_rng(seed)
    t = np.asarray(goal_times, np.int64)
    eps, starts = _draw_starts(file, np.asarray(episodes), num_sequences, 0, np.full(num_sequences, t[-1]), rng)
    lo = np.concatenate([[0], t[:-1]])
    windows = np.broadcast_to(np.stack([lo, t + extra_steps], -1), (num_sequences, len(t), 2)).copy()
    return _task(file, eps, starts, np.tile(t, (num_sequences, 1)), windows, np.full(num_sequences, t[-1] + extra_steps))


def prompt_task(file, episodes, num_prompts: int = 100, prompt_len: int = 5, forecast: int = 40,
                seed: int = 0) -> GoalTask:
    """Prompts of ``prompt_len`` recorded steps, then ``forecast`` steps to act from the recorded state after."""
    rng = np.random.default_rng(seed)
    eps, starts = _draw_starts(file, np.asarray(episodes), num_prompts, prompt_len,
                               np.full(num_prompts, forecast - 1), rng)
    task = _task(file, eps, starts, np.zeros((num_prompts, 0), np.int64), np.zeros((num_prompts, 0, 2), np.int64),
                 np.full(num_prompts, forecast))
    ctx = starts[:, None] - prompt_len + np.arange(prompt_len)  # (N, P)
    task.prompt_obs, task.prompt_actions = file.observations[ctx], file.actions[ctx]
    csum = np.concatenate([[0.0], np.cumsum(file.rewards, dtype=np.float64)])
    task.data_rewards = csum[starts + forecast] - csum[starts]
    return task


def per_goal_min(distances: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """(N, G) minimum of ``distances`` (N, J, G), the state after step j+1, over each goal's window (lo, hi]."""
    step = np.arange(1, distances.shape[1] + 1)[None, :, None]  # (1, J, 1)
    inside = (step > windows[:, None, :, 0]) & (step <= windows[:, None, :, 1])  # (N, J, G)
    return np.where(inside, distances, np.inf).min(1)


def _pending(times: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Goal indices (n, G) the policy sees at step j and their steps ahead: the goals not yet due, first, padded
    with the last pending one; once every goal is due, the last goal at 1 step."""
    n, G = times.shape
    idx, ahead = np.zeros((n, G), np.int64), np.ones((n, G), np.int64)
    for r in range(n if G else 0):
        due = np.flatnonzero(times[r] > j)
        if len(due) == 0:
            due = np.array([G - 1])
        pick = np.concatenate([due, np.full(G - len(due), due[-1])])
        idx[r], ahead[r] = pick, np.maximum(times[r, pick] - j, 1)
    return idx, ahead


@torch.inference_mode()
def run_goal_task(policy: GoalPolicy, make_env_fn: Callable[[int], object], task: GoalTask,
                  closed_loop: bool = True, batch_size: int = 100) -> GoalResults:
    """Roll out every row of ``task``; closed loop re-plans every step, open loop executes each plan up to the
    next goal (all of a single goal's steps at once, as MaskDP's open loop) and re-plans there."""
    N, G = task.goal_times.shape
    J = int(task.num_steps.max())
    obs_d, phys_d = np.full((N, J, G), np.inf), np.full((N, J, G), np.inf)
    returns, start, steps = np.zeros(N), time.perf_counter(), 0
    for lo in range(0, N, batch_size):
        rows = np.arange(lo, min(N, lo + batch_size))
        steps += _run_chunk(policy, make_env_fn, task, rows, closed_loop, obs_d, phys_d, returns)
    hi = np.minimum(task.windows[..., 1], task.num_steps[:, None])  # (N, G)
    final = np.take_along_axis(obs_d, (hi - 1).clip(0)[:, None, :], 1)[:, 0] if G else np.zeros((N, 0))
    return GoalResults(per_goal_min(obs_d, task.windows), per_goal_min(phys_d, task.windows), final, returns,
                       time.perf_counter() - start, steps)


def _run_chunk(policy, make_env_fn, task: GoalTask, rows: np.ndarray, closed_loop: bool, obs_d, phys_d,
               returns) -> int:
    device, n = policy.device, len(rows)
    envs = [make_env_fn(int(r)) for r in rows]
    try:
        obs = np.stack([env.restore(task.start_physics[r]) for env, r in zip(envs, rows)])  # (n, D)
        err = np.abs(obs - task.start_obs[rows]).max(1)
        if (err > RESTORE_TOLERANCE).any():
            bad = int(rows[err.argmax()])
            raise ValueError(f"restoring pair {bad} (file step {task.starts[bad]}) gives an observation {err.max():.2g} "
                             "off the recorded one: the data was not recorded with this task's simulator")
        hist_obs = [list(task.prompt_obs[r]) + [obs[i]] if task.prompt_obs is not None else [obs[i]]
                    for i, r in enumerate(rows)]
        hist_act = [list(task.prompt_actions[r]) if task.prompt_actions is not None else [] for r in rows]
        plans, plan_len, used = [None] * n, np.zeros(n, np.int64), np.zeros(n, np.int64)
        budget, total = task.num_steps[rows], 0
        for j in range(int(budget.max())):
            live = np.flatnonzero(budget > j)
            times = task.goal_times[rows]
            idx, ahead = _pending(times, j)
            next_goal = ahead[:, 0] if times.shape[1] else np.ones(n, np.int64)
            # closed loop: every row re-plans; open loop: the rows whose plan ran out, so a row's plan does not
            # depend on the other rows of its chunk
            need = np.arange(n) if closed_loop else np.flatnonzero(used >= plan_len)
            if len(need):
                T = min(len(hist_obs[0]), policy.history_length)  # histories stay aligned across rows
                past = (np.asarray([hist_act[i][len(hist_act[i]) - T + 1:] for i in need], np.float32) if T > 1
                        else np.zeros((len(need), 0, envs[0].action_dim), np.float32))
                history = {"observations": _tensor([hist_obs[i][-T:] for i in need], device),
                           "actions": _tensor(past, device)}
                goals = _tensor(np.take_along_axis(task.goal_obs[rows[need]], idx[need, :, None], 1), device)
                fresh = policy.plan(history, goals, torch.as_tensor(ahead[need], device=device))  # (m, H, A)
                fresh = fresh.float().clamp(-1, 1).cpu().numpy()
                for k, i in enumerate(need):
                    plans[i], plan_len[i], used[i] = fresh[k], min(fresh.shape[1], next_goal[i]), 0
            action = np.stack([plans[i][used[i]] for i in range(n)])  # (n, A)
            used += 1
            for i in live:
                o, reward, _, _ = envs[i].step(action[i])
                returns[rows[i]] += reward
                hist_obs[i].append(o)
                hist_act[i].append(action[i])
                if times.shape[1]:
                    phys = envs[i].physics_state()
                    obs_d[rows[i], j] = np.linalg.norm(task.goal_obs[rows[i]] - o, axis=-1)
                    phys_d[rows[i], j] = np.linalg.norm(task.goal_physics[rows[i]] - phys, axis=-1)
                total += 1
            for i in np.flatnonzero(budget <= j):  # finished rows keep their history aligned with the others
                hist_obs[i].append(hist_obs[i][-1])
                hist_act[i].append(np.zeros_like(action[i]))
        return total
    finally:
        for env in envs:
            env.close()


def _tensor(rows, device) -> Tensor:
    return torch.as_tensor(np.asarray(rows, dtype=np.float32), device=device)


def summarize_goal_results(results: GoalResults, task: GoalTask, seed: int = 0) -> dict:
    """JSON-ready: per-pair distances, per-goal means, the mean with a 95% bootstrap CI; prompts: reward ratios."""
    out: dict = {"wall_time_s": results.wall_time_s, "steps": results.steps,
                 "budget_steps": [int(b) for b in task.num_steps]}
    if task.goal_times.shape[1]:
        for name, d in (("obs_distance", results.obs_distance), ("physics_distance", results.physics_distance)):
            per_pair = d.mean(1)
            out[f"{name}_mean"] = float(per_pair.mean())
            out[f"{name}_ci95"] = list(bootstrap_ci(per_pair, seed=seed))
            out[f"{name}_per_goal"] = [float(v) for v in d.mean(0)]
            out[f"{name}_per_pair"] = d.tolist()
        out["final_obs_distance_mean"] = float(results.final_obs_distance.mean())
    if task.data_rewards is not None:
        ratio = results.returns / np.maximum(task.data_rewards, 1e-6)
        out["reward_ratio_mean"] = float(ratio.mean())
        out["reward_ratio_ci95"] = list(bootstrap_ci(ratio, seed=seed))
        out["reward_ratio_of_sums"] = float(results.returns.sum() / max(task.data_rewards.sum(), 1e-6))
        out["returns"] = results.returns.tolist()
        out["data_rewards"] = task.data_rewards.tolist()
    return out
