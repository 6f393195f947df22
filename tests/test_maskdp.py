"""MaskDP (issue 15): the mask sampler, goal restoration from physics, the goal-reaching harness and its per-goal
budget, the goal query's leakage, and every zero-shot mode plus causal finetuning through the real CLI, on real
dm_control data."""

import json

import numpy as np
import pytest
import torch
from conftest import run_script

from control_pretrain.data.schema import dataset_path
from control_pretrain.data.trajectory_file import TrajectoryFile
from control_pretrain.envs.dmc import make_env
from control_pretrain.eval.goal_policies import MaskedGoalPolicy
from control_pretrain.eval.goal_reaching import (
    multi_goal_task,
    per_goal_min,
    prompt_task,
    run_goal_task,
    single_goal_task,
    summarize_goal_results,
)
from control_pretrain.models import token_masks
from control_pretrain.models.masked_trajectory import MaskedTrajectoryConfig, MaskedTrajectoryModel

RATIOS = (0.15, 0.35, 0.55, 0.75, 0.95)


def test_maskdp_mask_shows_exactly_the_drawn_count_per_sample():
    gen = torch.Generator().manual_seed(0)
    visible = token_masks.maskdp(512, 32, 2, RATIOS, generator=gen)  # (B, K, M)
    counts = visible.flatten(1).sum(1)
    allowed = {int(np.floor(64 * (1 - r) + 1e-9)) for r in RATIOS}  # 54, 41, 28, 16, 3
    assert set(counts.tolist()) == allowed  # every ratio occurs, nothing else
    assert visible[..., 0].any() and visible[..., 1].any()
    assert not torch.equal(visible[0], visible[1])  # tokens drawn per sample
    shared = token_masks.maskdp(64, 32, 2, RATIOS, per_sample=False, generator=gen).flatten(1).sum(1)
    assert len(set(shared.tolist())) == 1  # the reference: one ratio per update


def test_goal_pattern_shows_the_start_and_the_goal_only():
    v = token_masks.pattern("goal", 4, 10, ("obs", "act"), query=torch.tensor([1, 3, 5, 9]))
    for row, q in enumerate([1, 3, 5, 9]):
        assert v[row, :, 0].nonzero()[:, 0].tolist() == [0, q] and not v[row, :, 1].any()


def tiny_model(obs_dim: int, action_dim: int, K: int = 20) -> MaskedTrajectoryModel:
    torch.manual_seed(0)
    config = MaskedTrajectoryConfig(obs_dim=obs_dim, action_dim=action_dim, n_embd=32, n_head=2, n_enc_layer=1,
                                    n_dec_layer=1, context_length=K, dropout=0.0, modalities=("obs", "act"))
    return MaskedTrajectoryModel(config).eval()


def test_goal_query_reads_nothing_but_the_start_and_the_goal():
    model = tiny_model(5, 3)
    policy = MaskedGoalPolicy(model, "walker", 5, 3)
    history = {"observations": torch.randn(2, 1, 5), "actions": torch.zeros(2, 0, 3)}
    goals, steps = torch.randn(2, 1, 5), torch.tensor([[7], [7]])
    plan = policy.plan(history, goals, steps)
    assert plan.shape == (2, 7, 3)
    assert not torch.equal(plan, policy.plan(history, goals + 1, steps))  # the goal matters
    assert not torch.equal(plan, policy.plan(history, goals, steps + 2)[:, :7])  # and when it is due
    # a row's plan does not depend on the other rows of its batch (one model call per window length)
    mixed = policy.plan(history, goals, torch.tensor([[7], [12]]))
    assert torch.allclose(mixed[0, :7], plan[0], atol=1e-6)


@pytest.fixture(scope="module")
def walker_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("maskdp")
    res = run_script("dmc_data.py", "collect", "--domain", "walker", "--task", "walk", "--policy", "random",
                     "--num_steps", "1000", "--replay_id", "1", "2", "--data_dir_prefix", str(root), "--quiet")
    assert res.returncode == 0, res.stderr
    return root


def held_out(root) -> TrajectoryFile:
    return TrajectoryFile(dataset_path(str(root), "randcollect", "walker", "walk", 2))


def test_restoring_recorded_physics_reproduces_the_recorded_observation(walker_data):
    file = held_out(walker_data)
    physics = file.read_physics()
    env = make_env("walker", "walk", seed=5)
    for step in [0, 1, 17, 249, 250, 611, file.num_steps - 1]:
        # float32 storage of the state: the observation read back agrees to float32 precision
        np.testing.assert_allclose(env.restore(physics[step]), file.observations[step], atol=1e-5, rtol=1e-5)
    env.close()


def test_per_goal_budget_does_not_let_later_goals_borrow_time():
    # two goals due at steps 2 and 4, scored on (0, 3] and (2, 5]; the rollout passes goal 2 early, at step 1
    distances = np.array([[[5.0, 0.1], [1.0, 6.0], [2.0, 7.0], [9.0, 3.0], [9.0, 2.0]]])  # (1, J=5, G=2)
    windows = np.array([[[0, 3], [2, 5]]])
    np.testing.assert_allclose(per_goal_min(distances, windows), [[1.0, 2.0]])
    assert distances.min(1)[0, 1] == 0.1  # the reference's whole-rollout minimum would credit goal 2 with 0.1


class ReplayPolicy:
    """Plays the file's recorded actions from each rollout's start (found from its current observation's step)."""

    history_length = 1
    device = torch.device("cpu")

    def __init__(self, file: TrajectoryFile, starts: np.ndarray, horizon: int):
        self.file, self.starts, self.horizon, self.calls, self.step = file, starts, horizon, 0, 0

    def plan(self, history, goals, goal_steps):
        self.calls += 1
        idx = self.starts[:, None] + self.step + np.arange(self.horizon)  # (n, H)
        return torch.as_tensor(self.file.actions[np.minimum(idx, self.file.num_steps - 1)])


class ClosedReplay(ReplayPolicy):
    def plan(self, history, goals, goal_steps):
        out = super().plan(history, goals, goal_steps)
        self.step += 1
        return out


def test_replaying_the_recorded_actions_reaches_the_recorded_goal(walker_data):
    file = held_out(walker_data)
    task = single_goal_task(file, np.arange(file.index.num_episodes), num_pairs=6, seed=1)
    h = task.goal_times[:, 0]
    assert ((15 <= h) & (h < 20)).all() and (task.num_steps == h + 3).all()
    np.testing.assert_array_equal(task.goal_obs[:, 0], file.observations[task.starts + h])
    same = file.index.episode_of_step()
    assert (same[task.starts] == same[task.starts + h]).all()
    env_fn = lambda seed: make_env("walker", "walk", seed=seed)
    closed = ClosedReplay(file, task.starts, 1)
    res = run_goal_task(closed, env_fn, task, closed_loop=True)
    assert closed.calls == task.num_steps.max()
    # replayed physics drifts (warm starts, float32 states) but passes close by the goal
    assert res.obs_distance.max() < 0.05 * np.linalg.norm(task.goal_obs - task.start_obs[:, None], axis=-1).min()
    pairs = single_goal_task(file, np.arange(file.index.num_episodes), num_pairs=6, seed=1, horizon=(17, 18))
    opened = ReplayPolicy(file, pairs.starts, 17)
    res_open = run_goal_task(opened, env_fn, pairs, closed_loop=False)
    assert opened.calls == 1 + 3  # one plan to the goal, then one per extra step
    summary = summarize_goal_results(res_open, pairs)
    assert len(summary["obs_distance_per_pair"]) == 6 and summary["obs_distance_ci95"][0] <= summary[
        "obs_distance_mean"]


def test_multigoal_and_prompt_tasks_are_consistent_with_the_file(walker_data):
    file = held_out(walker_data)
    eps = np.arange(file.index.num_episodes)
    multi = multi_goal_task(file, eps, num_sequences=4, goal_times=(5, 10, 15), extra_steps=2)
    np.testing.assert_array_equal(multi.windows[0], [[0, 7], [5, 12], [10, 17]])
    assert (multi.num_steps == 17).all()
    prompts = prompt_task(file, eps, num_prompts=5, prompt_len=5, forecast=40)
    for i, s in enumerate(prompts.starts):
        np.testing.assert_array_equal(prompts.prompt_obs[i], file.observations[s - 5 : s])
        np.testing.assert_allclose(prompts.data_rewards[i], file.rewards[s : s + 40].sum(), rtol=1e-5)
    policy = ClosedReplay(file, prompts.starts, 1)
    res = run_goal_task(policy, lambda seed: make_env("walker", "walk", seed=seed), prompts)
    ratio = summarize_goal_results(res, prompts)["reward_ratio_of_sums"]
    assert 0.8 < ratio < 1.2, ratio  # the data's own actions earn the data's reward


def test_every_zero_shot_mode_and_causal_finetuning_through_the_cli(walker_data, tmp_path):
    tasks = tmp_path / "tasks.json"
    tasks.write_text(json.dumps({"walker": ["walk"]}))
    common = ["--data_dir_prefix", str(walker_data), "--source_data_type", "rand", "--data.num_workers", "0", "--quiet"]
    res = run_script("dmc_pretrain.py", "--method", "maskdp", "--multi_config", str(tasks), "--train_replay_id", "1",
                     "--epochs", "1", "--context_length", "20", "--model.n_embd", "32", "--model.n_head", "2",
                     "--data.batch_size", "8", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches",
                     "1", "--output_dir", str(tmp_path / "pre"), *common)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = str(tmp_path / "pre" / "checkpoints" / "last.ckpt")
    small = ["--model.goal.pairs", "6", "--model.goal.sequences", "3", "--model.goal.prompts", "3",
             "--model.goal.goal_times", "[6, 12]", "--model.goal.forecast", "10"]
    for mode in ("goal", "multigoal", "prompt"):
        out = tmp_path / mode
        res = run_script("dmc_downstream.py", "--load_model_from", ckpt, "--mode", mode, "--domain", "walker",
                         "--task", "walk", "--epochs", "0", "--obs_type", "state", "--output_dir", str(out),
                         *small, *common)
        assert res.returncode == 0, res.stderr[-3000:]
        report = json.loads((out / "eval_results.json").read_text())
        assert report["mode"] == mode and report["checkpoint"] == ckpt
        loops = ["closed"] if mode == "prompt" else ["closed", "open"]
        assert list(report["loops"]) == loops
        key = "reward_ratio_mean" if mode == "prompt" else "physics_distance_mean"
        assert all(np.isfinite(report["loops"][loop][key]) for loop in loops)
    res = run_script("dmc_downstream.py", "--method", "smart", "--load_model_from", ckpt, "--mode", "bc",
                     "--domain", "walker", "--task", "walk", "--epochs", "1", "--obs_type", "state",
                     "--context_length", "10", "--data.batch_size", "8", "--trainer.limit_train_batches", "2",
                     "--trainer.limit_val_batches", "1", "--eval_episodes", "1", "--select_rate", "1",
                     "--output_dir", str(tmp_path / "causal"), *common)
    assert res.returncode == 0, res.stderr[-3000:]
    loaded = next(line for line in res.stderr.splitlines() if "loaded" in line and "tensors from" in line)
    assert "model.blocks.*" in loaded and "model.obs_encoder.*" in loaded  # the masked encoder, now causal
