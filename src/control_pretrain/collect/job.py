"""Collects dataset files by running a policy in dm_control (``python src/dmc_data.py collect``).

The reference data came from ycsun2017/data_collect_dmc (smart.md §1.1): ``randcollect`` = uniformly random
actions, ``fullcollect`` = the whole replay of a learning state-based SAC agent. Episodes are written whole, to a
temporary file renamed on completion, so an interrupted collection leaves nothing under the final name.
Several (task, replay id) jobs run in parallel processes, reporting progress to one bar.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..data.schema import POLICY_KIND, dataset_path
from ..data.writer import TrajectoryWriter
from ..envs.dmc import FRAME_SIZE, DMCEnv, make_env

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectJob:
    """One file to collect: ``{prefix}/{kind}_{domain}_{task}/{domain}_{task}_s{replay_id}.h5``."""

    domain: str
    task: str
    replay_id: int
    num_steps: int
    data_dir_prefix: str = "data"
    policy: str = "random"
    pixels: bool = False
    seed: int | None = None  # default: the replay id, so replay ids differ
    action_repeat: int = 4
    height: int = FRAME_SIZE
    width: int = FRAME_SIZE
    camera_id: int | None = None
    fast_render: bool = False
    overwrite: bool = False
    # --policy sac / checkpoint (collect_sac.py)
    resume: bool = False  # continue the kept partial file of an interrupted sac run
    sac: dict | None = field(default=None, hash=False)  # SACConfig overrides
    save_agent: bool = False  # write {file}.agent.pt at the end
    eval_every: int = 10000  # agent steps between deterministic evaluations (0: never)
    eval_episodes: int = 5
    checkpoint_every: int = 20  # episodes between saves of the resume state
    log_dir: str | None = None  # TensorBoard + metrics.jsonl (default: next to the file, tb_s{replay_id}/)
    agent_path: str | None = None  # --policy checkpoint: the saved agent to roll out
    action_noise: float = 0.0  # --policy checkpoint: std of Gaussian noise added to the mean action

    @property
    def path(self) -> str:
        return dataset_path(self.data_dir_prefix, POLICY_KIND[self.policy], self.domain, self.task, self.replay_id)

    @property
    def run_seed(self) -> int:
        return self.replay_id if self.seed is None else self.seed


def record_episode(env: DMCEnv, act: Callable[[np.ndarray], np.ndarray], pixels: bool,
                   on_step: Callable[..., None] | None = None) -> dict[str, np.ndarray]:
    """Run one episode; row i holds what the agent saw when it chose ``actions[i]`` and the reward that followed.
    ``on_step(obs, action, reward, next_obs, terminal, timeout)`` sees each transition as it happens (learners)."""
    obs = env.reset()
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "physics")}
    frames = []
    while True:
        rows["observations"].append(obs)
        rows["physics"].append(env.physics_state())
        if pixels:
            frames.append(env.render())
        action = np.clip(np.asarray(act(obs), np.float32), -1.0, 1.0)
        prev_obs = obs
        obs, reward, terminal, timeout = env.step(action)
        if on_step is not None:
            on_step(prev_obs, action, reward, obs, terminal, timeout)
        rows["actions"].append(action)
        rows["rewards"].append(reward)
        rows["terminals"].append(terminal)
        rows["timeouts"].append(timeout)
        if terminal or timeout:
            break
        check_stop()
    episode = {k: np.asarray(v) for k, v in rows.items()}
    if pixels:
        episode["pixels"] = np.stack(frames)
    return episode


def file_attrs(job: CollectJob, env: DMCEnv) -> dict:
    return {
        "domain": job.domain,
        "task": job.task,
        "policy": job.policy,
        "seed": job.run_seed,
        "replay_id": job.replay_id,
        "action_repeat": job.action_repeat,
        "obs_keys": env.obs_keys,
        "render_height": job.height if job.pixels else 0,
        "render_width": job.width if job.pixels else 0,
        "render_camera": env.camera_id if job.pixels else -1,
        "render_fast": bool(job.fast_render),
    }


def job_env(job: CollectJob) -> DMCEnv:
    """The environment a job records in, seeded by its run seed."""
    return make_env(job.domain, job.task, seed=job.run_seed, action_repeat=job.action_repeat, pixels=job.pixels,
                    height=job.height, width=job.width, camera_id=job.camera_id, fast_render=job.fast_render)


def record_to_file(job: CollectJob, env: DMCEnv, act, attrs: dict, progress) -> str:
    """Whole episodes of ``act`` in ``env`` until the job's step count, written to ``job.path``; closes ``env``."""
    pixel_shape = (3, job.height, job.width) if job.pixels else None
    try:
        with TrajectoryWriter(job.path, attrs, env.obs_dim, env.action_dim, env.state_dim, pixel_shape) as writer:
            while writer.num_steps < job.num_steps:
                episode = record_episode(env, act, job.pixels)
                writer.append_episode(episode)
                if progress:
                    progress(len(episode["actions"]))
    finally:
        env.close()
    return job.path


_stop_requested = False


def interrupt(*_) -> None:
    """SIGINT/SIGTERM while collecting: stop at the next environment step (``check_stop``); a second signal stops
    at once. Raising KeyboardInterrupt from the handler itself could land inside a finalizer (h5py, MuJoCo), where
    Python drops the exception and the collection would go on."""
    global _stop_requested
    if _stop_requested:
        raise KeyboardInterrupt
    _stop_requested = True


def check_stop() -> None:
    """Unwind like Ctrl-C (the writer then removes or keeps its temporary file) if a stop was asked for."""
    if _stop_requested:
        raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals():
    """SIGINT and SIGTERM (a killed job, a scheduler's stop) ask for a stop while collecting in this process."""
    global _stop_requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    if previous[signal.SIGINT] is not interrupt:  # outermost: a fresh request
        _stop_requested = False
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
