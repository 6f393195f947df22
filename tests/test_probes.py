"""Representation probes (lit/probes.py, eval/ridge.py): the ridge probe scores a linear target at ~1 and noise at
<= ~0; windows tile episodes and split by episode per domain; the trunk is left untouched; a real CLI run logs
``val/probe_*`` every validation epoch."""

import math

import numpy as np
import pytest
import torch
from conftest import TINY_ARGS, make_batch, run_in_process, scalars, tiny_model, write_synthetic

import dmc_pretrain
from control_pretrain.data.schema import dataset_path
from control_pretrain.data.trajectory_file import TrajectoryFile
from control_pretrain.data.windows import EpisodeWindowDataset
from control_pretrain.errors import ArgumentError
from control_pretrain.eval.ridge import ridge_r2
from control_pretrain.lit.pretrain_module import PretrainModule
from control_pretrain.lit.probes import PROBES, RepresentationProbes, split_by_episode, tiling_windows, transitions

K = 4  # conftest's tiny_model context


def test_ridge_r2_is_one_on_a_linear_target_and_at_most_zero_on_noise():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 16, generator=gen) * torch.logspace(-2, 3, 16)  # wildly scaled features: standardised
    linear = x @ torch.randn(16, 3, generator=gen) + 5.0  # with an intercept
    noise = torch.randn(1200, 2, generator=gen)
    fit, score = slice(0, 600), slice(600, None)
    assert ridge_r2(x[fit], linear[fit], x[score], linear[score]).min() > 0.98  # ridge shrinkage costs ~0.01
    r2 = ridge_r2(x[fit], noise[fit], x[score], noise[score])
    assert (r2 <= 0.01).all() and (r2 > -0.1).all()
    flat = torch.ones(1200, 1)  # no variance on the score set: no score, not a division by zero
    assert ridge_r2(x[fit], flat[fit], x[score], flat[score]).isnan().all()


def test_no_feature_sees_its_target():
    """Transition t's action features never saw a_t; its dynamics features never saw o_{t+1} (nor r_t)."""
    torch.manual_seed(0)
    model, batch, t = tiny_model().eval(), make_batch(), 1
    base = transitions(model, batch, raw=False)
    for key, step, unchanged, changed in (("actions", t, "trunk_action", "trunk_dynamics"),
                                          ("observations", t + 1, "trunk_dynamics", "trunk_action")):
        moved = {**batch, key: batch[key].clone()}
        moved[key][:, step] += 1.0
        out = transitions(model, moved, raw=False)
        assert torch.equal(out[unchanged][:, t], base[unchanged][:, t]), (key, unchanged)
        assert not torch.allclose(out[changed][:, t], base[changed][:, t]), (key, changed)  # the test can see


@pytest.fixture
def two_domains(tmp_path):
    """8 episodes of 24 steps per domain, slot layout 5 observations / 4 actions (tiny_model's sizes)."""
    write_synthetic(tmp_path / "a.h5", [24] * 8, first_id=0, domain="cartpole", obs_dim=2, action_dim=2)
    write_synthetic(tmp_path / "b.h5", [24] * 8, first_id=100, domain="walker", obs_dim=3, action_dim=2, seed=1)
    return EpisodeWindowDataset([TrajectoryFile(str(tmp_path / n)) for n in ("a.h5", "b.h5")], K)


def test_windows_tile_episodes_and_split_by_episode_per_domain(two_domains, tmp_path):
    ds = two_domains
    windows = tiling_windows(ds, 1000)
    assert len(windows) == 2 * 8 * (24 // K) and (ds.timesteps[ds.starts[windows]] % K == 0).all()
    assert np.all(np.diff(ds.starts[windows]) >= K)  # no step in two windows
    capped = tiling_windows(ds, 10)
    assert len(capped) == 10 and set(capped) <= set(windows) and np.array_equal(capped, tiling_windows(ds, 10))
    episode_of = ds.__getitems__(windows)["observations"][:, 0].amax(-1).numpy()  # synthetic obs = episode id
    splits = split_by_episode(ds, windows)
    assert [s.domain for s in splits] == ["cartpole", "walker"]
    for s, ids in zip(splits, (range(8), range(100, 108))):
        fit, score = set(episode_of[s.fit]), set(episode_of[s.score])
        assert fit and score and not fit & score and fit | score == set(ids)  # half the episodes each side
    # One held-out episode: its windows alternate instead.
    write_synthetic(tmp_path / "one.h5", [24])
    (single,) = split_by_episode(one := EpisodeWindowDataset([TrajectoryFile(str(tmp_path / "one.h5"))], K),
                                 tiling_windows(one, 1000))
    assert len(single.fit) == len(single.score) == 3 and not set(single.fit) & set(single.score)


@pytest.mark.parametrize("training", [True, False])
def test_probing_leaves_the_trunk_unchanged(two_domains, training):
    torch.manual_seed(0)
    model = tiny_model().train(training)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {k: p.requires_grad for k, p in model.named_parameters()}
    probes = RepresentationProbes(max_windows=64)
    scores = probes.measure(model, two_domains)
    assert set(scores) == set(PROBES) and all(math.isfinite(v) for v in scores.values())
    assert model.training is training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad == trainable[k] for k, p in model.named_parameters())
    assert probes.measure(model, two_domains) == scores  # deterministic: every DDP rank gets the same numbers
    # Synthetic episodes: actions and observations are linear in the episode id, rewards are noise.
    assert scores["raw_action"] > 0.99 and scores["raw_next_obs"] > 0.99 and scores["raw_reward"] < 0.05


def test_pixel_runs_probe_actions_and_rewards_only(tmp_path):
    write_synthetic(tmp_path / "p.h5", [12] * 4, pixels=True, action_dim=4)
    ds = EpisodeWindowDataset([TrajectoryFile(str(tmp_path / "p.h5"), load_pixels=True)], K, state=False, pixels=True)
    torch.manual_seed(0)
    scores = RepresentationProbes(max_windows=8).measure(tiny_model("pixels").eval(), ds)
    assert set(scores) == {"action", "reward"}  # no next-observation or raw probes on frames


def test_probe_windows_flag():
    assert PretrainModule(obs_type="state", obs_dim=3, action_dim=2, n_layer=1, n_head=1, n_embd=8,
                          probe_windows=0).configure_callbacks() == []
    with pytest.raises(ArgumentError, match="probe_windows"):
        PretrainModule(obs_type="state", obs_dim=3, action_dim=2, n_layer=1, n_head=1, n_embd=8, probe_windows=-1)


def test_cli_run_logs_probes_every_validation_epoch(tmp_path):
    for domain, obs_dim, action_dim in (("cartpole", 2, 1), ("pendulum", 3, 2)):
        path = dataset_path(str(tmp_path / "data"), "randcollect", domain, "swingup", 1)
        write_synthetic(path, [30] * 10, domain=domain, obs_dim=obs_dim, action_dim=action_dim)
    out = tmp_path / "run"
    run_in_process(dmc_pretrain.main, [
        "--multi_config", "configs/pretrain_configs/multipretrain_source_test.json", "--source_data_type", "rand",
        "--train_replay_id", "1", "--epochs", "2", "--num_steps", "300", "--data_dir_prefix", str(tmp_path / "data"),
        "--obs_type", "state", "--output_dir", str(out), "--data.val_fraction", "0.4", *TINY_ARGS])
    tags = scalars(out)
    for name in PROBES:
        values = tags[f"val/probe_{name}_r2"]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), name
    assert tags["val/probe_raw_action_r2"][0] == tags["val/probe_raw_action_r2"][1] > 0.99  # computed once
    assert tags["val/probe_raw_reward_r2"][0] < 0.05
    assert tags["val/probe_action_r2"][0] != tags["val/probe_action_r2"][1]  # the trunk's moved with training
    assert all(s > 0 for s in tags["val/probe_seconds"])
