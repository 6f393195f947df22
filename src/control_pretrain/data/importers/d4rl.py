"""Import a D4RL-layout HDF5 file (``import-d4rl FILE``) into our format.

D4RL's layout (Farama-Foundation/D4RL:d4rl/offline_env.py) is flat: ``observations`` (N, d), ``actions`` (N, a),
``rewards`` (N,), ``terminals`` (N,), ``timeouts`` (N,), optional ``infos/*``; an episode ends where
``terminals | timeouts``. Row i is the same decision as ours, so the arrays are copied as they are.

- Simulator states: our ``physics`` key if the file has one (our own files are D4RL-layout), else
  ``infos/qpos`` and ``infos/qvel`` side by side (what ``physics.get_state()`` holds for tasks without actuator
  state), else NaN rows (target.missing_physics).
- Rows after the last episode end are an unfinished episode (D4RL's own files often stop mid-episode,
  Farama-Foundation/D4RL#40); they are dropped with a warning, so the file holds whole episodes.
- ``next_observations`` and other ``infos/*`` keys are not carried over.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ...errors import DatasetError
from ..episodes import EpisodeIndex
from ..schema import DatasetInfo, read_attrs, validate
from ..writer import TrajectoryWriter
from .target import check_actions, expect_rows, import_attrs, missing_physics, target_task

logger = logging.getLogger(__name__)

REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")


def read_d4rl(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """The flat arrays (``physics`` as found, or absent) and the file attributes; DatasetError if a key is missing."""
    import h5py

    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file.")
    if not h5py.is_hdf5(path):
        raise DatasetError(f"{path}: not an HDF5 file; import-d4rl reads D4RL-layout .hdf5/.h5 files.")
    with h5py.File(path, "r") as h5:
        missing = [k for k in REQUIRED if k not in h5]
        if missing:
            raise DatasetError(
                f"{path}: not a D4RL-layout file: missing key(s) {missing} (found {sorted(h5.keys())}); expected "
                f"flat datasets {list(REQUIRED)} and optionally infos/qpos, infos/qvel."
            )
        arrays = {k: h5[k][:] for k in REQUIRED}
        if "physics" in h5:
            arrays["physics"] = h5["physics"][:]
        elif "infos/qpos" in h5 and "infos/qvel" in h5:
            arrays["qpos"], arrays["qvel"] = h5["infos/qpos"][:], h5["infos/qvel"][:]
        return arrays, read_attrs(h5)


def import_d4rl(path: str, out: str, domain: str | None = None, task: str | None = None,
                action_repeat: int | None = None, replay_id: int = 1, policy: str | None = None) -> DatasetInfo:
    """Convert the D4RL-layout file ``path`` into the dataset file ``out``; return its validated summary.
    Domain, task, action repeat and policy come from the file's attributes where it has them, else from the
    arguments (action repeat default 4)."""
    arrays, attrs = read_d4rl(path)
    target = target_task(domain or attrs.get("domain"), task or attrs.get("task"), path)
    n = len(arrays["observations"])
    expect_rows(path, "observations", arrays["observations"], n, target.obs_dim, f"{target.domain}/{target.task}")
    expect_rows(path, "actions", arrays["actions"], n, target.action_dim, f"{target.domain}/{target.task}")
    for key in ("rewards", "terminals", "timeouts"):
        expect_rows(path, key, arrays[key], n, None, "one per row of 'observations'")
    check_actions(path, arrays["actions"])
    physics = _physics(path, arrays, n, target)

    done = (arrays["terminals"].reshape(n) != 0) | (arrays["timeouts"].reshape(n) != 0)
    ends = np.flatnonzero(done) + 1
    if not len(ends):
        raise DatasetError(f"{path}: no row ends an episode (terminals | timeouts is false everywhere), so there is "
                           "no whole episode to import.")
    if ends[-1] != n:
        logger.warning("%s: dropped the final %d rows: an unfinished episode (no terminal or timeout after row %d).",
                       path, n - ends[-1], ends[-1] - 1)
    index = EpisodeIndex.from_done(done[: ends[-1]])
    file_attrs = import_attrs(target, policy or str(attrs.get("policy", "unknown")), replay_id,
                              int(action_repeat or attrs.get("action_repeat", 4)), "d4rl-import",
                              os.path.abspath(path))
    terminals = arrays["terminals"].reshape(n) != 0
    with TrajectoryWriter(out, file_attrs, target.obs_dim, target.action_dim, target.state_dim) as writer:
        for s, e in zip(index.starts, index.ends, strict=True):
            writer.append_episode({
                "observations": arrays["observations"][s:e], "actions": arrays["actions"][s:e],
                "rewards": arrays["rewards"].reshape(n)[s:e], "physics": physics[s:e],
                # a row that is both is a true termination: keep the stronger flag only
                "terminals": terminals[s:e], "timeouts": done[s:e] & ~terminals[s:e],
            })
    return validate(out)


def _physics(path: str, arrays: dict[str, np.ndarray], n: int, target) -> np.ndarray:
    label = f"physics.get_state() of {target.domain}/{target.task}"
    if "physics" in arrays:
        expect_rows(path, "physics", arrays["physics"], n, target.state_dim, label)
        return arrays["physics"]
    if "qpos" in arrays:
        if target.qpos_dim + target.qvel_dim != target.state_dim:
            raise DatasetError(f"{path}: {target.domain}/{target.task} has actuator state beyond qpos and qvel, so "
                               "infos/qpos and infos/qvel cannot rebuild physics.get_state().")
        expect_rows(path, "infos/qpos", arrays["qpos"], n, target.qpos_dim, f"nq of {target.domain}")
        expect_rows(path, "infos/qvel", arrays["qvel"], n, target.qvel_dim, f"nv of {target.domain}")
        return np.concatenate([arrays["qpos"], arrays["qvel"]], axis=1)
    return missing_physics(path, n, target.state_dim)
