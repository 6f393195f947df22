"""The one registry of online agents (``dmc_online.py --agent NAME --obs_type TYPE``) and the seeded construction
of a run."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .loop import REPLAY_SEED_OFFSET, LoopConfig, OnlineLoop, replay_capacity
from .metric_log import MetricLog
from .mwm.agent import MWMAgent
from .mwm.config import MWMConfig
from .pixel_sac import PixelSACAgent, PixelSACConfig, SACMLRConfig
from .replay import ReplayBuffer
from .sac import SACAgent, SACConfig

# (name, obs_type) -> (config dataclass with from_dict, agent class taking (obs shape, action_dim, cfg, device))
AGENTS = {
    ("sac", "state"): (SACConfig, SACAgent),
    ("sac", "pixels"): (PixelSACConfig, PixelSACAgent),
    ("sac_mlr", "pixels"): (SACMLRConfig, PixelSACAgent),
    ("mwm", "pixels"): (MWMConfig, MWMAgent),
}
AGENT_NAMES = sorted({name for name, _ in AGENTS})


def presets_module(name: str):
    """The presets of a pixel agent: ``PRESETS``, ``paper_action_repeat``, ``preset_options``, ``reductions``,
    ``run_label`` (agents/pixel_presets.py for SAC and SAC+MLR, agents/mwm/presets.py for MWM)."""
    if name == "mwm":
        from .mwm import presets
    else:
        from . import pixel_presets as presets
    return presets


def make_loop(name: str, env, overrides: dict | None, num_steps: int, seed: int, eval_env=None,
              eval_every: int = 0, eval_episodes: int = 5, device: str = "cpu", metrics: MetricLog | None = None,
              check_stop: Callable[[], None] | None = None, obs_type: str = "state") -> OnlineLoop:
    """A fresh run of agent ``name`` on ``env`` (envs/dmc.py for state, envs/pixel_env.py for pixels): torch
    seeded with ``seed`` before the agent is built (same seed, same weights), the replay sized for the whole run,
    the warm-up actions seeded with ``seed``."""
    config_cls, agent_cls = AGENTS[name, obs_type]
    cfg = config_cls.from_dict(overrides)
    torch.manual_seed(seed)
    replay_seed = seed + REPLAY_SEED_OFFSET
    if obs_type == "pixels":
        agent = agent_cls(env.obs_shape, env.action_dim, cfg, device=device)
        frame = (env.obs_shape[0] // cfg.frame_stack, *env.obs_shape[1:])  # replay rows hold single frames
        replay = ReplayBuffer(frame, env.action_dim, min(replay_capacity(num_steps), cfg.replay_capacity),
                              seed=replay_seed, obs_dtype=np.uint8, device=device, frame_stack=cfg.frame_stack)
    else:
        agent = agent_cls(env.obs_dim, env.action_dim, cfg, device=device)
        replay = ReplayBuffer(env.obs_dim, env.action_dim, replay_capacity(num_steps), seed=replay_seed,
                              device=device)
    loop_cfg = LoopConfig(num_steps=num_steps, init_steps=cfg.init_steps, updates_per_step=cfg.updates_per_step,
                          catch_up=cfg.catch_up, train_every=getattr(cfg, "train_every", 1), eval_every=eval_every,
                          eval_episodes=eval_episodes, seed=seed)
    kwargs = {"check_stop": check_stop} if check_stop is not None else {}
    return OnlineLoop(agent, env, replay, loop_cfg, eval_env=eval_env, metrics=metrics, **kwargs)
