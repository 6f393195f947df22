"""Shared fixtures: real dm_control data collected once per session, and helpers to build synthetic files."""

import os
import subprocess
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
sys.path.insert(0, SRC)  # the entry scripts (dmc_pretrain.py, ...) are importable for in-process runs


def run_script(script: str, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python src/<script> args`` from the repository root, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, os.path.join(SRC, script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env, check=False)


@pytest.fixture(scope="session")
def collected_dir(tmp_path_factory):
    """Random-policy data for two small tasks, two replay ids each (1,000 steps = 4 episodes per file)."""
    root = tmp_path_factory.mktemp("collected")
    res = run_script("dmc_data.py", "collect", "--multi_config", "configs/pretrain_configs/multipretrain_source_test.json",
                     "--num_steps", "1000", "--replay_id", "1", "2", "--data_dir_prefix", str(root), "--quiet")
    assert res.returncode == 0, res.stderr
    return root


def synthetic_episode(length: int, episode_id: float, obs_dim: int = 3, action_dim: int = 2,
                      state_dim: int = 2, rng=None, pixels: bool = False) -> dict[str, np.ndarray]:
    """An episode whose every action, observation and physics row equals ``episode_id`` (so windows that
    straddle episodes are visible) and whose rewards are random."""
    rng = rng or np.random.default_rng(0)
    ep = {
        "observations": np.full((length, obs_dim), episode_id, np.float32),
        "actions": np.full((length, action_dim), episode_id / 1000.0, np.float32),
        "rewards": rng.uniform(0, 4, length).astype(np.float32),
        "terminals": np.zeros(length, bool),
        "timeouts": np.zeros(length, bool),
        "physics": np.full((length, state_dim), episode_id, np.float32),
    }
    ep["timeouts"][-1] = True
    if pixels:
        ep["pixels"] = rng.integers(0, 256, (length, 3, 84, 84), dtype=np.uint8)
    return ep


def write_synthetic(path, lengths, first_id: int = 0, domain: str = "cartpole", pixels: bool = False,
                    obs_dim: int = 3, action_dim: int = 2, seed: int = 0) -> list[dict]:
    from control_pretrain.data.writer import TrajectoryWriter

    rng = np.random.default_rng(seed)
    attrs = {"domain": domain, "task": "swingup", "policy": "random", "seed": seed, "replay_id": 1,
             "action_repeat": 4, "obs_keys": ["position"]}
    episodes = [synthetic_episode(n, first_id + i, obs_dim, action_dim, rng=rng, pixels=pixels)
                for i, n in enumerate(lengths)]
    with TrajectoryWriter(str(path), attrs, obs_dim, action_dim, 2, (3, 84, 84) if pixels else None) as w:
        for ep in episodes:
            w.append_episode(ep)
    return episodes


@pytest.fixture(scope="session")
def pixel_dir(tmp_path_factory):
    """Fast-rendered pixel data for the test task set: 2 episodes per task."""
    root = tmp_path_factory.mktemp("pixels")
    res = run_script("dmc_data.py", "collect", "--multi_config", "configs/pretrain_configs/multipretrain_source_test.json",
                     "--num_steps", "500", "--pixels", "--fast_render", "--data_dir_prefix", str(root), "--quiet")
    assert res.returncode == 0, res.stderr
    return root


def scalars(out_dir) -> dict[str, list[float]]:
    """Every TensorBoard scalar of a run's newest log, as {tag: [values in step order]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted((out_dir / "tb_logs").iterdir())
    acc = EventAccumulator(str(runs[-1])).Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def run_in_process(main, args: list[str]):
    """Run a training entry point in this process (so its trained module can be inspected)."""
    saved = sys.argv
    try:
        return main(args)
    finally:
        sys.argv = saved
