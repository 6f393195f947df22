"""``--policy sac`` and ``--policy checkpoint`` collectors: the ``fullcollect`` data of SMART (smart.md §1.1).

``sac``: a state-based SAC agent (agents/sac.py) learns the task with action repeat 4 and every transition it
experiences is recorded, from its first ``init_steps`` uniformly random steps to its last, in the DESIGN.md
alignment (row i: the observation it saw, its action, the reward that followed). Differences from
ycsun2017/data_collect_dmc: the whole run is kept (the reference dropped its last partial 10k chunk), and pixels are
optional (the learner never sees them; rendering them is pure recording cost).

Interruption and ``--resume``: the file is written in whole episodes to ``{file}.tmp-partial`` (writer.py), and the
learner's state at the end of the last written episode (weights, optimisers, temperature, step counters, the final
observation of every episode and the RNG states of torch, numpy and the environment) is saved to
``{file}.tmp-partial.state.pt`` every ``checkpoint_every`` episodes and on any exception. ``--resume`` reopens both,
rebuilds the replay buffer from the file's transitions (plus the saved final observations, which the file does not
hold), and continues; with the state saved at the interruption the continued run is the run that would have
happened without it. If the state file is older than the data (a hard kill between checkpoints), the learner
restarts from that older state and the episodes after it only feed the replay buffer; their last transitions are
left out of the buffer (their next observation is unknown).

``checkpoint``: rollouts of a saved agent (``--save_agent`` writes ``{file}.agent.pt``), its mean action plus
optional Gaussian noise ``--action_noise``, for behaviour-cloning data of known quality.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable

import numpy as np

from ..data.writer import TrajectoryWriter, partial_path
from ..envs.dmc import DMCEnv, make_env
from ..errors import DatasetError
from .job import CollectJob, file_attrs, job_env, record_episode, stop_signals

log = logging.getLogger(__name__)


def agent_file(job: CollectJob) -> str:
    """``{prefix}/fullcollect_{domain}_{task}/{domain}_{task}_s{id}.agent.pt``."""
    return job.path[: -len(".h5")] + ".agent.pt"


def state_file(job: CollectJob) -> str:
    return partial_path(job.path) + ".state.pt"


def log_dir(job: CollectJob) -> str:
    if job.log_dir:
        return os.path.join(job.log_dir, f"{job.domain}_{job.task}_s{job.replay_id}")
    return os.path.join(os.path.dirname(job.path), f"tb_s{job.replay_id}")


class MetricLog:
    """TensorBoard scalars plus the same records as JSON lines (``metrics.jsonl``) for scripts and tests."""

    def __init__(self, folder: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(folder, exist_ok=True)
        self.tb = SummaryWriter(folder)
        self.jsonl = open(os.path.join(folder, "metrics.jsonl"), "a")  # noqa: SIM115 (closed in close())
        self.t0 = time.perf_counter()

    def log(self, step: int, **values: float) -> None:
        for k, v in values.items():
            if k != "episode":
                self.tb.add_scalar(k, v, step)
        wall_s = round(time.perf_counter() - self.t0, 3)  # since this process started the run (resets on resume)
        self.jsonl.write(json.dumps({"step": step, "wall_s": wall_s, **values}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        self.tb.close()
        self.jsonl.close()


def _env_rng(env: DMCEnv):
    return env._env.task.random  # dm_control's per-task RandomState: draws every episode's initial state


def evaluate(agent, env: DMCEnv, episodes: int) -> list[float]:
    """Returns of ``episodes`` deterministic (mean-action) episodes."""
    returns = []
    for _ in range(episodes):
        obs, total, done = env.reset(), 0.0, False
        while not done:
            obs, reward, terminal, timeout = env.step(agent.act(obs, deterministic=True))
            total += reward
            done = terminal or timeout
        returns.append(total)
    return returns


class SACCollection:
    """One learning run: the agent, its replay buffer, counters, and what must be saved to continue it."""

    def __init__(self, job: CollectJob, env: DMCEnv) -> None:
        import torch

        from ..agents.sac import ReplayBuffer, SACAgent, SACConfig

        self.job, self.env = job, env
        self.cfg = SACConfig.from_dict(job.sac)
        torch.manual_seed(job.run_seed)
        self.agent = SACAgent(env.obs_dim, env.action_dim, self.cfg)
        self.rng = np.random.default_rng(job.run_seed)  # the random seed-phase actions
        capacity = min(1_000_000, job.num_steps + 1000)  # SAC-AE: a 1M buffer, i.e. the whole run
        self.buffer = ReplayBuffer(env.obs_dim, env.action_dim, capacity, seed=job.run_seed + 1)
        self.step = 0  # agent steps taken (= rows written once an episode ends)
        self.update_credit = 0.0  # fractional updates owed (updates_per_step may be < 1)
        self.next_eval = job.eval_every
        self.last_eval_step = -1
        self.final_obs: list[np.ndarray] = []  # each episode's observation after its last action
        self.last_info: dict[str, float] = {}
        self.snapshot: dict | None = None

    # -- acting and learning ------------------------------------------------------------------------------------
    def act(self, obs: np.ndarray) -> np.ndarray:
        if self.step < self.cfg.init_steps:
            return self.rng.uniform(-1.0, 1.0, self.env.action_dim).astype(np.float32)
        return self.agent.act(obs)

    def on_step(self, obs, action, reward, next_obs, terminal, timeout) -> None:
        # DMC time limits are not terminations: bootstrap through them (SAC-AE's done_bool = 0 at the time limit)
        self.buffer.add_batch(obs[None], action[None], np.array([reward]), next_obs[None],
                              np.array([0.0 if terminal else 1.0]))
        self.step += 1
        if terminal or timeout:
            self.final_obs.append(np.array(next_obs, np.float32))
        if self.step < self.cfg.init_steps:
            return
        if self.step == self.cfg.init_steps:  # SAC-AE: catch up with init_steps updates when learning starts
            self.update_credit += self.cfg.init_steps * self.cfg.updates_per_step
        else:
            self.update_credit += self.cfg.updates_per_step
        while self.update_credit >= 1.0:
            self.last_info = self.agent.update(*self.buffer.sample(self.cfg.batch_size))
            self.update_credit -= 1.0

    # -- saving and resuming -----------------------------------------------------------------------------------
    def take_snapshot(self) -> None:
        """Remember the state at this episode boundary (cheap: a few MB of tensors), to save on interruption."""
        import torch

        self.snapshot = copy.deepcopy({
            **self.agent.state_dict(),
            "step": self.step,
            "update_credit": self.update_credit,
            "next_eval": self.next_eval,
            "final_obs": torch.from_numpy(np.stack(self.final_obs)) if self.final_obs else None,
            "rng_torch": torch.get_rng_state(),
            "rng_actions": self.rng.bit_generator.state,
            "rng_buffer": self.buffer.rng.bit_generator.state,
            "rng_env": _rng_state_to_torch(_env_rng(self.env).get_state(legacy=False)),
        })

    def save_snapshot(self) -> None:
        import torch

        if self.snapshot is not None:
            tmp = state_file(self.job) + f".tmp-{os.getpid()}"
            torch.save(self.snapshot, tmp)
            os.replace(tmp, state_file(self.job))

    def restore(self, writer: TrajectoryWriter) -> None:
        """Continue from the partial file and the saved state (if any)."""
        import torch

        from ..agents.sac import SACAgent

        n = writer.num_steps
        h5 = writer._h5
        obs, actions, rewards = h5["observations"][:n], h5["actions"][:n], h5["rewards"][:n]
        terminals, done = h5["terminals"][:n], h5["terminals"][:n] | h5["timeouts"][:n]
        saved = None
        if os.path.exists(state_file(self.job)):
            saved = torch.load(state_file(self.job), map_location="cpu", weights_only=True)
        if saved is not None and saved["step"] > n:
            raise DatasetError(f"{state_file(self.job)} is ahead of the partial file ({saved['step']} > {n} steps); "
                               "the two do not belong together. Remove both (or pass --overwrite) to start over.")
        final = saved["final_obs"].numpy() if saved is not None and saved["final_obs"] is not None else np.zeros((0,))
        ends = np.flatnonzero(done)
        next_obs = np.empty_like(obs)
        next_obs[:-1] = obs[1:]
        keep = np.ones(n, bool)
        for e, row in enumerate(ends):
            if e < len(final):
                next_obs[row] = final[e]
            else:
                keep[row] = False  # next observation unknown (episode written after the last saved state)
        self.buffer.add_batch(obs[keep], actions[keep], rewards[keep], next_obs[keep],
                              1.0 - terminals[keep].astype(np.float32))
        self.final_obs = list(final)
        self.step = n
        if saved is None:
            log.warning("%s: no saved learner state; resuming with a fresh agent and a replay buffer of %d steps",
                        self.job.path, n)
            self.next_eval = (n // self.job.eval_every + 1) * self.job.eval_every if self.job.eval_every else 0
            return
        self.agent = SACAgent.from_state_dict(saved)
        self.update_credit = float(saved["update_credit"])
        self.next_eval = int(saved["next_eval"])
        torch.set_rng_state(saved["rng_torch"])
        if saved["step"] == n:  # the RNGs belong to this point: the continued run is the uninterrupted one
            self.rng.bit_generator.state = saved["rng_actions"]
            self.buffer.rng.bit_generator.state = saved["rng_buffer"]
            _env_rng(self.env).set_state(_rng_state_from_torch(saved["rng_env"]))
        else:
            log.warning("%s: learner state is from step %d, data goes to step %d (hard kill between checkpoints); "
                        "continuing with the older learner", self.job.path, saved["step"], n)
        self.take_snapshot()


def _rng_state_to_torch(state: dict) -> dict:
    import torch

    return {**state, "state": {**state["state"], "key": torch.from_numpy(state["state"]["key"].astype(np.int64))}}


def _rng_state_from_torch(state: dict) -> dict:
    return {**state, "state": {**state["state"], "key": state["state"]["key"].numpy().astype(np.uint32)}}


def collect_sac(job: CollectJob, progress: Callable[[int], None] | None = None) -> str:
    """Train SAC for at least ``num_steps`` agent steps (whole episodes) and record its whole replay."""
    # A stop (Ctrl-C, `kill`, a scheduler) keeps the run for --resume, also when this runs outside collect_many.
    with stop_signals():
        return _collect_sac(job, progress)


def _collect_sac(job: CollectJob, progress: Callable[[int], None] | None) -> str:
    import torch

    torch.set_num_threads(1)  # several collectors share the cores; one update is too small to split well
    partial = partial_path(job.path)
    if os.path.exists(job.path) and not job.overwrite:
        raise DatasetError(f"{job.path} already exists; pass --overwrite to replace it, or pick another --replay_id.")
    if job.resume and not os.path.exists(partial):
        raise DatasetError(f"--resume: no interrupted run to continue ({partial} does not exist).")
    if os.path.exists(partial) and not job.resume:
        if not job.overwrite:
            raise DatasetError(f"{partial} holds an interrupted run of this file: pass --resume to continue it, "
                               "or --overwrite to start over.")
        for stale in (partial, state_file(job)):
            if os.path.exists(stale):
                os.remove(stale)
    env = job_env(job)
    eval_env = make_env(job.domain, job.task, seed=job.run_seed + 100_000, action_repeat=job.action_repeat)
    run = SACCollection(job, env)
    attrs = {**file_attrs(job, env), "sac_config": json.dumps(run.cfg.__dict__)}
    pixel_shape = (3, job.height, job.width) if job.pixels else None
    metrics = MetricLog(log_dir(job))
    try:
        with TrajectoryWriter(job.path, attrs, env.obs_dim, env.action_dim, env.state_dim, pixel_shape,
                              resumable=True, resume=job.resume) as writer:
            try:
                if job.resume:
                    run.restore(writer)
                    log.info("%s: resuming at step %d (%d episodes)", job.path, run.step, len(run.final_obs))
                    if progress:
                        progress(run.step)
                _train(run, writer, eval_env, metrics, progress)
            except BaseException:
                run.save_snapshot()  # the learner as of the last whole episode in the partial file
                raise
        if job.save_agent:
            run.agent.save(agent_file(job), extra={"domain": job.domain, "task": job.task, "steps": run.step})
        if os.path.exists(state_file(job)):
            os.remove(state_file(job))
    finally:
        metrics.close()
        env.close()
        eval_env.close()
    return job.path


def _train(run: SACCollection, writer: TrajectoryWriter, eval_env: DMCEnv, metrics: MetricLog,
           progress: Callable[[int], None] | None) -> None:
    job = run.job
    t0, steps0, updates0 = time.perf_counter(), run.step, run.agent.num_updates
    while writer.num_steps < job.num_steps:
        episode = record_episode(run.env, run.act, job.pixels, on_step=run.on_step)
        writer.append_episode(episode)
        ret = float(episode["rewards"].astype(np.float64).sum())
        dt = max(time.perf_counter() - t0, 1e-9)
        metrics.log(run.step, **{"train/episode_return": ret, "episode": len(run.final_obs),
                                 "train/steps_per_s": (run.step - steps0) / dt,
                                 "train/updates_per_s": (run.agent.num_updates - updates0) / dt},
                    **{f"train/{k}": v for k, v in run.last_info.items()})
        if job.eval_every and run.step >= run.next_eval:
            _log_eval(run, eval_env, metrics)
            while run.next_eval <= run.step:
                run.next_eval += job.eval_every
        run.take_snapshot()
        if len(run.final_obs) % job.checkpoint_every == 0:
            run.save_snapshot()
        if progress:
            progress(len(episode["actions"]))
    if job.eval_every and run.last_eval_step != run.step:  # the final agent's score, whatever the schedule
        _log_eval(run, eval_env, metrics)


def _log_eval(run: SACCollection, eval_env: DMCEnv, metrics: MetricLog) -> None:
    returns = evaluate(run.agent, eval_env, run.job.eval_episodes)
    metrics.log(run.step, **{"eval/return_mean": float(np.mean(returns)), "eval/return_std": float(np.std(returns))})
    run.last_eval_step = run.step
