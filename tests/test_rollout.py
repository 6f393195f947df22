"""Rollout evaluation in real dm_control with a tiny real model: the rollout context equals the training context,
batching changes nothing, one reset per episode, RTG bookkeeping, slots, video; and the return statistics."""

import numpy as np
import pytest
import torch

from control_pretrain.data.slots import SlotLayout
from control_pretrain.envs.dmc import DMCEnv, make_env
from control_pretrain.eval.policies import BehaviorCloningPolicy, Policy, ReturnConditionedPolicy
from control_pretrain.eval.rollout import evaluate
from control_pretrain.eval.stats import TARGET_RETURNS, bootstrap_ci, iqm, summarize, target_return_for
from control_pretrain.models.control_transformer import ControlTransformer, ControlTransformerConfig
from control_pretrain.objectives import BehaviorCloningObjective, ReturnConditionedObjective

K, C = 8, 32
OBS_DIM, ACTION_DIM = 17, 6  # cheetah


def tiny_policy(kind: str = "bc", obs_type: str = "state", obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM):
    torch.manual_seed(0)
    model = ControlTransformer(ControlTransformerConfig(
        obs_type=obs_type, obs_dim=obs_dim, action_dim=action_dim, n_layer=2, n_head=2, n_embd=C, context_length=K,
        max_timestep=256, state_hidden=32))  # fmt: skip
    objective = (BehaviorCloningObjective if kind == "bc" else ReturnConditionedObjective)(C, action_dim)
    with torch.no_grad():  # actions of std ~0.5 (not ~0.02 as at init), so the episodes really move
        objective.head.weight.mul_(0.5 / (0.02 * objective.head.in_features**0.5))
    return model.eval(), objective.eval()


def as_policy(model, objective, target_return: float | None = None, **layouts):
    if target_return is None:
        return BehaviorCloningPolicy(model, objective, **layouts)
    return ReturnConditionedPolicy(model, objective, target_return, **layouts)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run several times faster on one thread than on contended cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cheetah(seed: int) -> DMCEnv:
    return make_env("cheetah", "run", seed=seed)


def training_window(ep: dict, start: int, arbitrary_last_action: bool, rng) -> dict:
    """A training-style batch of one full K-step window [start, start+K) of a recorded episode: K observations,
    K actions, per-step timesteps and returns-to-go."""
    w = slice(start, start + K)
    actions = ep["actions"][w].copy()
    if arbitrary_last_action:  # the action at the window's last step is hidden by the causal mask
        actions[-1] = rng.uniform(-1, 1, actions.shape[-1])
    obs_key = "pixels" if "pixels" in ep else "observations"
    batch = {obs_key: torch.as_tensor(ep[obs_key][w])[None], "actions": torch.as_tensor(actions)[None],
             "timesteps": torch.as_tensor(ep["timesteps"][w])[None]}
    if "rtg" in ep:
        batch["rtg"] = torch.as_tensor(ep["rtg"][w], dtype=torch.float32)[None]
    return batch


@pytest.mark.parametrize("kind", ["bc", "rtg"])
def test_rollout_context_equals_training_context(kind):
    model, objective = tiny_policy(kind)
    target = 850.0 if kind == "rtg" else None
    res = evaluate(as_policy(model, objective, target), cheetah, seeds=[0, 1], max_steps=40, keep_history=True)
    rng = np.random.default_rng(0)
    for ep in res.histories:
        assert len(ep["actions"]) == 40 and np.abs(ep["actions"]).max() > 0.1
        np.testing.assert_array_equal(ep["timesteps"], np.arange(40))
        for t in [0, 1, 3, K - 1, K, K + 1, 20, 39]:
            # t < K: the window [0, K) read at position t (later steps are hidden by the causal mask);
            # t >= K: the window [t-K+1, t] read at its last observation.
            start, pos = (0, t) if t < K else (t - K + 1, K - 1)
            batch = training_window(ep, start, arbitrary_last_action=t >= K, rng=rng)
            with torch.no_grad():
                pred = objective.predict_actions(model, batch)[0, pos].clamp(-1, 1).numpy()
            np.testing.assert_allclose(ep["actions"][t], pred, atol=1e-5, err_msg=f"step {t}")
        # The test has power: the reference's context after K steps (K actions a_{t-K..t-1}, each one slot late)
        # gives another action.
        t = 20
        buggy = training_window(ep, t - K + 1, False, rng)
        buggy["actions"] = torch.as_tensor(ep["actions"][t - K : t])[None]
        with torch.no_grad():
            pred = objective.predict_actions(model, buggy)[0, -1].clamp(-1, 1).numpy()
        assert np.abs(pred - ep["actions"][t]).max() > 1e-3


def test_batched_equals_one_at_a_time():
    """Whole episodes in float64 (a float32 batch of 3 and of 1 round differently, ~2e-7 per action, and the
    chaotic cheetah dynamics amplify that to ~3% of the return after 250 steps); 30 steps in float32."""
    model, objective = tiny_policy("rtg")
    model, objective = model.double(), objective.double()

    def f64(batch):
        return {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}

    class Float64Policy(ReturnConditionedPolicy):  # a policy class of its own, as later methods will add
        def __call__(self, batch):
            return super().__call__(f64(batch))

        def encode(self, batch):
            return super().encode(f64(batch))

        def act(self, batch):
            return super().act(f64(batch))

    policy64 = Float64Policy(model, objective, 850.0)
    seeds = [3, 4, 5]
    batched = evaluate(policy64, cheetah, seeds)
    single = [evaluate(policy64, cheetah, [s]) for s in seeds]
    np.testing.assert_array_equal(batched.lengths, [250, 250, 250])
    np.testing.assert_allclose(batched.returns, [r.returns[0] for r in single], rtol=1e-9)
    assert batched.seeds == seeds and batched.steps_per_sec > 0
    assert len(set(np.round(batched.returns, 3))) == 3  # different seeds, different episodes

    policy = as_policy(*tiny_policy("bc"))
    batched = evaluate(policy, cheetah, seeds, max_steps=30)
    single = [evaluate(policy, cheetah, [s], max_steps=30).returns[0] for s in seeds]
    np.testing.assert_allclose(batched.returns, single, rtol=1e-5)


class CountingEnv(DMCEnv):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resets = 0

    def reset(self):
        self.resets += 1
        return super().reset()


def test_one_reset_per_episode_seeded_initial_states_and_rtg():
    model, objective = tiny_policy("rtg")
    envs = []

    def make(seed):
        envs.append(CountingEnv("cheetah", "run", seed=seed))
        return envs[-1]

    seeds = [0, 1, 2, 0]
    res = evaluate(as_policy(model, objective, 500.0), make, seeds, max_steps=12, keep_history=True)
    assert [e.seed for e in envs] == seeds and [e.resets for e in envs] == [1, 1, 1, 1]
    first = [ep["observations"][0] for ep in res.histories]
    for s, o in zip(seeds, first):
        np.testing.assert_array_equal(o, make_env("cheetah", "run", seed=s).reset())  # the seed's own state
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    np.testing.assert_array_equal(first[0], first[3])
    # same seed, same episode, up to float32 rounding: batch rows need not be bitwise equal (GEMM blocking, the
    # attention-bias path of relative positions), and 12 steps of physics amplify 1e-7 differences a little
    np.testing.assert_allclose(res.returns[0], res.returns[3], rtol=1e-5)
    for ep, ret in zip(res.histories, res.returns):
        assert ep["rtg"][0] == 500.0
        np.testing.assert_allclose(ep["rtg"][1:], ep["rtg"][:-1] - ep["rewards"][:-1])
        np.testing.assert_allclose(ep["rewards"].sum(), ret)
        assert ep["rewards"].max() > 0
    np.testing.assert_array_equal(res.lengths, [12] * 4)


def test_slots_and_video():
    # cheetah's observation at [5, 22) of 26 values, its action at [2, 8) of 9 (other domains around it).
    obs_layout = SlotLayout.from_sizes([("walker", 5), ("cheetah", OBS_DIM), ("hopper", 4)])
    action_layout = SlotLayout.from_sizes([("walker", 2), ("cheetah", ACTION_DIM), ("hopper", 1)])
    model, objective = tiny_policy("bc", obs_dim=obs_layout.size, action_dim=action_layout.size)
    res = evaluate(as_policy(model, objective, obs_layout=obs_layout, action_layout=action_layout), cheetah, [7],
                   max_steps=5, record_video=True, keep_history=True)
    ep = res.histories[0]
    assert ep["observations"].shape == (5, 26) and ep["actions"].shape == (5, 9)
    np.testing.assert_array_equal(ep["observations"][0, 5:22], make_env("cheetah", "run", seed=7).reset())
    assert not ep["observations"][:, :5].any() and not ep["observations"][:, 22:].any()
    assert not ep["actions"][:, :2].any() and not ep["actions"][:, 8:].any() and ep["actions"][:, 2:8].any()
    assert res.frames.shape == (5, 3, 84, 84) and res.frames.dtype == np.uint8 and res.frames.std() > 0
    with pytest.raises(ValueError, match="slot"):  # cheetah's slot is 5 wide, its observation 17
        evaluate(as_policy(model, objective, obs_layout=SlotLayout.from_sizes([("cheetah", 5), ("walker", 21)]),
                           action_layout=action_layout), cheetah, [7], max_steps=1)
    with pytest.raises(ValueError, match="slot"):  # no slot for cheetah at all
        evaluate(as_policy(model, objective, obs_layout=SlotLayout.single("walker", 26),
                           action_layout=action_layout), cheetah, [7], max_steps=1)


def test_pixel_rollout_context_equals_training_context():
    """The rollout encodes each frame once (incremental); compared per step on the episode's own history, since
    whole episodes drift apart from the CNN's batch-size-dependent round-off amplified by the dynamics."""
    model, objective = tiny_policy("bc", obs_type="pixels")
    res = evaluate(as_policy(model, objective), lambda s: make_env("cheetah", "run", s, pixels=True,
                   fast_render=True), [0, 1], max_steps=K + 3, keep_history=True, record_video=True)  # fmt: skip
    ep, rng = res.histories[0], np.random.default_rng(0)
    assert ep["pixels"].dtype == np.uint8 and ep["pixels"].shape == (K + 3, 3, 84, 84)
    np.testing.assert_array_equal(res.frames, ep["pixels"])
    for t in [2, K + 2]:
        start, pos = (0, t) if t < K else (t - K + 1, K - 1)
        with torch.no_grad():
            pred = objective.predict_actions(model, training_window(ep, start, t >= K, rng))[0, pos]
        np.testing.assert_allclose(ep["actions"][t], pred.clamp(-1, 1).numpy(), atol=1e-5)


def test_policy_must_be_in_eval_mode():
    model, objective = tiny_policy()
    with pytest.raises(RuntimeError, match="eval"):
        evaluate(as_policy(model.train(), objective), cheetah, [0], max_steps=1)
    with pytest.raises(RuntimeError, match="eval"):
        evaluate(as_policy(model.eval(), objective.train(), 850.0), cheetah, [0], max_steps=1)


@pytest.mark.parametrize("kind", ["bc", "rtg"])
def test_policy_objects_tell_the_engine_what_it_needs_and_predict_as_the_objective(kind):
    model, objective = tiny_policy(kind)
    policy = as_policy(model, objective, 850.0 if kind == "rtg" else None)
    assert isinstance(policy, Policy)
    assert (policy.context_length, policy.obs_type, policy.device) == (K, "state", torch.device("cpu"))
    assert policy.target_return == (850.0 if kind == "rtg" else None)
    torch.manual_seed(1)
    batch = {"observations": torch.randn(3, 5, OBS_DIM), "actions": torch.randn(3, 4, ACTION_DIM),
             "timesteps": torch.arange(5).expand(3, 5), "rtg": torch.rand(3, 5) * 800}
    with torch.no_grad():
        expected = objective.predict_actions(model, batch)  # (3, 5, A): what make_policy returned before
        np.testing.assert_array_equal(policy(batch).numpy(), expected.numpy())
    assert expected.shape == (3, 5, ACTION_DIM) and expected.abs().max() > 0.1


# ---- statistics --------------------------------------------------------------------------------------------------
def test_mean_std_iqm_on_fixed_arrays():
    x = [10.0, 1.0, 7.0, 3.0, 100.0, 5.0, 2.0, 8.0]  # sorted: 1 2 | 3 5 7 8 | 10 100
    s = summarize(x)
    assert s["num_episodes"] == 8 and s["returns"] == x
    assert s["mean"] == pytest.approx(136 / 8)
    assert s["std"] == pytest.approx(np.sqrt(sum((v - 17.0) ** 2 for v in x) / 8))
    assert s["iqm"] == pytest.approx((3 + 5 + 7 + 8) / 4)
    # n not divisible by 4: floor(n/4) values dropped at each end, as scipy.stats.trim_mean(x, 0.25) / rliable.
    assert iqm([4.0, 1.0, 3.0, 2.0, 5.0]) == pytest.approx((2 + 3 + 4) / 3)  # n=5: drop 1 each side
    assert iqm(list(range(10))) == pytest.approx(np.mean(range(2, 8)))  # n=10: drop 2 each side
    assert iqm([3.0]) == 3.0


def test_iqm_matches_scipy_trim_mean():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for n in [1, 2, 3, 5, 7, 10, 50, 51]:
        x = rng.normal(size=n)
        assert iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))


def test_bootstrap_ci():
    rng = np.random.default_rng(0)
    small, large = rng.normal(500, 100, 10), rng.normal(500, 100, 200)
    lo_s, hi_s = summarize(small)["ci95"]
    lo_l, hi_l = summarize(large)["ci95"]
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < 0.5 * (hi_s - lo_s)
    assert bootstrap_ci(small, seed=3) == bootstrap_ci(small, seed=3)  # seeded
    assert bootstrap_ci([5.0]) == (5.0, 5.0)


def test_target_return_for():
    assert target_return_for("cheetah", "run") == 850.0 and target_return_for("hopper", "hop") == 200.0
    assert target_return_for("finger", "turn_hard") == 1000.0 and len(TARGET_RETURNS) == 12
    assert target_return_for("quadruped", "walk", override=700) == 700.0
    with pytest.raises(ValueError, match=r"quadruped-walk.*--target_return"):
        target_return_for("quadruped", "walk")


@pytest.mark.parametrize("position_encoding", ["relative_bias", "absolute", "rotary", "step_type"])
def test_last_token_only_pass_equals_the_full_pass(position_encoding):
    torch.manual_seed(0)
    model = ControlTransformer(ControlTransformerConfig(
        obs_type="state", obs_dim=OBS_DIM, action_dim=ACTION_DIM, n_layer=2, n_head=2, n_embd=C, context_length=K,
        position_encoding=position_encoding, state_hidden=32)).eval()  # fmt: skip
    with torch.no_grad():  # a learned-looking bias/table, so positions matter
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for T in (1, 3, K):
            obs, act = torch.randn(4, T, C), torch.randn(4, T - 1, C)
            steps = torch.arange(T).expand(4, T) + 5
            full = model.forward_tokens(obs, act, steps, model.attn_mask("causal"))  # (4, 2T-1, C)
            last = model.forward_tokens(obs, act, steps, model.attn_mask("causal"), last_only=True)  # (4, 1, C)
            torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bc", "rtg"])
def test_incremental_rollout_equals_re_encoding_every_window(kind):
    model, objective = tiny_policy(kind)
    policy = as_policy(model, objective, 850.0 if kind == "rtg" else None)
    fast = evaluate(policy, cheetah, [0, 1], max_steps=K + 12, keep_history=True)
    slow = evaluate(policy, cheetah, [0, 1], max_steps=K + 12, keep_history=True, incremental=False)
    for a, b in zip(fast.histories, slow.histories):
        assert np.abs(a["actions"]).max() > 0.1
        np.testing.assert_allclose(a["actions"], b["actions"], atol=1e-5)


def test_a_policy_without_encode_cannot_be_forced_incremental():
    model, objective = tiny_policy("bc")

    class Plain:  # the Policy protocol only
        context_length, obs_type, target_return, obs_layout, action_layout = K, "state", None, None, None
        device = torch.device("cpu")

        def __call__(self, batch):
            return objective.predict_actions(model, batch)

    assert evaluate(Plain(), cheetah, [0], max_steps=3).lengths[0] == 3
    with pytest.raises(ValueError, match="cannot run incrementally"):
        evaluate(Plain(), cheetah, [0], max_steps=3, incremental=True)
