"""dm_control environments as the pipeline sees them: flat float32 observations, actions in [-1, 1],
action repeat, optional 84x84 RGB frames, physics state for reward relabelling.

Conventions follow the SMART data (smart.md §1.4): action repeat 4 over the suite's 1000-step time limit gives
250 agent steps per episode, one RGB frame channels-first, and the frame is rendered *before* the action is
applied, so ``frame[i]`` is what the agent saw when it chose ``action[i]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Rendering needs a headless GL backend chosen before dm_control is imported (platform.md §3); EGL ships in the
# base image, so it is the default unless the user already chose one.
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np

from ..errors import EnvSpecError

# The conventional camera per domain (DrQ/CURL convention, also used by SMART's dmc2gym: camera 0 except
# quadruped, whose camera 0 does not follow the body).
CAMERA_BY_DOMAIN = {"quadruped": 2}


def available_tasks() -> dict[str, list[str]]:
    from dm_control import suite

    tasks: dict[str, list[str]] = {}
    for domain, task in suite.ALL_TASKS:
        tasks.setdefault(domain, []).append(task)
    return tasks


def check_task(domain: str, task: str) -> None:
    tasks = available_tasks()
    if domain not in tasks:
        raise EnvSpecError(f"unknown dm_control domain '{domain}'. Known domains: {', '.join(sorted(tasks))}.")
    if task not in tasks[domain]:
        raise EnvSpecError(
            f"unknown task '{task}' for domain '{domain}'. Tasks of '{domain}': {', '.join(sorted(tasks[domain]))}."
        )


FRAME_SIZE = 84  # rendered frame height = width: SMART's data (smart.md §2.2) and the CNN encoder's input


@dataclass(frozen=True)
class RenderConfig:
    """How frames are rendered. ``fast`` turns shadows, reflections and MSAA off (about 10x faster on a CPU,
    platform.md §3), which changes the images: fast-rendered data is a different visual domain."""

    height: int = FRAME_SIZE
    width: int = FRAME_SIZE
    camera_id: int | None = None  # None: the conventional camera of the domain
    fast: bool = False


class DMCEnv:
    """One dm_control task with action repeat. ``reset()``/``step()`` return flat float32 observations.

    ``step`` returns ``(obs, reward, terminal, timeout)``: ``terminal`` is a true termination (discount 0, never
    in the standard suite), ``timeout`` is the end of the episode by time limit.
    """

    def __init__(
        self,
        domain: str,
        task: str,
        seed: int = 0,
        action_repeat: int = 4,
        render: RenderConfig | None = None,
    ) -> None:
        check_task(domain, task)
        from dm_control import suite

        if action_repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
        self.domain, self.task, self.seed, self.action_repeat = domain, task, seed, action_repeat
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        spec = self._env.action_spec()
        self._act_low = spec.minimum.astype(np.float64)
        self._act_high = spec.maximum.astype(np.float64)
        self.action_dim = int(spec.shape[0])
        obs_spec = self._env.observation_spec()
        self.obs_keys = list(obs_spec.keys())
        self.obs_dim = int(sum(int(np.prod(s.shape)) for s in obs_spec.values()))
        self.state_dim = int(self.physics.get_state().shape[0])
        self.render_config = render
        self._camera = None
        self._last_time_step = None

    @property
    def physics(self):
        return self._env.physics

    @property
    def camera_id(self) -> int:
        cfg = self.render_config or RenderConfig()
        return cfg.camera_id if cfg.camera_id is not None else CAMERA_BY_DOMAIN.get(self.domain, 0)

    def _flat_obs(self, observation) -> np.ndarray:
        return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in observation.values()])

    def reset(self) -> np.ndarray:
        self._last_time_step = self._env.reset()
        return self._flat_obs(self._last_time_step.observation)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        # Actions live in [-1, 1]; rescale to the true bounds (all suite tasks use [-1, 1] today, so this is
        # the identity there, but it keeps the contract for any bounded task).
        scaled = self._act_low + (action + 1.0) * 0.5 * (self._act_high - self._act_low)
        reward = 0.0
        for _ in range(self.action_repeat):
            ts = self._env.step(scaled)
            reward += ts.reward or 0.0
            if ts.last():
                break
        self._last_time_step = ts
        terminal = bool(ts.last() and ts.discount == 0.0)
        timeout = bool(ts.last() and not terminal)
        return self._flat_obs(ts.observation), float(reward), terminal, timeout

    def task_rng_state(self) -> dict:
        """The state of the task's RandomState, which draws every episode's initial state (a resumed run restores
        it to reset into the episodes the uninterrupted run would have had)."""
        return self._env.task.random.get_state(legacy=False)

    def set_task_rng_state(self, state: dict) -> None:
        self._env.task.random.set_state(state)

    def restore(self, physics_state: np.ndarray) -> np.ndarray:
        """Start an episode at a recorded ``physics.get_state()`` (goal reaching from dataset states) and return
        the observation the task reads from it."""
        if self._last_time_step is None or self._last_time_step.last():
            self.reset()  # a fresh step counter for the time limit
        with self.physics.reset_context():  # runs mj_forward, so derived quantities match the state
            self.physics.set_state(np.asarray(physics_state, dtype=np.float64))
        return self._flat_obs(self._env.task.get_observation(self.physics))

    def physics_state(self) -> np.ndarray:
        return self.physics.get_state().astype(np.float32)

    def render(self) -> np.ndarray:
        """The current frame as (3, H, W) uint8."""
        cfg = self.render_config or RenderConfig()
        if cfg.fast:
            frame = self._fast_camera(cfg).render()
        else:
            frame = self.physics.render(cfg.height, cfg.width, camera_id=self.camera_id)
        return np.ascontiguousarray(frame.transpose(2, 0, 1))

    def _fast_camera(self, cfg: RenderConfig):
        # One reused Camera with shadows, reflections and MSAA off (platform.md §3 "fast path").
        if self._camera is None:
            import mujoco
            from dm_control.mujoco import Camera

            self.physics.model.vis.quality.offsamples = 0
            cam = Camera(self.physics, cfg.height, cfg.width, camera_id=self.camera_id)
            cam.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            cam.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._camera = cam
        return self._camera

    def close(self) -> None:
        if self._camera is not None:
            self._camera._scene.free()
            self._camera = None
        self._env.close()


def make_env(domain: str, task: str, seed: int = 0, action_repeat: int = 4, pixels: bool = False,
             height: int = FRAME_SIZE, width: int = FRAME_SIZE, camera_id: int | None = None, fast_render: bool = False) -> DMCEnv:
    """The factory every part of the pipeline uses (collection, evaluation)."""
    render = RenderConfig(height, width, camera_id, fast_render) if pixels else None
    return DMCEnv(domain, task, seed=seed, action_repeat=action_repeat, render=render)
