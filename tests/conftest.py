"""Shared fixtures: real dm_control data collected once per session, helpers to build synthetic files, and the
tiny model, batch and CLI arguments every training test uses."""

import os
import subprocess
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

# ---- tiny models and batches (test_model, test_objectives, test_objective_contract) ----------------------------
OBS_DIM, ACTION_DIM, VALID_DIMS, K, C = 5, 4, 3, 4, 32  # action dim 3 is padding (another domain's slot)

# ---- tiny CLI runs (test_pretrain, test_ddp, test_blob) ----------------------------------------------------------
TINY_MODEL_ARGS = ["--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2", "--context_length", "6"]
TINY_ARGS = [*TINY_MODEL_ARGS, "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.limit_train_batches",
             "3", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1", "--quiet"]

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


def tiny_model(obs_type: str = "state", **overrides):
    """A 2-layer, 32-wide ControlTransformer over K=4 steps."""
    from control_pretrain.models.control_transformer import ControlTransformer, ControlTransformerConfig

    kwargs = {"obs_type": obs_type, "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "n_layer": 2, "n_head": 2,
              "n_embd": C, "context_length": K, "max_timestep": 64, "state_hidden": 16}
    return ControlTransformer(ControlTransformerConfig(**{**kwargs, **overrides}))


def make_batch(obs_type: str = "state", B: int = 3, T: int = K, num_actions: int | None = None) -> dict:
    """A batch as the DataModule delivers it (T observations, ``num_actions`` actions, default T); action dim 3
    is padding (another domain's slot)."""
    import torch

    Ta = T if num_actions is None else num_actions
    action_mask = torch.zeros(B, ACTION_DIM)
    action_mask[:, :VALID_DIMS] = 1
    batch = {
        "actions": (torch.rand(B, Ta, ACTION_DIM) * 2 - 1) * action_mask[:, None],
        "action_mask": action_mask,
        "timesteps": torch.arange(T).repeat(B, 1) + 3,
        "rtg": torch.rand(B, T) * 500,
        "rewards": torch.rand(B, T),
        "task_id": torch.zeros(B, dtype=torch.long),
        "domain_id": torch.zeros(B, dtype=torch.long),
    }
    if obs_type == "pixels":
        batch["pixels"] = torch.randint(0, 256, (B, T, 3, 84, 84), dtype=torch.uint8)
    else:
        batch["observations"] = torch.randn(B, T, OBS_DIM)
    return batch


# ---- online runs (test_online, test_pixel_sac) and objective steps (test_objective_contract, test_mlr) -------------
def run_metrics(folder) -> list[dict]:
    """The records of an online run's ``metrics.jsonl``."""
    import json

    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_curve(folder) -> list[tuple]:
    """What a run computed: eval returns and train episode returns/losses, without wall-clock entries."""
    return [tuple((k, v) for k, v in sorted(m.items()) if "per_s" not in k and k != "wall_s")
            for m in run_metrics(folder)]


def optimizer_step(module, optimizer, batch: dict) -> None:
    """What the Trainer does per step: closure (zero_grad, loss, backward), then the module's optimizer_step."""
    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = module.compute_losses(batch)["loss"]
        loss.backward()
        return loss
    module.optimizer_step(0, 0, optimizer, closure)
