"""Import an ExORL / URLB episode folder (``import-exorl DIR``) into our format.

Reference layout (denisyarats/exorl:replay_buffer.py): one ``.npz`` per episode named ``{timestamp}_{idx}_{len}``,
under ``datasets/{domain}/{agent}/buffer/``, with arrays ``observation``, ``action``, ``reward``, ``discount``,
``physics`` of ``len + 1`` rows. Row 0 is a dummy first transition (zero action, zero reward: the reset); the
reference samples ``obs = observation[i - 1]``, ``action = action[i]``, ``reward = reward[i]``,
``next_obs = observation[i]`` for i >= 1, and ``physics[i]`` is the state behind ``observation[i]``.

Our row i is therefore ``observation[i]``, ``physics[i]``, ``action[i + 1]``, ``reward[i + 1]`` for i < len; the
final observation is dropped (our files hold what the agent saw before each action). ``discount == 0`` after a
step is a true termination, otherwise the episode ends by time limit.

Rewards: ExORL's data is task-agnostic and its loader always relabels them for the chosen task from ``physics``
(``relable_episode``: the task's reward of the state after each step); this importer does the same unless
``relabel=False`` keeps the stored ones. Deviation: the reference leaves the control input at whatever it was,
so rewards with a control term (cartpole's ``small_control``, ...) come out wrong; we set it to the step's action
first, and the relabelled rewards then equal what the environment paid (tests/test_import_exorl.py). One state
per step holds one physics step's reward only, so relabelling needs data without action repeat (URLB's: the
default of 1).
"""

from __future__ import annotations

import os
import re
import zipfile

import numpy as np

from ...envs.dmc import available_tasks, make_env
from ...errors import DatasetError
from ..schema import DatasetInfo, validate
from ..writer import TrajectoryWriter
from .target import TargetTask, check_actions, expect_rows, import_attrs, target_task

KEYS = ("observation", "action", "reward", "discount", "physics")
_NAME_RE = re.compile(r"^.+_(\d+)_(\d+)$")  # {timestamp}_{idx}_{len}


def list_episodes(src: str) -> list[str]:
    """The ``.npz`` episodes in ``src`` (or in its ``buffer/`` folder), in ExORL's episode-index order."""
    if not os.path.isdir(src):
        raise DatasetError(f"{src}: no such folder. Pass the buffer/ folder of an ExORL dataset "
                           "(datasets/{domain}/{agent}/buffer/) or the folder above it.")
    folder = src if any(f.endswith(".npz") for f in os.listdir(src)) else os.path.join(src, "buffer")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".npz")) if os.path.isdir(folder) else []
    if not names:
        raise DatasetError(f"{src}: no .npz episodes in it or in its buffer/ folder; nothing to import.")

    def order(name: str) -> tuple[int, str]:
        match = _NAME_RE.match(name[: -len(".npz")])
        return (int(match.group(1)) if match else -1, name)

    return [os.path.join(folder, n) for n in sorted(names, key=order)]


def parse_exorl_path(folder: str) -> tuple[str | None, str]:
    """Domain and exploration agent from ``.../{domain}/{agent}/buffer``; (None, 'unknown') where they say nothing."""
    parts = os.path.normpath(os.path.abspath(folder)).split(os.sep)
    if len(parts) >= 3 and parts[-1] == "buffer" and parts[-3] in available_tasks():
        return parts[-3], parts[-2]
    return None, "unknown"


def load_episode(path: str, target: TargetTask) -> dict[str, np.ndarray]:
    """One episode's arrays, checked against the layout above; DatasetError naming the file and key otherwise."""
    try:
        with np.load(path, allow_pickle=False) as npz:  # no pickle: a hostile file cannot run code
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise DatasetError(f"{path}: missing key(s) {missing} (found {sorted(npz.files)}); an ExORL episode "
                                   f"holds {list(KEYS)}.")
            ep = {k: npz[k] for k in KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DatasetError(f"{path}: cannot be read as an .npz episode ({err}); it is damaged or not an "
                           "ExORL episode.") from None
    rows = len(ep["observation"])
    label = f"{target.domain}/{target.task}, one more row than steps"
    expect_rows(path, "observation", ep["observation"], rows, target.obs_dim, label)
    expect_rows(path, "action", ep["action"], rows, target.action_dim, label)
    expect_rows(path, "physics", ep["physics"], rows, target.state_dim, label)
    for key in ("reward", "discount"):
        expect_rows(path, key, ep[key], rows, None, "one per row of 'observation'")
    if rows < 2:
        raise DatasetError(f"{path}: {rows} row(s): an episode needs the dummy first row and at least one step.")
    if np.any(ep["action"][0] != 0):
        raise DatasetError(f"{path}: 'action' row 0 is {ep['action'][0]}, expected the dummy zero action of the "
                           "reset; the file is not in ExORL's layout.")
    match = _NAME_RE.match(os.path.basename(path)[: -len(".npz")])
    if match and int(match.group(2)) != rows - 1:
        raise DatasetError(f"{path}: the name says {match.group(2)} steps but the arrays hold {rows - 1} "
                           "(plus the dummy first row); the file is truncated or misnamed.")
    check_actions(path, ep["action"])
    return ep


def relabel_rewards(env, physics: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The task's reward of every state reached by ``actions[i]``, as ExORL's ``relable_episode`` computes it,
    with the control set to that action (see the module docstring)."""
    rewards = np.empty(len(physics), np.float32)
    for i, (state, action) in enumerate(zip(physics, actions, strict=True)):
        with env.physics.reset_context():
            env.physics.set_state(np.asarray(state, np.float64))
            env.physics.set_control(np.asarray(action, np.float64))
        rewards[i] = env._env.task.get_reward(env.physics)
    return rewards


def import_exorl(src: str, out: str, domain: str | None = None, task: str | None = None,
                 action_repeat: int = 1, relabel: bool = True, replay_id: int = 1) -> DatasetInfo:
    """Convert the ExORL episodes in ``src`` into the dataset file ``out``; return its validated summary.
    The domain is parsed from ``.../{domain}/{agent}/buffer`` unless given; the task must be given."""
    if relabel and action_repeat != 1:
        raise DatasetError(f"{src}: rewards can be relabelled from one state per step only without action repeat "
                           f"(got --action_repeat {action_repeat}); pass --no_relabel to keep the stored rewards.")
    paths = list_episodes(src)
    parsed_domain, agent = parse_exorl_path(os.path.dirname(paths[0]))
    target = target_task(domain or parsed_domain, task, src)
    env = make_env(target.domain, target.task) if relabel else None
    attrs = import_attrs(target, agent, replay_id, action_repeat, "exorl-import", os.path.abspath(src))
    attrs["rewards"] = f"relabelled for {target.task} from physics" if relabel else "as stored"
    try:
        with TrajectoryWriter(out, attrs, target.obs_dim, target.action_dim, target.state_dim) as writer:
            for path in paths:
                ep = load_episode(path, target)
                n = len(ep["observation"]) - 1
                rewards = (relabel_rewards(env, ep["physics"][1:], ep["action"][1:]) if relabel
                           else ep["reward"].reshape(-1)[1:])
                terminal = bool(ep["discount"].reshape(-1)[-1] == 0)
                flags = np.zeros(n, bool)
                flags[-1] = True
                writer.append_episode({
                    "observations": ep["observation"][:-1], "actions": ep["action"][1:], "rewards": rewards,
                    "physics": ep["physics"][:-1], "terminals": flags & terminal, "timeouts": flags & (not terminal),
                })
    finally:
        if env is not None:
            env.close()
    return validate(out)
