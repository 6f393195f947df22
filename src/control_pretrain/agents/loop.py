"""The online-RL loop every agent runs in (state SAC, pixel SAC and SAC+MLR; MWM plugs in through the same
``Agent`` protocol).

One episode at a time: uniformly random actions for the first ``init_steps`` agent steps (SAC-AE's seed phase),
then the agent's sampled actions; every step goes to the replay buffer and earns ``updates_per_step`` gradient
updates (fractional credit is carried over, so 0.25 means one update every 4 steps; when learning starts the loop
catches up with ``init_steps`` updates at once with ``catch_up``, as SAC-AE's ``num_updates = init_steps`` first step
does; CURL and MLR do not). With ``train_every`` k > 1 (MWM) the steps that earn updates are only every k-th
from ``init_steps`` on: step init_steps, init_steps + k, ... (integer counting, so the cadence never drifts). A
recurrent agent's optional ``begin_episode()`` is called before every training and evaluation episode. After
each episode: training metrics (means over the episode's updates), a deterministic evaluation every ``eval_every`` steps, and an in-memory snapshot
of everything a resumed run needs to continue exactly (agent, counters, the RNG states of torch, numpy and both
environments' tasks, the replay buffer's cursor). ``save_snapshot`` writes it (with or without the replay rows:
collect/sac.py rebuilds them from the dataset file it records) and ``load_snapshot`` continues from it.

``check_stop`` is called after every environment step that does not end the episode (collect/job.py's stop flag:
SIGINT/SIGTERM unwind there as KeyboardInterrupt, never inside MuJoCo or h5py).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..envs.dmc import DMCEnv
from .metric_log import MetricLog
from .replay import ReplayBuffer
from .tensors import rng_state_from_torch, rng_state_to_torch, to_cpu

log = logging.getLogger(__name__)

# Seeds derived from a run's seed. The evaluation environment gets its own far-away seed so its initial states are
# never the training episodes' (seeds are replay ids, small integers, so +100_000 never collides with another run).
EVAL_SEED_OFFSET = 100_000
# The replay's sampling RNG must differ from the warm-up action RNG (seeded with the run seed itself).
REPLAY_SEED_OFFSET = 1
# SAC-AE keeps the whole run in a 1M-transition buffer; we allocate no more than the run needs.
REPLAY_CAPACITY_MAX = 1_000_000
# Rows per run: one per step plus one final row per episode (agents/replay.py); DMC episodes are 1000 / action
# repeat >= 125 agent steps, so steps // 100 final rows is enough, and whole episodes overrun num_steps by < 1000.
MIN_EPISODE_STEPS = 100
LAST_EPISODE_SLACK = 1000
# A snapshot file written by an older layout (before agents/loop.py) cannot be continued.
SNAPSHOT_FORMAT = 2


def replay_capacity(num_steps: int) -> int:
    """Rows for a run of ``num_steps`` agent steps: the whole run, at most SAC-AE's 1M."""
    return min(REPLAY_CAPACITY_MAX, num_steps + num_steps // MIN_EPISODE_STEPS + LAST_EPISODE_SLACK)


class Agent(Protocol):
    """What the loop needs from an agent. ``train_step`` samples what one update needs from the replay buffer (a
    batch of transitions; MLR also clips) and runs it."""

    num_updates: int

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray: ...

    def train_step(self, replay: ReplayBuffer) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def begin_episode(agent: Agent) -> None:
    """Tell a recurrent agent (MWM) that an episode starts: its optional ``begin_episode()`` resets its state.
    Feed-forward agents (SAC) have no such method and are untouched."""
    hook = getattr(agent, "begin_episode", None)
    if hook is not None:
        hook()


@dataclass(frozen=True)
class LoopConfig:
    num_steps: int  # agent steps to run (in whole episodes: the last one may overrun)
    init_steps: int = 1000  # uniformly random actions first; updates start after them
    updates_per_step: float = 1.0
    catch_up: bool = True  # init_steps updates at once when learning starts (SAC-AE)
    train_every: int = 1  # agent steps between update rounds from init_steps on (MWM: 5, the first at init_steps)
    eval_every: int = 10000  # agent steps between deterministic evaluations (0: never)
    eval_episodes: int = 5
    seed: int = 0  # the warm-up action RNG


def evaluate(agent: Agent, env: DMCEnv, episodes: int) -> list[float]:
    """Returns of ``episodes`` deterministic (mean-action) episodes."""
    returns = []
    for _ in range(episodes):
        begin_episode(agent)
        obs, total, done = env.reset(), 0.0, False
        while not done:
            obs, reward, terminal, timeout = env.step(agent.act(obs, deterministic=True))
            total += reward
            done = terminal or timeout
        returns.append(total)
    return returns


def _no_stop() -> None:
    return None


class OnlineLoop:
    """One learning run: agent, environments, replay buffer, counters and the snapshot that continues it."""

    def __init__(self, agent: Agent, env: DMCEnv, replay: ReplayBuffer, cfg: LoopConfig,
                 eval_env: DMCEnv | None = None, metrics: MetricLog | None = None,
                 check_stop: Callable[[], None] = _no_stop) -> None:
        self.agent, self.env, self.replay, self.cfg = agent, env, replay, cfg
        self.eval_env, self.metrics, self.check_stop = eval_env, metrics, check_stop
        self.rng = np.random.default_rng(cfg.seed)  # the random seed-phase actions
        self.step = 0  # agent steps taken
        self.episodes = 0  # whole episodes played
        self.update_credit = 0.0  # fractional updates owed (updates_per_step may be < 1)
        self.next_eval = cfg.eval_every
        self.last_eval_step = -1
        self.info_sums: dict[str, list[float]] = {}  # update metrics since the last episode: [sum, count]
        self.snapshot: dict | None = None
        self.snapshot_extra: Callable[[], dict] | None = None  # more state a caller keeps in each snapshot
        self._replay_cursor = replay.cursor()

    # -- acting and learning ------------------------------------------------------------------------------------
    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.step < self.cfg.init_steps:
            return self.rng.uniform(-1.0, 1.0, self.env.action_dim).astype(np.float32)
        return self.agent.act(obs)

    def observe(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminal: bool,
                timeout: bool) -> None:
        """One environment step: store it, then run the updates it earned."""
        self.replay.add_step(obs, action, reward, next_obs, terminal, timeout)
        self.step += 1
        cfg = self.cfg
        if self.step < cfg.init_steps or (self.step - cfg.init_steps) % cfg.train_every:
            return
        if self.step == cfg.init_steps and cfg.catch_up:  # SAC-AE: init_steps updates when learning starts
            self.update_credit += cfg.init_steps * cfg.updates_per_step
        else:
            self.update_credit += cfg.updates_per_step
        while self.update_credit >= 1.0:
            for k, v in self.agent.train_step(self.replay).items():
                acc = self.info_sums.setdefault(k, [0.0, 0])
                acc[0], acc[1] = acc[0] + v, acc[1] + 1
            self.update_credit -= 1.0

    def play_episode(self) -> float:
        """One training episode (not recorded); its return."""
        begin_episode(self.agent)
        obs, total = self.env.reset(), 0.0
        while True:
            action = np.clip(np.asarray(self.act(obs), np.float32), -1.0, 1.0)
            next_obs, reward, terminal, timeout = self.env.step(action)
            self.observe(obs, action, reward, next_obs, terminal, timeout)
            total += reward
            obs = next_obs
            if terminal or timeout:
                return total
            self.check_stop()

    def run(self, play_episode: Callable[[], float] | None = None,
            after_episode: Callable[[int], None] | None = None) -> None:
        """Episodes until ``num_steps``; ``play_episode`` (default: ``self.play_episode``) plays one through
        ``act``/``observe`` and returns its return; ``after_episode(steps)`` runs after each snapshot."""
        play = play_episode or self.play_episode
        t0, steps0, updates0 = time.perf_counter(), self.step, self.agent.num_updates
        while self.step < self.cfg.num_steps:
            start = self.step
            ret = play()
            self.episodes += 1
            dt = max(time.perf_counter() - t0, 1e-9)
            self._log(**{"train/episode_return": ret, "episode": self.episodes,
                         "train/steps_per_s": (self.step - steps0) / dt,
                         "train/updates_per_s": (self.agent.num_updates - updates0) / dt},
                      **{f"train/{k}": total / n for k, (total, n) in self.info_sums.items()})  # episode means
            self.info_sums = {}
            if self.cfg.eval_every and self.step >= self.next_eval:
                self.evaluate()
                while self.next_eval <= self.step:
                    self.next_eval += self.cfg.eval_every
            self.take_snapshot()
            if after_episode:
                after_episode(self.step - start)
        if self.cfg.eval_every and self.last_eval_step != self.step:  # the final agent's score, whatever the schedule
            self.evaluate()

    def evaluate(self) -> list[float]:
        returns = evaluate(self.agent, self.eval_env, self.cfg.eval_episodes)
        self._log(**{"eval/return_mean": float(np.mean(returns)), "eval/return_std": float(np.std(returns))})
        self.last_eval_step = self.step
        log.info("step %d: evaluation return %.1f +- %.1f over %d episodes", self.step, np.mean(returns),
                 np.std(returns), len(returns))
        return returns

    def _log(self, **values: float) -> None:
        if self.metrics is not None:
            self.metrics.log(self.step, **values)

    # -- saving and resuming -----------------------------------------------------------------------------------
    def take_snapshot(self) -> None:
        """Remember the state at this episode boundary (a few MB of tensors), to save on an interruption."""
        self._replay_cursor = self.replay.cursor()
        rngs = {"rng_torch": torch.get_rng_state(), "rng_actions": self.rng.bit_generator.state,
                "rng_replay": self._replay_cursor.rng_state,
                "rng_env": rng_state_to_torch(self.env.task_rng_state())}
        if self.eval_env is not None:
            rngs["rng_eval_env"] = rng_state_to_torch(self.eval_env.task_rng_state())
        device = getattr(self.agent, "device", torch.device("cpu"))
        if torch.device(device).type == "cuda":
            rngs["rng_cuda"] = torch.cuda.get_rng_state(device)
        self.snapshot = copy.deepcopy({
            "format": SNAPSHOT_FORMAT, "agent": self.agent.state_dict(), "step": self.step, "episodes": self.episodes,
            "update_credit": self.update_credit, "next_eval": self.next_eval, "last_eval_step": self.last_eval_step,
            **rngs, **(self.snapshot_extra() if self.snapshot_extra else {}),
        })

    def save_snapshot(self, path: str, with_replay: bool = True) -> None:
        """Write the last snapshot to ``path`` atomically; ``with_replay`` adds the replay rows as of that snapshot
        (rows of an episode cut short by an interruption are rolled back first)."""
        if self.snapshot is None:
            return
        state = dict(self.snapshot)
        if with_replay:
            if not self.replay.rollback(self._replay_cursor):
                log.warning("%s: the interrupted episode had already overwritten the oldest replay rows; the "
                            "continued run differs slightly from an uninterrupted one", path)
            state["replay"] = self.replay.state_dict()
        tmp = f"{path}.tmp-{os.getpid()}"
        torch.save(to_cpu(state), tmp)
        os.replace(tmp, path)

    def load_snapshot(self, saved: dict, restore_rngs: bool = True) -> None:
        """Continue from ``save_snapshot``'s dict (``torch.load(..., weights_only=True)``). Without
        ``restore_rngs`` only the torch RNG is restored (collect/sac.py: a learner older than its data file)."""
        self.agent.load_state_dict(saved["agent"])
        self.step, self.episodes = int(saved["step"]), int(saved["episodes"])
        self.update_credit, self.next_eval = float(saved["update_credit"]), int(saved["next_eval"])
        self.last_eval_step = int(saved["last_eval_step"])
        if "replay" in saved:
            self.replay.load_state_dict(saved["replay"])
        torch.set_rng_state(saved["rng_torch"])
        if "rng_cuda" in saved and torch.cuda.is_available():
            torch.cuda.set_rng_state(saved["rng_cuda"], getattr(self.agent, "device", None) or "cuda")
        if restore_rngs:
            self.rng.bit_generator.state = saved["rng_actions"]
            self.replay.rng.bit_generator.state = rng_state_from_torch(saved["rng_replay"])
            self.env.set_task_rng_state(rng_state_from_torch(saved["rng_env"]))
            if self.eval_env is not None and "rng_eval_env" in saved:
                self.eval_env.set_task_rng_state(rng_state_from_torch(saved["rng_eval_env"]))
        self.take_snapshot()
