"""The one registry of online agents (``dmc_online.py --agent NAME``) and the seeded construction of a run."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..envs.dmc import DMCEnv
from .loop import REPLAY_SEED_OFFSET, LoopConfig, OnlineLoop, replay_capacity
from .metric_log import MetricLog
from .replay import ReplayBuffer
from .sac import SACAgent, SACConfig

# name -> (config dataclass with from_dict, agent class taking (obs_dim, action_dim, cfg, device)); MLR/MWM next
AGENTS = {"sac": (SACConfig, SACAgent)}


def make_loop(name: str, env: DMCEnv, overrides: dict | None, num_steps: int, seed: int, eval_env: DMCEnv | None = None,
              eval_every: int = 0, eval_episodes: int = 5, device: str = "cpu", metrics: MetricLog | None = None,
              check_stop: Callable[[], None] | None = None) -> OnlineLoop:
    """A fresh run of agent ``name``: torch seeded with ``seed`` before the agent is built (same seed, same
    weights), the replay sized for the whole run, the warm-up actions seeded with ``seed``."""
    config_cls, agent_cls = AGENTS[name]
    cfg = config_cls.from_dict(overrides)
    torch.manual_seed(seed)
    agent = agent_cls(env.obs_dim, env.action_dim, cfg, device=device)
    replay = ReplayBuffer(env.obs_dim, env.action_dim, replay_capacity(num_steps), seed=seed + REPLAY_SEED_OFFSET,
                          device=device)
    loop_cfg = LoopConfig(num_steps=num_steps, init_steps=cfg.init_steps, updates_per_step=cfg.updates_per_step,
                          eval_every=eval_every, eval_episodes=eval_episodes, seed=seed)
    kwargs = {"check_stop": check_stop} if check_stop is not None else {}
    return OnlineLoop(agent, env, replay, loop_cfg, eval_env=eval_env, metrics=metrics, **kwargs)
