"""``--policy sac``: the ``fullcollect`` data of SMART (smart.md §1.1), the recording half of a SAC run.

A state-based SAC agent (agents/sac.py) learns the task with action repeat 4 in the online loop every agent uses
(agents/loop.py), and every transition it experiences is recorded, from its first ``init_steps`` uniformly random
steps to its last, in the DESIGN.md alignment (row i: the observation it saw, its action, the reward that
followed). Differences from ycsun2017/data_collect_dmc: the whole run is kept (the reference dropped its last
partial 10k chunk), and pixels are optional (the learner never sees them; rendering them is pure recording cost).

Interruption and ``--resume``: the file is written in whole episodes to ``{file}.tmp-partial`` (writer.py), and the
learner's state at the end of the last written episode (weights, optimisers, temperature, step counters, the final
observation of every episode and the RNG states of torch, numpy and both environments) is saved to
``{file}.tmp-partial.state.pt`` every ``checkpoint_every`` episodes and on any exception. The state file holds no
replay rows (it stays small): ``--resume`` reopens both, rebuilds the replay buffer from the file's transitions
(plus the saved final observations, which the file does not hold), and continues; with the state saved at the
interruption the continued run is the run that would have happened without it. If the state file is older than
the data (a hard kill between checkpoints), the learner restarts from that older state and the episodes after it
only feed the replay buffer; their last transitions are left out of the samples (their next observation is
unknown). ``--policy checkpoint`` (checkpoint.py) rolls out the agent ``--save_agent`` writes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import numpy as np

from ..agents.loop import EVAL_SEED_OFFSET, SNAPSHOT_FORMAT, OnlineLoop
from ..agents.metric_log import MetricLog
from ..agents.registry import make_loop
from ..data.writer import TrajectoryWriter, partial_path
from ..envs.dmc import make_env
from ..errors import DatasetError
from .job import CollectJob, check_stop, file_attrs, job_env, record_episode, stop_signals

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


class Recording:
    """The recording half of a SAC collection: plays the loop's episodes into the resumable dataset file and keeps
    each episode's final observation (the file does not hold it; a resumed run needs it for the replay)."""

    def __init__(self, job: CollectJob, loop: OnlineLoop, writer: TrajectoryWriter) -> None:
        self.job, self.loop, self.writer = job, loop, writer
        self.final_obs: list[np.ndarray] = []
        loop.snapshot_extra = self.snapshot_extra

    def snapshot_extra(self) -> dict:
        import torch

        return {"final_obs": torch.from_numpy(np.stack(self.final_obs)) if self.final_obs else None}

    def play_episode(self) -> float:
        def on_step(obs, action, reward, next_obs, terminal, timeout) -> None:
            self.loop.observe(obs, action, reward, next_obs, terminal, timeout)
            if terminal or timeout:
                self.final_obs.append(np.array(next_obs, np.float32))

        episode = record_episode(self.loop.env, self.loop.act, self.job.pixels, on_step=on_step)
        self.writer.append_episode(episode)
        return float(episode["rewards"].astype(np.float64).sum())

    def restore(self) -> None:
        """Continue from the partial file and the saved state (if any)."""
        from ..safe_load import load_checkpoint

        job, loop, n = self.job, self.loop, self.writer.num_steps
        rows = self.writer.read(("observations", "actions", "rewards", "terminals", "timeouts"))
        saved = load_checkpoint(state_file(job), trust=False, refused_hint=(
            "The collector writes this file itself and never puts such objects in it: pass --overwrite (instead of "
            "--resume) to start over.")) if os.path.exists(state_file(job)) else None
        if saved is not None and saved.get("format") != SNAPSHOT_FORMAT:
            raise DatasetError(f"{state_file(job)} was written by an older version of the collector and cannot be "
                               "continued; pass --overwrite (instead of --resume) to start over.")
        if saved is not None and saved["step"] > n:
            raise DatasetError(f"{state_file(job)} is ahead of the partial file ({saved['step']} > {n} steps); "
                               "the two do not belong together. Remove both (or pass --overwrite) to start over.")
        final = saved["final_obs"].numpy() if saved is not None and saved["final_obs"] is not None else np.zeros((0,))
        ends = rows["terminals"] | rows["timeouts"]
        # episodes written after the last saved state: their final observation is unknown, so their last step
        # stays out of the samples (agents/replay.py)
        loop.replay.add(rows["observations"], rows["actions"], rows["rewards"], 1.0 - rows["terminals"],
                        ends, final_obs=final)
        self.final_obs = list(final)
        if saved is None:
            log.warning("%s: no saved learner state; resuming with a fresh agent and a replay buffer of %d steps",
                        job.path, n)
            every = job.eval_every
            loop.next_eval = (n // every + 1) * every if every else 0
        else:
            exact = saved["step"] == n  # the RNGs belong to this point: the continued run is the uninterrupted one
            if not exact:
                log.warning("%s: learner state is from step %d, data goes to step %d (hard kill between "
                            "checkpoints); continuing with the older learner", job.path, saved["step"], n)
            loop.load_snapshot(saved, restore_rngs=exact)
        loop.step, loop.episodes = n, int(ends.sum())
        loop.take_snapshot()


def collect_sac(job: CollectJob, progress: Callable[[int], None] | None = None, metrics_dir: str | None = None,
                device: str = "cpu") -> str:
    """Train SAC for at least ``num_steps`` agent steps (whole episodes) and record its whole replay. Metrics go to
    ``metrics_dir`` (default ``log_dir(job)``); ``dmc_online.py --record`` passes its output folder."""
    # A stop (Ctrl-C, `kill`, a scheduler) keeps the run for --resume, also when this runs outside collect_many.
    with stop_signals():
        return _collect_sac(job, progress, metrics_dir or log_dir(job), device)


def _collect_sac(job: CollectJob, progress: Callable[[int], None] | None, metrics_dir: str, device: str) -> str:
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
    eval_env = make_env(job.domain, job.task, seed=job.run_seed + EVAL_SEED_OFFSET, action_repeat=job.action_repeat)
    metrics = MetricLog(metrics_dir)
    loop = make_loop("sac", env, job.sac, job.num_steps, job.run_seed, eval_env=eval_env, eval_every=job.eval_every,
                     eval_episodes=job.eval_episodes, device=device, metrics=metrics, check_stop=check_stop)
    attrs = {**file_attrs(job, env), "sac_config": json.dumps(loop.agent.cfg.__dict__)}
    pixel_shape = (3, job.height, job.width) if job.pixels else None

    def after_episode(steps: int) -> None:
        if loop.episodes % job.checkpoint_every == 0:
            loop.save_snapshot(state_file(job), with_replay=False)
        if progress:
            progress(steps)

    try:
        with TrajectoryWriter(job.path, attrs, env.obs_dim, env.action_dim, env.state_dim, pixel_shape,
                              resumable=True, resume=job.resume) as writer:
            recording = Recording(job, loop, writer)
            try:
                if job.resume:
                    recording.restore()
                    log.info("%s: resuming at step %d (%d episodes)", job.path, loop.step, loop.episodes)
                    if progress:
                        progress(loop.step)
                loop.run(recording.play_episode, after_episode)
            except BaseException:
                # the learner as of the last whole episode in the partial file (its replay is the file itself)
                loop.save_snapshot(state_file(job), with_replay=False)
                raise
        if job.save_agent:
            loop.agent.save(agent_file(job), extra={"domain": job.domain, "task": job.task, "steps": loop.step})
        if os.path.exists(state_file(job)):
            os.remove(state_file(job))
    finally:
        metrics.close()
        env.close()
        eval_env.close()
    return job.path
