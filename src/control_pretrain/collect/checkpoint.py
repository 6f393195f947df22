"""``--policy checkpoint``: rollouts of a saved SAC agent (``--save_agent`` writes ``{file}.agent.pt``), its mean
action plus optional Gaussian noise ``--action_noise``, for behaviour-cloning data of known quality."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np

from ..errors import DatasetError
from .job import CollectJob, file_attrs, job_env, record_to_file

log = logging.getLogger(__name__)


def collect_checkpoint(job: CollectJob, progress: Callable[[int], None] | None = None) -> str:
    """Episodes of a saved agent's mean action (+ ``action_noise`` Gaussian noise) until ``num_steps``."""
    import torch

    from ..agents.sac import SACAgent

    torch.set_num_threads(1)
    if not job.agent_path or not os.path.exists(job.agent_path):
        raise DatasetError(f"--policy checkpoint needs --agent_path to a saved agent (.agent.pt); got "
                           f"{job.agent_path!r}. Save one with `collect --policy sac --save_agent`.")
    if os.path.exists(job.path) and not job.overwrite:
        raise DatasetError(f"{job.path} already exists; pass --overwrite to replace it, or pick another --replay_id.")
    agent, saved = SACAgent.load(job.agent_path)
    env = job_env(job)
    if (agent.obs_dim, agent.action_dim) != (env.obs_dim, env.action_dim):
        env.close()
        raise DatasetError(f"{job.agent_path}: the agent takes obs {agent.obs_dim} / actions {agent.action_dim}, "
                           f"but {job.domain}-{job.task} has {env.obs_dim} / {env.action_dim}.")
    if saved.get("domain") not in (None, job.domain) or saved.get("task") not in (None, job.task):
        log.warning("%s was trained on %s-%s, recording it on %s-%s", job.agent_path, saved.get("domain"),
                    saved.get("task"), job.domain, job.task)
    rng = np.random.default_rng(job.run_seed)
    torch.manual_seed(job.run_seed)

    def act(obs: np.ndarray) -> np.ndarray:
        action = agent.act(obs, deterministic=True)
        if job.action_noise > 0:
            action = action + rng.normal(0.0, job.action_noise, action.shape)
        return np.clip(action, -1.0, 1.0)

    attrs = {**file_attrs(job, env), "agent_path": os.path.abspath(job.agent_path), "action_noise": job.action_noise}
    return record_to_file(job, env, act, attrs, progress)
