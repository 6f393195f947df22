"""A dm_control task seen through rendered frame stacks (pixel SAC / MLR, mlr_mwm.md §A.2): ``reset``/``step``
return (frame_stack * 3, H, W) uint8 stacks of renders taken after each (repeated) action, the reference's
dmc2gym + frame-stack view (100 px renders, stack 3). Rewards, ends and the task RNG are the wrapped env's."""

from __future__ import annotations

import numpy as np

from .dmc import DMCEnv
from .frame_stack import FrameStack


class PixelEnv:
    def __init__(self, env: DMCEnv, frame_stack: int = 3) -> None:
        if env.render_config is None:
            raise ValueError("PixelEnv needs an environment made with pixels=True")
        self.env, self.stack = env, FrameStack(frame_stack)
        cfg = env.render_config
        self.obs_shape = (3 * frame_stack, cfg.height, cfg.width)
        self.action_dim, self.action_repeat = env.action_dim, env.action_repeat

    def reset(self) -> np.ndarray:
        self.env.reset()
        return self.stack.reset(self.env.render())

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        _, reward, terminal, timeout = self.env.step(action)
        return self.stack.push(self.env.render()), reward, terminal, timeout

    def task_rng_state(self) -> dict:
        return self.env.task_rng_state()

    def set_task_rng_state(self, state: dict) -> None:
        self.env.set_task_rng_state(state)

    def close(self) -> None:
        self.env.close()
