"""The replay buffer of online agents (agents/replay.py): one row per observation, vectorised adds, next
observations across episode ends and ring wrap-around, seeded device-aware sampling, snapshot/restore."""

import numpy as np
import pytest
import torch

from control_pretrain.agents.replay import ReplayBuffer


def stream(n_episodes=3, length=5, obs_dim=3, action_dim=2, seed=0):
    """Steps of ``n_episodes`` episodes: (obs, action, reward, next_obs, terminal, timeout) each; observation j of an
    episode is e * 100 + j, so every next observation is known."""
    rng = np.random.default_rng(seed)
    steps = []
    for e in range(n_episodes):
        for j in range(length):
            obs, nxt = np.full(obs_dim, e * 100 + j, np.float32), np.full(obs_dim, e * 100 + j + 1, np.float32)
            steps.append((obs, rng.uniform(-1, 1, action_dim).astype(np.float32), float(rng.uniform()), nxt,
                          e == 1 and j == length - 1, e != 1 and j == length - 1))
    return steps


def row_by_row(capacity, steps, **kw):
    buf = ReplayBuffer(3, 2, capacity, **kw)
    for s in steps:
        buf.add_step(*s)
    return buf


def vectorised(capacity, steps, **kw):
    buf = ReplayBuffer(3, 2, capacity, **kw)
    obs, actions, rewards, nxt, terminal, timeout = (np.array(x) for x in zip(*steps, strict=True))
    ends = terminal | timeout
    buf.add(obs, actions, rewards, 1.0 - terminal, ends, final_obs=nxt[ends])
    return buf


def all_transitions(buf):
    """(obs, next_obs, not_done) of every sampleable row, via many seeded samples."""
    obs, _, _, nxt, not_done = buf.sample(4000)
    return {(o[0].item(), n[0].item(), d.item()) for o, n, d in zip(obs, nxt, not_done, strict=True)}


@pytest.mark.parametrize("capacity", [100, 13])  # 13 rows < 18 written: the ring wraps, mid-episode
def test_vectorised_add_equals_row_by_row(capacity):
    steps = stream()
    a, b = row_by_row(capacity, steps, seed=5), vectorised(capacity, steps, seed=5)
    for name in ("obs", "actions", "rewards", "not_dones", "has_next"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.pos, a.size, a.rows_written) == (b.pos, b.size, b.rows_written) == (18 % capacity, min(18, capacity), 18)
    for x, y in zip(a.sample(64), b.sample(64), strict=True):
        torch.testing.assert_close(x, y)


def test_each_observation_is_stored_once():
    buf = row_by_row(100, stream())
    assert buf.size == 3 * 5 + 3  # one row per step plus one final row per episode
    assert not hasattr(buf, "next_obs")


def test_next_obs_across_episode_ends():
    buf = row_by_row(100, stream())
    got = all_transitions(buf)
    expected = {(e * 100 + j, e * 100 + j + 1, 0.0 if (e == 1 and j == 4) else 1.0) for e in range(3) for j in range(5)}
    assert got == expected  # the final rows (observations 5, 105, 205) are never sampled as transitions


def test_wrap_around_keeps_only_whole_transitions():
    steps = stream(n_episodes=4)  # 24 rows in a ring of 10: rows of episodes 2 and 3 remain
    buf = row_by_row(10, steps)
    got = all_transitions(buf)
    # the last 10 rows: obs 202..205 of episode 2 (205 its final row), then 300..305 of episode 3
    assert got == {(202, 203, 1.0), (203, 204, 1.0), (204, 205, 1.0)} | {(300 + j, 301 + j, 1.0) for j in range(5)}
    # mid-episode: the newest step's successor is not written yet (and is the oldest row): never sampled
    buf.add_step(*stream(n_episodes=5)[20])  # obs 400 of episode 4, overwriting 202
    assert not any(o == 400.0 for o, _, _ in all_transitions(buf))


def test_unknown_final_observation_is_not_sampled():
    steps = stream()
    obs, actions, rewards, nxt, terminal, timeout = (np.array(x) for x in zip(*steps, strict=True))
    ends = terminal | timeout
    buf = ReplayBuffer(3, 2, 100)
    buf.add(obs, actions, rewards, 1.0 - terminal, ends, final_obs=nxt[ends][:1])  # the 2nd and 3rd are unknown
    got = all_transitions(buf)
    assert (4.0, 5.0, 1.0) in got and not any(o in (104.0, 204.0) for o, _, _ in got)
    assert buf.num_transitions == 15 - 2


def test_snapshot_restore_and_rollback_give_identical_samples():
    steps = stream()
    buf = row_by_row(100, steps[:10], seed=3)
    buf.sample(8)
    state = buf.state_dict()
    copy = ReplayBuffer(3, 2, 100, seed=99)
    copy.load_state_dict(state)
    for s in steps[10:]:
        buf.add_step(*s)
        copy.add_step(*s)
    for x, y in zip(buf.sample(32), copy.sample(32), strict=True):
        torch.testing.assert_close(x, y)

    # rollback forgets an episode cut short, RNG included
    cursor = buf.cursor()
    expected = [t.clone() for t in buf.sample(16)]
    buf.rollback(cursor)
    for s in stream(n_episodes=4)[15:18]:
        buf.add_step(*s)
    assert buf.rollback(cursor)
    for x, y in zip(buf.sample(16), expected, strict=True):
        torch.testing.assert_close(x, y)


def test_samples_live_on_the_buffer_device():
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        buf = row_by_row(100, stream(), device=device)
        batch = buf.sample(8)
        assert all(t.device.type == device for t in batch)
        assert [tuple(t.shape) for t in batch] == [(8, 3), (8, 2), (8, 1), (8, 3), (8, 1)]


def test_sampling_needs_a_complete_transition():
    buf = ReplayBuffer(3, 2, 10)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4)
    buf.add_step(*stream()[0])  # one step, its next observation not written yet
    with pytest.raises(ValueError, match="too few"):
        buf.sample(4)


@pytest.mark.parametrize("capacity", [100, 13])  # 13: the ring has wrapped mid-episode
def test_clips_stay_inside_one_episode_and_behind_the_write_head(capacity):
    steps = stream(n_episodes=4, length=6)
    buf = row_by_row(capacity, steps, seed=1)
    obs, actions = buf.sample_clips(2000, 3)
    assert obs.shape == (2000, 3, 3) and actions.shape == (2000, 3, 2)
    first = obs[:, :, 0]  # observation j of episode e is e * 100 + j
    assert ((first[:, 1:] - first[:, :-1]) == 1).all()  # consecutive steps
    assert (first // 100 == first[:, :1] // 100).all()  # one episode
    by_obs = {s[0][0].item(): s[1] for s in steps}
    for o, a in zip(first[:50].flatten(), actions[:50].flatten(0, 1)):
        np.testing.assert_array_equal(a.numpy(), by_obs[o.item()])  # each step keeps its own action
    starts = {c.item() for c in first[:, 0]}
    if capacity == 100:  # every start of a 3-step clip in a 6-step episode: j = 0..3
        assert starts == {e * 100 + j for e in range(4) for j in range(4)}
    with pytest.raises(ValueError, match="no 7-step clip"):
        buf.sample_clips(4, 7)  # longer than any episode


def test_frame_stacks_are_built_at_sample_time_within_each_episode():
    buf = ReplayBuffer((1, 2, 2), 2, 100, seed=0, obs_dtype=np.uint8, frame_stack=3)
    for e in range(3):  # observation j of episode e is a frame filled with e * 10 + j; 4 steps per episode
        for j in range(4):
            frame, nxt = np.full((1, 2, 2), e * 10 + j, np.uint8), np.full((1, 2, 2), e * 10 + j + 1, np.uint8)
            buf.add_step(frame, np.zeros(2, np.float32), 0.0, nxt, False, j == 3)
    obs, _, _, nxt, _ = buf.sample(500)
    assert obs.shape == (500, 3, 2, 2) and nxt.shape == (500, 3, 2, 2)
    seen = {}
    for o, n in zip(obs[:, :, 0, 0].tolist(), nxt[:, :, 0, 0].tolist()):
        seen[tuple(o)] = tuple(n)
    e = 10  # the second episode: its first frame repeats before its start; the final observation ends it
    assert seen == {**{(e * k, e * k, e * k): (e * k, e * k, e * k + 1) for k in range(3)},
                    **{(e * k, e * k, e * k + 1): (e * k, e * k + 1, e * k + 2) for k in range(3)},
                    **{(e * k, e * k + 1, e * k + 2): (e * k + 1, e * k + 2, e * k + 3) for k in range(3)},
                    **{(e * k + 1, e * k + 2, e * k + 3): (e * k + 2, e * k + 3, e * k + 4) for k in range(3)}}
    clips, _ = buf.sample_clips(50, 2)
    assert clips.shape == (50, 2, 3, 2, 2)
    assert (clips[:, 1, :2, 0, 0] == clips[:, 0, 1:, 0, 0]).all()  # consecutive stacks overlap by two frames
    with pytest.raises(ValueError, match="frames of shape"):
        ReplayBuffer(3, 2, 10, frame_stack=3)


def test_the_acting_frame_stack_equals_the_replays_sampled_stack():
    from control_pretrain.envs.frame_stack import FrameStack

    stacker, buf = FrameStack(3), ReplayBuffer((1, 2, 2), 2, 50, seed=0, obs_dtype=np.uint8, frame_stack=3)
    acted = {}
    for e in range(2):
        frames = [np.full((1, 2, 2), e * 10 + j, np.uint8) for j in range(6)]
        stack = stacker.reset(frames[0])
        for j in range(5):
            acted[int(frames[j][0, 0, 0])] = stack[:, 0, 0].tolist()  # what the agent saw before acting
            buf.add_step(frames[j], np.zeros(2, np.float32), 0.0, frames[j + 1], False, j == 4)
            stack = stacker.push(frames[j + 1])
    obs, *_ = buf.sample(400)
    sampled = {int(o[-1, 0, 0]): o[:, 0, 0].tolist() for o in obs}
    assert sampled == acted and len(acted) == 10
    with pytest.raises(RuntimeError, match="reset"):
        FrameStack(3).push(np.zeros((1, 2, 2), np.uint8))
