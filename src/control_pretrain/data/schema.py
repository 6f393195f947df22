"""The dataset file format (docs/data_format.md): keys, dtypes, attributes, file layout, and the validator.

One HDF5 file per collection run holds a contiguous sequence of whole episodes, with D4RL-style flat keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import DatasetError
from ..storage import blob as storage

SCHEMA_VERSION = 1
KINDS = {"rand": "randcollect", "full": "fullcollect"}
POLICY_KIND = {"random": "randcollect", "sac": "fullcollect", "checkpoint": "fullcollect"}

# key -> (dtype, per-step rank or None for any, required)
KEYS = {
    "observations": (np.float32, 1, True),
    "actions": (np.float32, 1, True),
    "rewards": (np.float32, 0, True),
    "terminals": (np.bool_, 0, True),
    "timeouts": (np.bool_, 0, True),
    "physics": (np.float32, 1, True),
    "pixels": (np.uint8, 3, False),
}
REQUIRED_ATTRS = ("schema_version", "domain", "task", "policy", "seed", "replay_id", "action_repeat", "obs_keys")

# Chunk lengths along time. A 30-step window touches at most two chunks of each key; pixel chunks of 32 frames
# are ~0.68 MB, close to the HDF5 sweet spot of ~1 MB, and small enough that a window does not drag in much more
# than it needs.
STATE_CHUNK_STEPS = 4096
PIXEL_CHUNK_STEPS = 32


def dataset_path(data_dir_prefix: str, kind: str, domain: str, task: str, replay_id: int) -> str:
    """``{prefix}/{randcollect|fullcollect}_{domain}_{task}/{domain}_{task}_s{replay_id}.h5`` (DESIGN.md); the
    prefix may be an Azure Blob one (``az://container/prefix``, storage.py)."""
    return storage.join(data_dir_prefix, f"{kind}_{domain}_{task}", f"{domain}_{task}_s{replay_id}.h5")


@dataclass
class DatasetInfo:
    path: str
    num_steps: int
    num_episodes: int
    obs_dim: int
    action_dim: int
    state_dim: int
    pixel_shape: tuple[int, ...] | None
    attrs: dict
    episode_returns: np.ndarray
    episode_lengths: np.ndarray


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(h5) -> dict:
    return {k: _attr(v) for k, v in h5.attrs.items()}


def open_h5(path: str, **kwargs):
    """``h5py.File(path, 'r')`` with errors that say what is wrong with the file instead of an h5py traceback.
    A remote path (``az://...``) opens its verified copy in the local blob cache (storage.py)."""
    if storage.is_remote(path):
        local = storage.local_path(path, pin=True)  # pinned until opened: an open file survives eviction
        try:
            return _open_local(local, **kwargs)
        finally:
            storage.unpin(local)
    return _open_local(path, **kwargs)


def _open_local(path: str, **kwargs):
    import h5py

    if not os.path.exists(path):
        raise DatasetError(
            f"{path}: no such file. Collect it with `python src/dmc_data.py collect ...` or check --data_dir_prefix."
        )
    if not h5py.is_hdf5(path):
        raise DatasetError(
            f"{path}: not an HDF5 file (or its header is damaged). Dataset files are written by "
            "`python src/dmc_data.py collect` or converted by `import-smart`; re-create this one."
        )
    try:
        return h5py.File(path, "r", **kwargs)
    except OSError as err:
        raise DatasetError(f"{path}: the HDF5 file cannot be opened ({err}); it is probably truncated. "
                           "Delete it and collect or download it again.") from None


def validate(path: str) -> DatasetInfo:
    """Check a file against the schema; return its summary or raise DatasetError naming the first problem."""
    with open_h5(path) as h5:
        try:
            return _validate_open(path, h5)
        except (OSError, KeyError, ValueError) as err:  # corrupt data blocks surface only when read
            raise DatasetError(f"{path}: the file is damaged ({err}). Delete it and collect it again.") from None


def _validate_open(path: str, h5) -> DatasetInfo:
    missing = [k for k, (_, _, req) in KEYS.items() if req and k not in h5]
    if missing:
        raise DatasetError(
            f"{path}: not a dataset of this project: missing key(s) {missing} (found {sorted(h5.keys())}). "
            "Files in the original SMART .pt layout must be converted with `python src/dmc_data.py import-smart`."
        )
    attrs = read_attrs(h5)
    absent = [a for a in REQUIRED_ATTRS if a not in attrs]
    if absent:
        raise DatasetError(f"{path}: missing file attribute(s) {absent}. Re-create the file with this version.")
    if int(attrs["schema_version"]) > SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: schema_version {attrs['schema_version']} is newer than this code understands "
            f"({SCHEMA_VERSION}); upgrade the package."
        )
    n = h5["observations"].shape[0]
    for key, (dtype, rank, required) in KEYS.items():
        if key not in h5:
            continue
        d = h5[key]
        if d.shape[0] != n:
            raise DatasetError(
                f"{path}: key '{key}' has {d.shape[0]} rows but 'observations' has {n}; "
                "every key must have one row per step."
            )
        if d.ndim - 1 != rank:
            raise DatasetError(
                f"{path}: key '{key}' has shape {d.shape}, expected {1 + rank} dimensions (N{', ...' * rank})."
            )
        if d.dtype != dtype:
            raise DatasetError(f"{path}: key '{key}' has dtype {d.dtype}, expected {np.dtype(dtype)}.")
    if n == 0:
        raise DatasetError(f"{path}: the file holds no steps.")
    pixel_shape = None
    if "pixels" in h5:
        pixel_shape = tuple(h5["pixels"].shape[1:])
        if pixel_shape[0] != 3:
            raise DatasetError(f"{path}: 'pixels' has shape {h5['pixels'].shape}, expected (N, 3, H, W).")
    obs_keys = attrs["obs_keys"]
    obs_keys = [obs_keys] if isinstance(obs_keys, str) else list(obs_keys)
    attrs["obs_keys"] = obs_keys
    actions = h5["actions"][:]
    if not np.all(np.isfinite(actions)) or np.abs(actions).max() > 1.0 + 1e-6:
        raise DatasetError(f"{path}: 'actions' must be finite and within [-1, 1].")
    done = h5["terminals"][:] | h5["timeouts"][:]
    if not done[-1]:
        raise DatasetError(
            f"{path}: the last step ends no episode (terminals|timeouts is false at row {n - 1}); "
            "files must hold whole episodes. The file was probably cut short; collect it again."
        )
    from .episodes import EpisodeIndex

    index = EpisodeIndex.from_done(done)
    rewards = h5["rewards"][:]
    return DatasetInfo(
        path=path,
        num_steps=n,
        num_episodes=index.num_episodes,
        obs_dim=h5["observations"].shape[1],
        action_dim=h5["actions"].shape[1],
        state_dim=h5["physics"].shape[1],
        pixel_shape=pixel_shape,
        attrs=attrs,
        episode_returns=index.episode_sums(rewards),
        episode_lengths=index.lengths,
    )
