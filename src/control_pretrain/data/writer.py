"""Writes dataset files episode by episode, atomically: data goes to ``{path}.tmp-{pid}`` and is renamed onto
``path`` only when the file is complete, so readers never see a half-written file under the final name.

Resumable mode (long SAC collections, issue 4/7): data goes to ``{path}.tmp-partial`` instead, flushed after every
episode. An exception (Ctrl-C, SIGTERM in a worker, a crash) truncates it to its last whole episode and *keeps* it;
``resume=True`` reopens it and appends. Only ``close()`` publishes it under ``path`` (one rename), so the final
name still only ever holds a complete run. We chose this over re-publishing the final file every N episodes
because copying a multi-GB pixel file at every checkpoint costs more I/O than the run itself. HDF5 has no journal:
a hard kill (SIGKILL, power loss) that lands *while* an episode is being written can leave the partial file
unreadable; outside that short window the flushed file holds every whole episode written so far.
"""

from __future__ import annotations

import importlib.metadata
import os

import numpy as np

from ..errors import DatasetError
from .schema import PIXEL_CHUNK_STEPS, SCHEMA_VERSION, STATE_CHUNK_STEPS


def package_versions() -> dict[str, str]:
    out = {}
    for name, attr in (("dm_control", "dm_control_version"), ("mujoco", "mujoco_version"),
                       ("control-pretrain", "writer_version")):
        try:
            out[attr] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[attr] = "unknown"
    return out


def partial_path(path: str) -> str:
    """Where a resumable collection keeps its whole episodes until it is complete."""
    return f"{path}.tmp-partial"


class TrajectoryWriter:
    """Append whole episodes, then ``close()`` to publish the file. Used as a context manager, an exception
    (including KeyboardInterrupt) removes the temporary file and leaves any existing file at ``path`` untouched.

    ``resumable``: write to ``partial_path(path)`` and keep it (truncated to whole episodes) on an exception;
    ``resume``: reopen that partial file and append to it (its ``attrs`` must match the given ones).
    """

    def __init__(self, path: str, attrs: dict, obs_dim: int, action_dim: int, state_dim: int,
                 pixel_shape: tuple[int, int, int] | None = None, resumable: bool = False,
                 resume: bool = False) -> None:
        import h5py

        self.path = path
        self.resumable = resumable or resume
        self.tmp_path = partial_path(path) if self.resumable else f"{path}.tmp-{os.getpid()}"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.num_steps = 0
        if resume:
            self._h5 = h5py.File(self.tmp_path, "a")
            self._reopen(attrs, obs_dim, action_dim, state_dim, pixel_shape)
            return
        self._h5 = h5py.File(self.tmp_path, "w")
        specs = {
            "observations": ((obs_dim,), np.float32),
            "actions": ((action_dim,), np.float32),
            "rewards": ((), np.float32),
            "terminals": ((), np.bool_),
            "timeouts": ((), np.bool_),
            "physics": ((state_dim,), np.float32),
        }
        if pixel_shape is not None:
            specs["pixels"] = (tuple(pixel_shape), np.uint8)
        for key, (shape, dtype) in specs.items():
            steps = PIXEL_CHUNK_STEPS if key == "pixels" else STATE_CHUNK_STEPS
            self._h5.create_dataset(key, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                    chunks=(steps, *shape))
        self._h5["pixels" if pixel_shape is not None else "observations"].attrs["aligned"] = (
            "row i is what the agent saw when it chose actions[i]"
        )
        all_attrs = {"schema_version": SCHEMA_VERSION, **package_versions(), **attrs}
        for k, v in all_attrs.items():
            self._h5.attrs[k] = v if v is not None else ""

    def _reopen(self, attrs: dict, obs_dim: int, action_dim: int, state_dim: int,
                pixel_shape: tuple[int, int, int] | None) -> None:
        h5 = self._h5
        expected = {"observations": (obs_dim,), "actions": (action_dim,), "physics": (state_dim,)}
        if pixel_shape is not None:
            expected["pixels"] = tuple(pixel_shape)
        found = {k: tuple(h5[k].shape[1:]) for k in expected if k in h5}
        if found != expected or ("pixels" in h5) != (pixel_shape is not None):
            self._h5.close()
            raise DatasetError(f"{self.tmp_path}: cannot resume: its keys/shapes {found} differ from this run's "
                               f"{expected} (same --pixels/--height/--width as the interrupted run?)")
        for k in ("domain", "task", "policy", "replay_id", "action_repeat"):
            found_value = h5.attrs.get(k)
            if k in attrs and str(found_value) != str(attrs[k]):
                self._h5.close()
                raise DatasetError(f"{self.tmp_path}: cannot resume: attribute {k}={found_value!r}, this run "
                                   f"has {attrs[k]!r}")
        # keep only whole episodes, also if a previous writer stopped between the keys of one episode
        n = min(d.shape[0] for d in h5.values())
        done = np.flatnonzero(h5["terminals"][:n] | h5["timeouts"][:n])
        self.num_steps = int(done[-1]) + 1 if len(done) else 0
        self._truncate()

    def _truncate(self) -> None:
        for dset in self._h5.values():
            if dset.shape[0] != self.num_steps:
                dset.resize(self.num_steps, axis=0)

    def append_episode(self, episode: dict[str, np.ndarray]) -> None:
        """``episode`` maps each key to an array of one row per step; its last step must end the episode."""
        n = len(episode["actions"])
        if not (episode["terminals"][-1] or episode["timeouts"][-1]):
            raise ValueError("the last step of an appended episode must be a terminal or a timeout")
        for key, dset in self._h5.items():
            values = np.asarray(episode[key], dtype=dset.dtype)
            if values.shape != (n, *dset.shape[1:]):
                raise ValueError(f"episode key '{key}' has shape {values.shape}, expected {(n, *dset.shape[1:])}")
            dset.resize(self.num_steps + n, axis=0)
            dset[self.num_steps:] = values
        self.num_steps += n
        if self.resumable:
            self._h5.flush()  # the partial file on disk then holds this episode

    def read(self, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The rows written so far of ``keys`` (a resumed collection rebuilds its learner's replay from them)."""
        return {k: self._h5[k][: self.num_steps] for k in keys}

    def flush(self) -> None:
        self._h5.flush()

    def close(self) -> None:
        """Publish the file under its final name (atomic rename on the same filesystem)."""
        if self._h5 is None:
            return
        self._h5.close()
        self._h5 = None
        os.replace(self.tmp_path, self.path)

    def keep(self) -> None:
        """Close the partial file with its whole episodes only (resumable mode), without publishing it."""
        if self._h5 is None:
            return
        self._truncate()
        self._h5.close()
        self._h5 = None

    def abort(self) -> None:
        if self.resumable:
            self.keep()
            return
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        if os.path.exists(self.tmp_path):
            os.remove(self.tmp_path)

    def __enter__(self) -> TrajectoryWriter:  # noqa: PYI034 (typing.Self needs 3.11; ruff targets 3.10)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
