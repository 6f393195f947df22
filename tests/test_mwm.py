"""MWM (issue 18, agents/mwm/): the RSSM's shapes and episode resets, KL balancing and λ-returns against hand-computed
values, the truncated normal's entropy, the update cadence on real cartpole renders (prefill, MAE pretraining, then
one MAE and one world-model + actor-critic update every 5th policy step), a pretrained frozen MAE, the run header,
and a T0 run through the real entry point (cartpole-swingup, 3,000 env steps) whose world-model feature loss falls
and which continues exactly after an interruption."""

import math
import os

import numpy as np
import pytest
import torch
from conftest import run_curve, run_metrics, run_script

from control_pretrain.agents.loop import begin_episode
from control_pretrain.agents.mwm.agent import MWMAgent
from control_pretrain.agents.mwm.behavior import TruncatedNormal, lambda_returns
from control_pretrain.agents.mwm.config import MWMConfig
from control_pretrain.agents.mwm.presets import PRESETS, preset_options, reductions, run_label
from control_pretrain.agents.mwm.rssm import RSSM, kl_balanced_loss
from control_pretrain.agents.online_run import AGENT_FILE, STATE_FILE, OnlineRun, train_online
from control_pretrain.agents.registry import make_loop

# T0 (mlr_mwm.md §C.5) made cheaper for the default test budget: cartpole-swingup at action repeat 8 (125 policy
# steps per episode instead of 500, so 3 episodes render 375 frames), the t0 preset, prefill = the first episode.
T0_OPTIONS = {"init_steps": 125}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: on the shared 2-core machine a second torch thread only adds contention (the cadence
    test took 100 s with 2 threads under load, 14 s with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def t0_run(folder, **kw) -> OnlineRun:
    args = {"agent": "mwm", "domain": "cartpole", "task": "swingup", "num_steps": 375, "obs_type": "pixels",
            "seed": 3, "output_dir": str(folder), "overrides": T0_OPTIONS, "eval_every": 375, "eval_episodes": 1,
            "preset": "t0", "action_repeat": 8}
    return OnlineRun(**{**args, **kw})


# ---- RSSM ------------------------------------------------------------------------------------------------------
def test_rssm_shapes_one_hot_latents_and_episode_resets():
    torch.manual_seed(0)
    rssm = RSSM(embed_dim=6, action_dim=2, deter=8, hidden=10, stoch=3, discrete=4)
    B, T = 2, 5
    embed, actions = torch.randn(B, T, 6), torch.rand(B, T, 2) * 2 - 1
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = is_first[0, 3] = True
    post, prior = rssm.observe(embed, actions, is_first)
    for state in (post, prior):
        assert state.deter.shape == (B, T, 8) and state.logits.shape == state.stoch.shape == (B, T, 3, 4)
        assert torch.equal(state.stoch.detach().sum(-1), torch.ones(B, T, 3))  # one-hot per variable
    assert rssm.feature(post).shape == (B, T, 3 * 4 + 8) and rssm.feature_dim == 20
    assert torch.equal(post.deter, prior.deter)  # the posterior adds the frame to the prior's GRU state
    # is_first resets state and action: sample 0 at t = 3 is what a fresh sequence starting there gives
    fresh, _ = rssm.observe(embed[:1, 3:], actions[:1, 3:], is_first[:1, 3:])
    torch.testing.assert_close(post.deter[0, 3], fresh.deter[0, 0])  # (later steps depend on sampled latents)
    torch.testing.assert_close(post.logits[0, 3], fresh.logits[0, 0])
    assert not torch.allclose(post.logits[1, 3], rssm.observe(embed[1:, 3:], actions[1:, 3:], is_first[:1, 3:])[0]
                              .logits[0, 0])  # sample 1 was not reset at t = 3
    # straight-through: the one-hot sample carries the probabilities' gradient
    (post.stoch * torch.arange(4.0)).sum().backward()  # d/d(stoch) = class index
    assert rssm.obs_out[-1].weight.grad.abs().sum() > 0
    start = post.map(lambda x: x.detach().reshape(B * T, *x.shape[2:]))
    feats, acts = rssm.imagine(lambda f: torch.tanh(f[:, :2]), start, horizon=4)
    assert feats.shape == (5, B * T, 20) and acts.shape == (4, B * T, 2)
    torch.testing.assert_close(feats[0], rssm.feature(start))


def test_kl_balancing_against_a_hand_computed_example():
    """One categorical with 2 classes: post (1/2, 1/2), prior (3/4, 1/4). KL = 1/2 ln(4/3); the prior gets 0.8 of
    its gradient q - p, the posterior 0.2 of p_j (ln p_j/q_j - KL)."""
    post = torch.zeros(1, 1, 2, requires_grad=True)  # (B, S, C)
    prior = torch.tensor([[[math.log(3.0), 0.0]]], requires_grad=True)
    loss, value = kl_balanced_loss(post, prior, balance=0.8, scale=1.0, min_loss=0.01)
    kl = 0.5 * math.log(4 / 3)
    assert value.item() == pytest.approx(kl, rel=1e-6) and loss.item() == pytest.approx(kl, rel=1e-6)
    loss.backward()
    torch.testing.assert_close(prior.grad, 0.8 * torch.tensor([[[0.75 - 0.5, 0.25 - 0.5]]]))
    g = 0.5 * (math.log(2) - kl)  # p_j (ln(p_j / q_j) - KL) for the second class; the first is its negative
    torch.testing.assert_close(post.grad, 0.2 * torch.tensor([[[-g, g]]]))
    # scaled, then clipped to [min_loss, 100]: below min_loss (free nats) no gradient reaches either side
    post.grad = prior.grad = None
    loss, _ = kl_balanced_loss(post, prior, balance=0.8, scale=2.0, min_loss=0.5)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert post.grad.abs().sum() == 0 and prior.grad.abs().sum() == 0
    assert kl_balanced_loss(post, prior, scale=1000.0)[0].item() == pytest.approx(100.0)


def test_lambda_returns_against_a_hand_computed_example():
    """H = 2, r = (1, 2), v = (10, 20, 30), γ = λ = 0.5: R_2 = 30, R_1 = 2 + 0.5 (0.5·30 + 0.5·30) = 17,
    R_0 = 1 + 0.5 (0.5·20 + 0.5·17) = 10.25."""
    rewards, values = torch.tensor([[1.0], [2.0]]), torch.tensor([[10.0], [20.0], [30.0]])
    torch.testing.assert_close(lambda_returns(rewards, values, 0.5, 0.5), torch.tensor([[10.25], [17.0]]))
    torch.testing.assert_close(lambda_returns(rewards, values, 0.5, 1.0), torch.tensor([[1 + 0.5 * (2 + 15)], [17.0]]))
    torch.testing.assert_close(lambda_returns(rewards, values, 0.5, 0.0), torch.tensor([[11.0], [17.0]]))  # TD(0)


def test_truncated_normal_samples_inside_the_bounds_with_its_closed_form_entropy():
    torch.manual_seed(0)
    mean, std = torch.tensor([[0.9, -0.3, 0.0]]), torch.tensor([[0.1, 1.0, 2.1]])
    dist = TruncatedNormal(mean.requires_grad_(), std)
    x = torch.linspace(-1, 1, 200001)[:, None]  # numerical entropy -∫ p log p on [-1, 1]
    density = torch.exp(-0.5 * ((x - mean.detach()) / std).square()) / (std * math.sqrt(2 * math.pi) * dist.mass.detach())
    numeric = -torch.special.xlogy(density, density).sum(0) * (2 / 200000)
    torch.testing.assert_close(dist.entropy().detach(), numeric.sum()[None], rtol=1e-3, atol=1e-3)
    samples = TruncatedNormal(mean.expand(20000, 3), std.expand(20000, 3)).rsample()
    assert samples.abs().max() <= 1
    torch.testing.assert_close(samples.mean(0), (x * density).sum(0) * (2 / 200000), rtol=0, atol=0.02)
    samples[:, 1].sum().backward()  # pathwise gradient reaches the mean
    assert mean.grad[0, 1] > 0


# ---- replay clips for the world model ----------------------------------------------------------------------------
@pytest.mark.parametrize("capacity", [200, 37])  # 37 < 3 x 13 rows written: the ring cuts the oldest episode
def test_sequences_stay_inside_one_episode_with_rewards_and_first_flags(capacity):
    from control_pretrain.agents.replay import ReplayBuffer

    buf = ReplayBuffer(1, 1, capacity, seed=0)
    for e in range(3):  # episodes of 12 steps; observation = 100 e + j, reward = its negative
        for j in range(12):
            obs = np.array([100.0 * e + j], np.float32)
            buf.add_step(obs, np.array([j / 12], np.float32), -(100.0 * e + j), obs + 1, False, j == 11)
    state = buf.rng.bit_generator.state
    seq = buf.sample_sequences(300, 5)
    buf.rng.bit_generator.state = state
    clips, _ = buf.sample_clips(300, 5)
    torch.testing.assert_close(seq["obs"], clips)  # the same rows as MLR's clips
    obs = seq["obs"][..., 0]  # (B, K)
    assert seq["obs"].shape == (300, 5, 1) and seq["actions"].shape == (300, 5, 1) and seq["rewards"].shape == (300, 5)
    assert torch.equal(obs[:, 1:] - obs[:, :-1], torch.ones(300, 4))  # consecutive steps of one episode
    torch.testing.assert_close(seq["rewards"], -obs)
    oldest = buf.obs[buf.pos if buf.size == capacity else 0, 0]
    assert torch.equal(seq["is_first"], (obs % 100 == 0) | (obs == oldest))
    assert seq["is_first"][:, 1:].sum() == 0 and seq["is_first"][:, 0].any()


# ---- cadence, presets, pretrained MAE ------------------------------------------------------------------------
def pixel_env(seed: int, action_repeat: int = 8):
    from control_pretrain.envs.dmc import make_env
    from control_pretrain.envs.pixel_env import PixelEnv

    return PixelEnv(make_env("cartpole", "swingup", seed=seed, action_repeat=action_repeat, pixels=True, height=64,
                             width=64), frame_stack=1)


def test_updates_follow_the_paper_cadence_on_real_renders():
    """Prefill 20 random steps; at step 20 the 3 MAE-pretraining updates, then a round (MAE, world model +
    actor-critic); then a round at steps 25, 30, ..., 125 (the episode's last) and nothing in between. The agent acts from step 20 on, and
    its recurrent state is reset when an episode starts."""
    env = pixel_env(0)
    options = {**PRESETS["t0"], "init_steps": 20, "mae_pretrain": 3}
    loop = make_loop("mwm", env, options, num_steps=125, seed=0, obs_type="pixels")
    agent, calls = loop.agent, []

    def spy(name, label):
        method = getattr(agent, name)
        setattr(agent, name, lambda *a, **k: (calls.append((loop.step, label)), method(*a, **k))[1])

    spy("update_mae", "mae")
    spy("update_world_model_and_behavior", "wm+ac")
    spy("act", "act")
    spy("begin_episode", "begin")
    loop.run()
    env.close()
    assert loop.step == 125 and calls[0] == (0, "begin")
    acts = [step for step, label in calls if label == "act"]
    assert acts == list(range(20, 125))  # the loop's random actions before, the agent's after
    updates = [(step, label) for step, label in calls if label in ("mae", "wm+ac")]
    assert updates[:5] == [(20, "mae")] * 4 + [(20, "wm+ac")]  # 3 pretraining + 1 round update, then the world model
    rounds = updates[5:]
    assert rounds == [(s, label) for s in range(25, 130, 5) for label in ("mae", "wm+ac")]
    assert agent.num_updates == 22 and agent.mae_updates == 25
    assert agent._state is not None
    begin_episode(agent)
    assert agent._state is None and agent._action is None


def test_presets_and_the_header_name_every_reduction():
    paper = MWMConfig.from_dict(preset_options("walker", "paper"))
    assert (paper.mae_batch, paper.batch_size, paper.seq_len, paper.deter, paper.stoch, paper.discrete) == \
        (1024, 16, 50, 1024, 32, 32)
    assert (paper.kl_scale, paper.kl_min, paper.entropy_scale, paper.init_steps, paper.mae_pretrain) == \
        (1.0, 0.01, 1e-4, 5000, 5000)  # after MWM's August 2022 config fixes
    assert run_label(reductions("walker", paper, 2, 502_000, 10_000, 5)) == "MWM paper configuration (dmc_vision)"
    found = reductions("walker", MWMConfig.from_dict(preset_options("walker", "small")), 2, 10_000, 10_000, 5)
    assert found == ["mae_batch 128 (paper 1024)", "batch_size 8 (paper 16)", "seq_len 32 (paper 50)",
                     "10000 policy steps (paper 502000)"]
    tiny = reductions("cartpole", MWMConfig.from_dict(preset_options("cartpole", "tiny")), 8, 502_000, 10_000, 5)
    assert "deter 256 (paper 1024)" in tiny and "action_repeat 8 (paper 2)" in tiny
    assert run_label(tiny).startswith("reduced run, not the paper's MWM setting")
    run = OnlineRun(agent="mwm", domain="cartpole", task="swingup", num_steps=10, obs_type="pixels")
    assert run.repeat == 2  # MWM's action repeat on every domain (pixel SAC's cartpole: 8)
    with pytest.raises(ValueError, match="freeze_mae keeps a pretrained MAE fixed"):
        MWMConfig.from_dict({"freeze_mae": True})


def test_a_pretrained_frozen_mae_is_loaded_and_never_updated(tmp_path):
    from control_pretrain.models.mae import ConvMaskedAutoencoder, MAEConfig

    torch.manual_seed(1)
    mae = ConvMaskedAutoencoder(MAEConfig(embed_dim=16, decoder_dim=16, encoder_depth=1, decoder_depth=1, n_head=2))
    torch.save(mae.state_dict(), tmp_path / "mae.pt")
    cfg = MWMConfig.from_dict({**PRESETS["t0"], "mae_from": str(tmp_path / "mae.pt"), "freeze_mae": True,
                               "batch_size": 2, "seq_len": 4})
    agent = MWMAgent((3, 64, 64), 1, cfg)
    assert agent.mae.embed_dim == 16  # the checkpoint's size, not the preset's (32)
    from control_pretrain.agents.replay import ReplayBuffer

    rng = np.random.default_rng(0)
    buf = ReplayBuffer((3, 64, 64), 1, 40, obs_dtype=np.uint8)
    buf.add(rng.integers(0, 256, (30, 3, 64, 64), dtype=np.uint8), rng.uniform(-1, 1, (30, 1)), rng.uniform(0, 1, 30),
            np.ones(30), np.zeros(30, bool))
    info = agent.train_step(buf)
    assert agent.mae_updates == 0 and "mae_loss" not in info and agent.num_updates == 1
    for k, v in mae.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(agent.mae.state_dict()[k], v), k
    # --encoder_from / --freeze_encoder of dmc_online.py are these options, and the header names the MAE's size
    from control_pretrain.agents.online_run import header

    run = OnlineRun(agent="mwm", domain="cartpole", task="swingup", num_steps=10, obs_type="pixels", preset="t0",
                    encoder_from=str(tmp_path / "mae.pt"), freeze_encoder=True)
    assert run.options()["mae_from"] == str(tmp_path / "mae.pt") and run.options()["freeze_mae"] is True
    assert f"MAE from {tmp_path / 'mae.pt'} (frozen): width 16, 1 + 1 blocks" in header(run, agent)


# ---- T0 run through the entry point ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def t0(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mwm") / "straight"
    train_online(t0_run(folder))
    return folder


def test_t0_run_learns_its_world_model_and_saves_its_agent(t0):
    episodes = [m for m in run_metrics(t0) if "train/episode_return" in m]
    assert [m["step"] for m in episodes] == [125, 250, 375]
    keys = ("train/mae_loss", "train/wm_feature_loss", "train/wm_reward_loss", "train/wm_kl", "train/actor_loss",
            "train/critic_loss", "train/imag_return")
    assert all(np.isfinite(m[k]) for m in episodes for k in keys)
    first, _, last = episodes
    # episode 1: the MAE pretraining and the first round; episodes 2 and 3: means of 25 rounds each
    assert first["train/mae_pretrain_loss_last"] < first["train/mae_pretrain_loss_first"]
    assert last["train/mae_loss"] < first["train/mae_pretrain_loss_first"]
    assert last["train/wm_feature_loss"] < 0.6 * first["train/wm_feature_loss"]
    evals = [m for m in run_metrics(t0) if "eval/return_mean" in m]
    assert [m["step"] for m in evals] == [375] and np.isfinite(evals[0]["eval/return_mean"])
    agent, saved = MWMAgent.load(str(t0 / AGENT_FILE))
    assert saved["steps"] == 375 and agent.num_updates == 51 and agent.mae_updates == 20 + 51  # rounds at 125..375
    assert agent.cfg.deter == 64 and agent.cfg.init_steps == 125
    assert not os.path.exists(t0 / STATE_FILE)


def test_t0_resumed_after_an_interruption_is_the_same_run(t0, tmp_path):
    """The same seed gives the same run, and an interruption after the second episode continues into it: the
    snapshot holds the four optimisers, the MAE's warm-up, the slow critic and the replay."""
    folder, episodes = tmp_path / "resumed", []

    def stop(steps):
        episodes.append(steps)
        if len(episodes) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_online(t0_run(folder), stop)
    saved = torch.load(folder / STATE_FILE, weights_only=True)
    assert tuple(saved["replay"]["obs"].shape[1:]) == (3, 64, 64) and saved["step"] == 250
    assert set(saved["agent"]["optimizers"]) == {"mae", "mae_schedule", "world_model", "actor", "critic"}
    train_online(t0_run(folder, resume=True))
    assert run_curve(folder) == run_curve(t0)
    a, b = (torch.load(f / AGENT_FILE, weights_only=True) for f in (t0, folder))
    for net in ("mae", "world_model", "actor", "critic", "slow_critic"):
        for k in a[net]:
            if torch.is_tensor(a[net][k]):
                torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=0)


@pytest.mark.slow
def test_t0_at_the_spec_scale(tmp_path):
    """§C.5's T0 as specified: 2,000 env steps at action repeat 2 (1,000 policy steps), prefill 500, 20 MAE
    pretraining updates, then 101 rounds (85 s on the shared CPU)."""
    folder = tmp_path / "spec"
    train_online(t0_run(folder, num_steps=1000, action_repeat=None, overrides={}, eval_every=1000))
    first, second = [m for m in run_metrics(folder) if "train/episode_return" in m]
    assert second["train/wm_feature_loss"] < 0.6 * first["train/wm_feature_loss"]
    assert second["train/mae_loss"] < first["train/mae_pretrain_loss_first"]
    assert MWMAgent.load(str(folder / AGENT_FILE))[0].num_updates == 101


def test_cli_refuses_impossible_combinations_with_exit_2(tmp_path):
    base = ["--domain", "cartpole", "--task", "swingup", "--num_steps", "10", "--output_dir", str(tmp_path / "r"),
            "--agent", "mwm"]
    result = run_script("dmc_online.py", *base, "--obs_type", "state")
    assert result.returncode == 2 and "mwm learns from pixels, not --obs_type state" in result.stderr
    result = run_script("dmc_online.py", *base, "--obs_type", "pixels", "--preset", "smoke")
    assert result.returncode == 2 and "unknown MWM preset 'smoke'" in result.stderr
    assert "Traceback" not in result.stderr
