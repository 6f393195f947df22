"""The dm_control factory: seeding, action repeat, bounds, rewards, rendering, and clear errors."""

import numpy as np
import pytest

from control_pretrain.envs.dmc import EnvSpecError, make_env


def rollout(env, actions):
    obs = [env.reset()]
    rewards = []
    for a in actions:
        o, r, _, _ = env.step(a)
        obs.append(o)
        rewards.append(r)
    return np.stack(obs), np.array(rewards)


def test_same_seed_same_trajectory_different_seed_differs():
    actions = np.random.default_rng(0).uniform(-1, 1, (20, 6))
    a_obs, a_rew = rollout(make_env("cheetah", "run", seed=3), actions)
    b_obs, b_rew = rollout(make_env("cheetah", "run", seed=3), actions)
    c_obs, _ = rollout(make_env("cheetah", "run", seed=4), actions)
    np.testing.assert_array_equal(a_obs, b_obs)
    np.testing.assert_array_equal(a_rew, b_rew)
    assert not np.array_equal(a_obs[0], c_obs[0])


@pytest.mark.parametrize("action_repeat,length", [(4, 250), (2, 500)])
def test_episode_length_and_reward_bounds(action_repeat, length):
    env = make_env("cartpole", "swingup", seed=0, action_repeat=action_repeat)
    env.reset()
    rng = np.random.default_rng(1)
    steps, rewards = 0, []
    while True:
        _, r, terminal, timeout = env.step(rng.uniform(-1, 1, env.action_dim))
        steps += 1
        rewards.append(r)
        assert not terminal  # DMC episodes end by time limit only
        if timeout:
            break
    assert steps == length
    assert 0.0 <= min(rewards) and max(rewards) <= action_repeat
    assert max(rewards) > 0  # rewards really are summed over the repeated frames, not all zero


def test_out_of_bound_actions_are_clipped():
    a, b = make_env("pendulum", "swingup", seed=0), make_env("pendulum", "swingup", seed=0)
    a.reset(), b.reset()
    np.testing.assert_array_equal(a.step(np.array([5.0]))[0], b.step(np.array([1.0]))[0])
    # MuJoCo clamps pendulum's ctrllimited actuator itself, so the observations alone would not notice a missing
    # clip: the control written to the physics must already be in bounds
    a.step(np.array([5.0]))
    np.testing.assert_array_equal(a.physics.data.ctrl, [1.0])
    a.step(np.array([-7.0]))
    np.testing.assert_array_equal(a.physics.data.ctrl, [-1.0])


def test_observation_layout():
    env = make_env("walker", "walk")
    assert env.obs_keys == ["orientations", "height", "velocity"]
    assert env.obs_dim == 24 and env.reset().shape == (24,) and env.reset().dtype == np.float32
    assert env.action_dim == 6 and env.physics_state().shape == (env.state_dim,)


@pytest.mark.parametrize("fast", [False, True])
def test_pixels(fast):
    env = make_env("cheetah", "run", seed=0, pixels=True, fast_render=fast)
    env.reset()
    frame = env.render()
    assert frame.shape == (3, 84, 84) and frame.dtype == np.uint8
    assert frame.std() > 5  # a real image, not a blank buffer
    env.step(np.ones(6))
    assert not np.array_equal(frame, env.render())
    env.close()


def test_quadruped_uses_its_conventional_camera():
    assert make_env("quadruped", "walk", pixels=True).camera_id == 2
    assert make_env("walker", "walk", pixels=True).camera_id == 0


@pytest.mark.parametrize("domain,task,needle", [("cheeta", "run", "Known domains"), ("cheetah", "fly", "Tasks of")])
def test_unknown_domain_or_task(domain, task, needle):
    with pytest.raises(EnvSpecError, match=needle):
        make_env(domain, task)


def test_task_rng_state_round_trip_replays_the_next_initial_states():
    env = make_env("cartpole", "swingup", seed=0)
    env.reset()
    state = env.task_rng_state()
    first = [env.reset() for _ in range(2)]
    env.set_task_rng_state(state)
    np.testing.assert_array_equal(first, [env.reset() for _ in range(2)])
