"""What every importer checks a foreign dataset against: the dm_control task it claims to come from.

Our files always name a dm_control task (evaluation, relabelling and goal reaching rebuild it), so an import
builds that task once and checks the source's observation, action and physics widths against it, instead of
trusting a header. Shared here because D4RL, ExORL and Minari imports need exactly the same checks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ...envs.dmc import check_task, make_env
from ...errors import DatasetError, EnvSpecError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetTask:
    """The widths of one dm_control task's arrays, as our files store them."""

    domain: str
    task: str
    obs_dim: int
    action_dim: int
    state_dim: int
    obs_keys: list[str]
    qpos_dim: int  # physics.get_state() is qpos then qvel (then act): D4RL's infos/qpos, infos/qvel
    qvel_dim: int


def target_task(domain: str | None, task: str | None, source: str) -> TargetTask:
    """Build ``domain``/``task`` and read its widths; DatasetError naming ``source`` if they are unknown."""
    if not domain or not task:
        raise DatasetError(
            f"{source}: the source does not say which dm_control task it comes from. Pass --domain and --task "
            "(e.g. --domain walker --task walk)."
        )
    try:
        check_task(domain, task)
    except EnvSpecError as err:
        raise DatasetError(f"{source}: {err} Pass the right --domain and --task.") from None
    env = make_env(domain, task)
    try:
        physics = env.physics
        return TargetTask(domain, task, env.obs_dim, env.action_dim, env.state_dim, list(env.obs_keys),
                          int(physics.model.nq), int(physics.model.nv))
    finally:
        env.close()


def expect_rows(source: str, key: str, value: np.ndarray, rows: int, width: int | None, what: str) -> None:
    """``value`` must be (rows,) when ``width`` is None, else (rows, width); ``what`` says where the width
    comes from, for the message."""
    expected = (rows,) if width is None else (rows, width)
    squeezed = value.reshape(rows) if width is None and value.shape == (rows, 1) else value
    if squeezed.shape != expected:
        raise DatasetError(
            f"{source}: '{key}' has shape {value.shape}, expected {expected} ({what}). The source belongs to "
            "another task (pass the right --domain/--task) or is damaged."
        )
    if value.dtype.kind not in "biuf":
        raise DatasetError(f"{source}: '{key}' has dtype {value.dtype}, expected numbers.")


def check_actions(source: str, actions: np.ndarray) -> None:
    """Our files hold actions in [-1, 1] (the suite's bounds), so anything else is another action convention."""
    if not np.all(np.isfinite(actions)) or (actions.size and np.abs(actions).max() > 1.0 + 1e-6):
        raise DatasetError(
            f"{source}: 'actions' must be finite and within [-1, 1] (dm_control's action bounds); found "
            f"[{np.nanmin(actions):.3g}, {np.nanmax(actions):.3g}]. Rescale them to [-1, 1] before importing."
        )


def missing_physics(source: str, rows: int, state_dim: int) -> np.ndarray:
    """NaN rows for a source without simulator states: the file stays valid for training, and anything that
    restores a state (relabelling, goal reaching) meets NaN instead of a made-up state."""
    logger.warning("%s: no simulator states in the source; 'physics' is written as NaN rows, so rewards cannot "
                   "be relabelled and goal modes cannot restore states from this file.", source)
    return np.full((rows, state_dim), np.nan, np.float32)


def import_attrs(target: TargetTask, policy: str, replay_id: int, action_repeat: int, source: str,
                 source_path: str) -> dict:
    """File attributes of an imported state-only file (docs/data_format.md)."""
    return {
        "domain": target.domain, "task": target.task, "policy": policy, "seed": replay_id, "replay_id": replay_id,
        "action_repeat": action_repeat, "obs_keys": target.obs_keys, "source": source, "source_path": source_path,
        "render_height": 0, "render_width": 0, "render_camera": -1, "render_fast": False,
    }
