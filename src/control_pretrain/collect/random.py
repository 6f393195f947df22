"""``--policy random``: uniformly random actions (SMART's ``randcollect`` data, smart.md §1.1)."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ..errors import DatasetError
from .job import CollectJob, file_attrs, job_env, record_to_file


def collect_random(job: CollectJob, progress: Callable[[int], None] | None = None) -> str:
    """Uniformly random actions until at least ``num_steps`` steps, in whole episodes."""
    if os.path.exists(job.path) and not job.overwrite:
        raise DatasetError(f"{job.path} already exists; pass --overwrite to replace it, or pick another --replay_id.")
    env = job_env(job)
    rng = np.random.default_rng(job.run_seed)

    def act(_obs: np.ndarray) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, env.action_dim).astype(np.float32)

    return record_to_file(job, env, act, file_attrs(job, env), progress)
