"""Real dm_control rollouts with what foreign layouts record and ours does not: the final observation and every
state (D4RL's infos/qpos, infos/qvel; ExORL's physics), for the interop tests."""

from __future__ import annotations

import numpy as np


def rollout(domain: str, task: str, episodes: int, action_repeat: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random-action episodes; ``observations``, ``physics``, ``qpos``, ``qvel`` have N + 1 rows (before each
    action, then the final one), ``actions``, ``rewards``, ``timeouts`` N rows."""
    from control_pretrain.envs.dmc import make_env

    env = make_env(domain, task, seed=seed, action_repeat=action_repeat)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        rows: dict[str, list] = {k: [] for k in ("observations", "physics", "qpos", "qvel", "actions", "rewards",
                                                 "timeouts")}

        def record(obs, rows=rows):
            rows["observations"].append(obs)
            rows["physics"].append(env.physics.get_state().copy())  # float64, as ExORL stores it
            rows["qpos"].append(env.physics.data.qpos.copy())
            rows["qvel"].append(env.physics.data.qvel.copy())

        record(env.reset())
        while True:
            action = rng.uniform(-1, 1, env.action_dim).astype(np.float32)
            obs, reward, terminal, timeout = env.step(action)
            record(obs)
            rows["actions"].append(action)
            rows["rewards"].append(reward)
            rows["timeouts"].append(timeout)
            if terminal or timeout:
                break
        out.append({k: np.asarray(v) for k, v in rows.items()})
    env.close()
    return out
