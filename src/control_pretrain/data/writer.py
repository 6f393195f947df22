"""Writes dataset files episode by episode, atomically: data goes to ``{path}.tmp-{pid}`` and is renamed onto
``path`` only when the file is complete, so readers never see a half-written file under the final name.
"""

from __future__ import annotations

import importlib.metadata
import os

import numpy as np

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


class TrajectoryWriter:
    """Append whole episodes, then ``close()`` to publish the file. Used as a context manager, an exception
    (including KeyboardInterrupt) removes the temporary file and leaves any existing file at ``path`` untouched.

    ``resume_from``: an existing complete file whose episodes are copied first (for collectors that continue).
    """

    def __init__(self, path: str, attrs: dict, obs_dim: int, action_dim: int, state_dim: int,
                 pixel_shape: tuple[int, int, int] | None = None) -> None:
        import h5py

        self.path = path
        self.tmp_path = f"{path}.tmp-{os.getpid()}"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._h5 = h5py.File(self.tmp_path, "w")
        self.num_steps = 0
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

    def flush(self) -> None:
        self._h5.flush()

    def close(self) -> None:
        """Publish the file under its final name (atomic rename on the same filesystem)."""
        if self._h5 is None:
            return
        self._h5.close()
        self._h5 = None
        os.replace(self.tmp_path, self.path)

    def abort(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        if os.path.exists(self.tmp_path):
            os.remove(self.tmp_path)

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
