"""Export our files as Minari datasets (``export-minari FILE --dataset_id ID``) and import them back
(``import-minari ID``). Minari is an optional extra (``pip install -e .[minari]``, its ``hdf5`` storage only).

Minari's layout (Farama-Foundation/Minari:docs/content/dataset_standards.md): one group per episode with
``observations`` of N + 1 rows (the observation after the last action included), ``actions``, ``rewards``,
``terminations``, ``truncations`` of N rows, and an ``infos`` group. We write a flat ``Box`` observation space
(our ``observations`` row as it is; ``obs_keys`` in the metadata), a ``Box(-1, 1)`` action space, and
``infos/physics`` (N + 1 rows of ``physics.get_state()``), written without JPEG (no image spaces anyway).

Our files hold N observations per episode: the one after the last action is not recorded. The export rebuilds
it in dm_control: restore the recorded last state, step the recorded last action with the file's action repeat,
read the observation and the state. What is exact and what is not:

- Rows 0..N-1 of every array are ours, bit for bit.
- The final observation (and final ``infos/physics`` row) is computed from a float32-rounded state, so it
  differs from what the environment returned by a few 1e-6 (at most 4e-6 on walker-walk, 3e-7 on cheetah-run;
  tests/test_interop_minari.py compares it with a replay of the same seed).
- Two checks guard it per episode: restoring the last state must reproduce the recorded last observation, and
  the rebuilt step must reproduce the recorded last reward. Tasks whose observation depends on more than
  ``physics.get_state()`` (reacher and finger place their targets in the model) fail the first check, and the
  export stops with an error instead of writing a wrong observation.
- Pixels are not exported (state observations only).

The dataset is written to a hidden folder beside its final place and renamed when complete, so
``minari.load_dataset`` never sees half a dataset. Our file attributes travel in the metadata key
``control_pretrain``, which ``import-minari`` reads back (domain, task, action repeat, policy).
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator

import numpy as np

from ...envs.dmc import DMCEnv, available_tasks, make_env
from ...errors import ArgumentError, DatasetError
from ..schema import DatasetInfo, open_h5, validate
from ..writer import TrajectoryWriter
from .target import TargetTask, check_actions, expect_rows, import_attrs, missing_physics, target_task

logger = logging.getLogger(__name__)

METADATA_KEY = "control_pretrain"
CARRIED_ATTRS = ("domain", "task", "policy", "seed", "replay_id", "action_repeat", "obs_keys")
# Restoring a float32-rounded state reproduces the recorded observation to ~1e-7 and a step to ~1e-5
# (walker, cheetah, cartpole); a task whose observation needs more than the state is off by far more (~0.1).
RESTORE_TOLERANCE = 1e-4


def require_minari():
    """The ``minari`` module, or an error that says how to install it."""
    try:
        import minari
    except ImportError:
        raise ArgumentError("Minari interop needs the optional package minari: run `pip install -e .[minari]` "
                            "(it installs minari[hdf5], without jax).") from None
    return minari


def _parse_id(dataset_id: str) -> tuple[str | None, str, int]:
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        return parse_dataset_id(dataset_id)
    except ValueError:
        raise ArgumentError(f"--dataset_id '{dataset_id}' is not a Minari dataset id; expected "
                            "(namespace/)name-v(version), e.g. dmc/walker-walk/random-v0.") from None


# ----------------------------------------------------------------------------------------------------- export
def final_step(env: DMCEnv, episode: dict[str, np.ndarray], where: str) -> tuple[np.ndarray, np.ndarray]:
    """The observation and state after the episode's last action, rebuilt from its last recorded state."""
    env.reset()  # a fresh time limit: get_state() holds no time, so steps would otherwise add up across episodes
    restored = env.restore(episode["physics"][-1])
    if not np.allclose(restored, episode["observations"][-1], rtol=RESTORE_TOLERANCE, atol=RESTORE_TOLERANCE):
        raise DatasetError(
            f"{where}: restoring the recorded last state gives observation {restored} instead of the recorded "
            f"{episode['observations'][-1]}: this task's observation depends on more than physics.get_state() "
            "(e.g. reacher's and finger's targets), so the final observation Minari needs cannot be rebuilt."
        )
    # The time limit counts physics steps since the reset, and get_state() holds no time: set the count the last
    # step started at, so an action repeat that does not divide the limit stops the rebuilt step where it stopped.
    env._env._step_count = (len(episode["actions"]) - 1) * env.action_repeat
    obs, reward, _, _ = env.step(episode["actions"][-1])
    if abs(reward - float(episode["rewards"][-1])) > RESTORE_TOLERANCE * env.action_repeat:
        raise DatasetError(
            f"{where}: stepping the last action from the last state gives reward {reward:.6f}, the file has "
            f"{float(episode['rewards'][-1]):.6f}; the file's action_repeat or task does not match its data."
        )
    return obs, env.physics_state()


def _episode_buffers(path: str, info: DatasetInfo, env: DMCEnv,
                     progress: Callable[[int, int], None] | None) -> Iterator:
    from minari.data_collector import EpisodeBuffer

    keys = ("observations", "actions", "rewards", "terminals", "timeouts", "physics")
    with open_h5(path) as h5:
        data = {k: h5[k][:] for k in keys}
    ends = np.cumsum(info.episode_lengths)
    for i, (s, e) in enumerate(zip(ends - info.episode_lengths, ends, strict=True)):
        ep = {k: v[s:e] for k, v in data.items()}
        final_obs, final_state = final_step(env, ep, f"{path} (episode {i}, rows {s}..{e - 1})")
        yield EpisodeBuffer(
            id=i,
            observations=np.concatenate([ep["observations"], final_obs[None]]),  # (N + 1, obs_dim)
            actions=ep["actions"],
            rewards=ep["rewards"],
            terminations=ep["terminals"],
            truncations=ep["timeouts"],
            infos={"physics": np.concatenate([ep["physics"], final_state[None]])},  # (N + 1, state_dim)
        )
        if progress is not None:
            progress(i + 1, info.num_episodes)


def export_minari(path: str, dataset_id: str, progress: Callable[[int, int], None] | None = None) -> str:
    """Write the dataset file ``path`` as the Minari dataset ``dataset_id`` under Minari's root
    (``MINARI_DATASETS_PATH``, default ``~/.minari/datasets``); return the dataset's folder."""
    minari = require_minari()
    import gymnasium as gym
    from minari.dataset.minari_storage import MinariStorage
    from minari.namespace import create_namespace, list_local_namespaces
    from minari.storage.datasets_root_dir import get_dataset_path

    namespace, _, _ = _parse_id(dataset_id)
    info = validate(path)
    final = str(get_dataset_path(dataset_id))
    if os.path.exists(final):
        raise DatasetError(f"{final}: a Minari dataset '{dataset_id}' already exists there. Pick another version "
                           f"(-v1, ...) or delete it first (`minari delete {dataset_id}`).")
    if namespace is not None and namespace not in list_local_namespaces():
        create_namespace(namespace)
    parent, name = os.path.split(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")  # hidden: Minari lists no dot folders
    attrs = info.attrs
    if info.pixel_shape is not None:
        logger.info("%s: its pixels are not exported (state observations only).", path)
    env = make_env(attrs["domain"], attrs["task"], action_repeat=int(attrs["action_repeat"]))
    try:
        os.makedirs(tmp)
        with warnings.catch_warnings():  # Minari warns about every optional metadata field left out
            warnings.simplefilter("ignore", UserWarning)
            storage = MinariStorage.new(
                os.path.join(tmp, "data"),
                observation_space=gym.spaces.Box(-np.inf, np.inf, (info.obs_dim,), np.float32),
                action_space=gym.spaces.Box(-1.0, 1.0, (info.action_dim,), np.float32),
                jpeg_encoding=False,
            )
            storage.update_metadata({
                "dataset_id": dataset_id,
                "minari_version": minari.__version__,  # load_dataset checks it against the installed one
                "algorithm_name": str(attrs["policy"]),
                "description": (f"dm_control {attrs['domain']}-{attrs['task']} (action repeat "
                                f"{attrs['action_repeat']}), exported by control-pretrain from "
                                f"{os.path.basename(path)}. Final observations rebuilt from the recorded last "
                                "state (about 1e-6 off); infos/physics is physics.get_state()."),
                METADATA_KEY: {k: attrs[k] for k in CARRIED_ATTRS},
            })
            storage.update_episodes(_episode_buffers(path, info, env, progress))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        env.close()
    return final


# ----------------------------------------------------------------------------------------------------- import
def task_from_id(dataset_id: str) -> tuple[str | None, str | None]:
    """``dmc/walker-walk/random-v0`` -> ``('walker', 'walk')``: a ``{domain}-{task}`` part of the id that names a
    dm_control task; ``(None, None)`` if none does."""
    tasks = available_tasks()
    for part in dataset_id.split("/"):
        for domain, names in tasks.items():
            for task in names:
                if part == f"{domain}-{task}":
                    return domain, task
    return None, None


def _load(dataset_id: str):
    minari = require_minari()
    from minari.storage.datasets_root_dir import get_dataset_path

    _parse_id(dataset_id)
    try:
        return minari.load_dataset(dataset_id)
    except (FileNotFoundError, ValueError, KeyError) as err:  # missing, or a damaged metadata.json
        raise DatasetError(f"Minari dataset '{dataset_id}' cannot be loaded from {get_dataset_path(dataset_id)} "
                           f"({err}). Check the id with `minari list local`, or set MINARI_DATASETS_PATH to the "
                           "root that holds it.") from None


def _check_spaces(dataset_id: str, dataset, target: TargetTask) -> None:
    import gymnasium as gym

    for what, space, dim in (("observation", dataset.observation_space, target.obs_dim),
                             ("action", dataset.action_space, target.action_dim)):
        if not isinstance(space, gym.spaces.Box) or space.shape != (dim,):
            raise DatasetError(
                f"Minari dataset '{dataset_id}': {what} space is {space}, expected a flat Box of shape ({dim},) "
                f"for {target.domain}/{target.task}. Only flat state datasets can be imported."
            )


def import_minari(dataset_id: str, out: str, domain: str | None = None, task: str | None = None,
                  action_repeat: int | None = None, replay_id: int | None = None) -> DatasetInfo:
    """Convert the local Minari dataset ``dataset_id`` into the dataset file ``out``; return its summary.
    Domain, task, action repeat and policy come from the arguments, else from the metadata our export writes,
    else (domain and task) from a ``{domain}-{task}`` part of the id; action repeat defaults to 1 (one
    Gymnasium step per action)."""
    dataset = _load(dataset_id)
    ours = dataset.storage.metadata.get(METADATA_KEY, {})
    id_domain, id_task = task_from_id(dataset_id)
    target = target_task(domain or ours.get("domain") or id_domain, task or ours.get("task") or id_task,
                         f"Minari dataset '{dataset_id}'")
    _check_spaces(dataset_id, dataset, target)
    policy = str(ours.get("policy") or dataset.storage.metadata.get("algorithm_name") or "unknown")
    replay = int(replay_id if replay_id is not None else ours.get("replay_id", 1))
    attrs = import_attrs(target, policy, replay, int(action_repeat or ours.get("action_repeat", 1)),
                         "minari-import", dataset_id)
    attrs["seed"] = ours.get("seed", replay)
    with TrajectoryWriter(out, attrs, target.obs_dim, target.action_dim, target.state_dim) as writer:
        for episode in dataset.iterate_episodes():
            writer.append_episode(_our_episode(f"Minari dataset '{dataset_id}' episode {episode.id}", episode,
                                               target))
    return validate(out)


def _our_episode(where: str, episode, target: TargetTask) -> dict[str, np.ndarray]:
    n = len(episode.rewards)
    expect_rows(where, "observations", episode.observations, n + 1, target.obs_dim,
                "N + 1 rows: Minari keeps the final observation")
    expect_rows(where, "actions", episode.actions, n, target.action_dim, "one per step")
    check_actions(where, episode.actions)
    terminals = np.asarray(episode.terminations, bool)
    timeouts = np.asarray(episode.truncations, bool) & ~terminals
    if not (terminals[-1] or timeouts[-1]):
        logger.warning("%s: its last step is neither terminated nor truncated; marked as a timeout (the data "
                       "ends there).", where)
        timeouts[-1] = True
    physics = (episode.infos or {}).get("physics")
    if physics is None:
        physics = missing_physics(where, n + 1, target.state_dim)
    expect_rows(where, "infos/physics", physics, n + 1, target.state_dim, "physics.get_state(), N + 1 rows")
    return {"observations": episode.observations[:n], "actions": episode.actions, "rewards": episode.rewards,
            "terminals": terminals, "timeouts": timeouts, "physics": physics[:n]}
