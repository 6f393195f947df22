"""studies/maskdp/baselines.py: Goal-MLP and Goal-GPT learn a goal-conditioned task, act on the nearest goal only,
do not leak later inputs into earlier predictions, and reload to the same plans."""

import importlib.util
import os
import sys

import pytest
import torch

STUDY = os.path.join(os.path.dirname(__file__), "..", "studies", "maskdp")
_spec = importlib.util.spec_from_file_location("maskdp_baselines", os.path.join(STUDY, "baselines.py"))
baselines = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = baselines
_spec.loader.exec_module(baselines)

D, A, K, B = 3, 3, 8, 64
SPEED, GAIN = 0.25, 0.8  # s_{t+1} = s_t + SPEED * a_t, a_t = GAIN * sign(g - s_t)
TINY_GPT = {"n_layer": 1, "n_head": 2, "n_embd": 32, "state_hidden": 32}


def synthetic_windows(n_batches: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Windows shaped like data/windows.py batches of a task where a_t = GAIN * sign(g - s_t) for every later state
    g of the window: each window moves in one random diagonal direction at constant speed."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        s0 = torch.randn(B, 1, D, generator=gen)  # (B, 1, D)
        act = GAIN * (torch.randint(0, 2, (B, 1, A), generator=gen) * 2 - 1).float().expand(B, K, A)  # (B, K, A)
        obs = s0 + SPEED * torch.cat((torch.zeros(B, 1, A), act[:, :-1].cumsum(1)), 1)  # (B, K, D)
        out.append({"observations": obs, "actions": act.contiguous(), "timesteps": torch.arange(K).expand(B, K),
                    "domain_id": torch.zeros(B, dtype=torch.long), "action_mask": torch.ones(B, A, dtype=torch.bool),
                    "has_action": torch.ones(B, dtype=torch.bool)})
    return out


WINDOWS = synthetic_windows(8, seed=0)
STATS = (torch.cat([w["observations"] for w in WINDOWS]).flatten(0, 1).mean(0),
         torch.cat([w["observations"] for w in WINDOWS]).flatten(0, 1).std(0))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: a second thread only contends with the other jobs on the machine (10-25x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mlp():
    return baselines.train_goal_mlp(WINDOWS, *STATS, steps=300, lr=3e-3, seed=1, hidden=64, n_hidden=2)


@pytest.fixture(scope="module")
def gpt():
    return baselines.train_goal_gpt(WINDOWS, *STATS, steps=300, lr=3e-3, seed=1, weight_decay=0.0, **TINY_GPT)


def fresh_goals(n: int, G: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start states (n, D), G goals (n, G, D) each 5 diagonal steps from the start in a random direction, their
    steps (n, G) and the right first action (n, A) towards goal 0."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(n, D, generator=gen)
    signs = (torch.randint(0, 2, (n, G, D), generator=gen) * 2 - 1).float()
    goals = s[:, None] + 5 * SPEED * GAIN * signs  # (n, G, D)
    return s, goals, torch.arange(5, 5 + G).expand(n, G), GAIN * signs[:, 0]


def history_of(s: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"observations": s[:, None], "actions": s.new_zeros(len(s), 0, A)}


@pytest.mark.parametrize("name", ["mlp", "gpt"])
def test_training_loss_falls_far_below_predicting_zero(name, request):
    model, losses = request.getfixturevalue(name)
    assert not model.training
    assert losses["zero_loss_last"] == pytest.approx(GAIN**2, rel=1e-4)
    assert losses["loss_last"] < 0.1 * losses["zero_loss_last"], losses
    assert losses["loss_last"] < 0.2 * losses["loss_first"], losses


@pytest.mark.parametrize("name", ["mlp", "gpt"])
def test_plan_acts_on_the_nearest_goal_only(name, request):
    model, _ = request.getfixturevalue(name)
    policy = baselines.GoalMLPPolicy(model) if name == "mlp" else baselines.GoalGPTPolicy(model)
    assert policy.history_length == (1 if name == "mlp" else K - 1) and policy.device == torch.device("cpu")
    s, goals, steps, right = fresh_goals(200, 3, seed=5)
    plan = policy.plan(history_of(s), goals, steps)
    assert plan.shape == (200, 1, A) and plan.abs().max() <= 1.0
    assert (plan[:, 0].sign() == right.sign()).float().mean() > 0.95  # it heads for goals[:, 0]
    others = goals.clone()
    others[:, 1:] = torch.randn(200, 2, D) * 10
    assert torch.equal(policy.plan(history_of(s), others, steps), plan)


def test_gpt_plan_cuts_the_history_to_fit_the_goal_and_rows_are_independent(gpt):
    model, _ = gpt
    policy = baselines.GoalGPTPolicy(model)
    w = WINDOWS[1]
    obs, act = w["observations"][:6, :6], w["actions"][:6, :5]  # a 6-step history, the current state last
    goals = w["observations"][:6, 7:8]  # (6, 1, D)
    steps = torch.tensor([[1], [2], [3], [5], [7], [9]])  # K - h steps fit: 6 (all), 6, 5, 3, 1, 1
    plan = policy.plan({"observations": obs, "actions": act}, goals, steps)
    for i, keep in enumerate([6, 6, 5, 3, 1, 1]):
        row = {"observations": obs[i : i + 1, 6 - keep :], "actions": act[i : i + 1, 6 - keep :]}
        assert torch.allclose(policy.plan(row, goals[i : i + 1], steps[i : i + 1]), plan[i : i + 1], atol=1e-6)
    assert (plan[:, 0].sign() == w["actions"][:6, 5].sign()).float().mean() > 0.9


def test_gpt_prediction_at_t_ignores_later_inputs():
    torch.manual_seed(0)
    model = baselines.GoalGPT(D, A, *STATS, context_length=K, **TINY_GPT).eval()
    w = WINDOWS[0]
    obs, act, goal = w["observations"][:4], w["actions"][:4], w["observations"][:4, -1]
    base = model(obs, act, goal)  # (4, K, A)
    for t in range(K - 1):
        obs2, act2 = obs.clone(), act.clone()
        obs2[:, t + 1 :] += torch.randn_like(obs2[:, t + 1 :])
        act2[:, t:] += torch.randn_like(act2[:, t:])  # a_t is the target at t, never an input to it
        out = model(obs2, act2, goal)
        assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6)
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])  # later tokens do see them
    # the loss of a window only reads states up to its goal step and actions before it
    goal_idx = torch.tensor([1, 3, 5, 7])
    loss, zero = model.loss(w_first := {k: v[:4] for k, v in w.items()}, goal_idx)
    later = {**w_first, "observations": obs.clone(), "actions": act.clone()}
    for i, g in enumerate(goal_idx.tolist()):
        later["observations"][i, g + 1 :] = 100.0
        later["actions"][i, g:] = 0.0
    assert torch.equal(torch.stack(model.loss(later, goal_idx)), torch.stack([loss, zero]))


def test_state_dict_round_trip_gives_identical_plans(mlp, gpt):
    s, goals, steps, _ = fresh_goals(16, 2, seed=7)
    hist = {"observations": torch.stack([s, s + 0.1], 1), "actions": torch.zeros(16, 1, A)}
    dummy = (torch.zeros(D), torch.ones(D))
    for (model, _), fresh, policy_cls in (
        (mlp, baselines.GoalMLP(D, A, *dummy, hidden=64, n_hidden=2), baselines.GoalMLPPolicy),
        (gpt, baselines.GoalGPT(D, A, *dummy, context_length=K, **TINY_GPT), baselines.GoalGPTPolicy),
    ):
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(policy_cls(fresh).plan(hist, goals, steps), policy_cls(model).plan(hist, goals, steps))


def test_training_is_deterministic_given_the_seed():
    runs = [baselines.train_goal_mlp(WINDOWS, *STATS, steps=5, seed=3, hidden=16, n_hidden=1)[1] for _ in range(2)]
    assert runs[0] == runs[1]
    runs = [baselines.train_goal_gpt(WINDOWS, *STATS, steps=3, seed=3, **TINY_GPT)[1] for _ in range(2)]
    assert runs[0] == runs[1]
    other = baselines.train_goal_gpt(WINDOWS, *STATS, steps=3, seed=4, **TINY_GPT)[1]
    assert other != runs[0]
