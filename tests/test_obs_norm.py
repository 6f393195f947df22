"""Observation normalisation (state): statistics of the training split only, per domain slot, padding left at 0;
applied inside the model alike in training batches and rollouts; stored in the checkpoint and obs_stats.json by a
real pretraining run (``--data.normalize_obs false``: raw observations, as before), kept on resume; finetuning
keeps a seen domain's statistics and computes an unseen domain's; checkpoints without them load as identity."""

import json
import logging

import numpy as np
import pytest
import torch
from conftest import TINY_ARGS, run_in_process, tiny_model, write_synthetic
from lightning.pytorch import Trainer

import dmc_pretrain
from control_pretrain.data import obs_stats as obs_stats_module
from control_pretrain.data.datamodules.downstream import DownstreamDataModule
from control_pretrain.data.datamodules.pretrain import MultiTaskDataModule
from control_pretrain.data.obs_stats import STD_FLOOR, ObsStats
from control_pretrain.data.schema import dataset_path
from control_pretrain.data.slots import SlotLayout
from control_pretrain.data.trajectory_file import TrajectoryFile
from control_pretrain.data.windows import EpisodeWindowDataset
from control_pretrain.data.writer import TrajectoryWriter
from control_pretrain.envs.dmc import make_env
from control_pretrain.eval.policies import BehaviorCloningPolicy
from control_pretrain.eval.rollout import evaluate
from control_pretrain.lit.downstream_module import DownstreamModule
from control_pretrain.lit.pretrain_module import PretrainModule
from control_pretrain.lit.weights import forget_pretrained
from control_pretrain.models.control_transformer import ControlTransformer, ControlTransformerConfig
from control_pretrain.objectives import BehaviorCloningObjective

TEST_TASKS = "configs/pretrain_configs/multipretrain_source_test.json"  # cartpole-swingup + pendulum-swingup
NORM = "model.obs_normalizer."


def pretrain_args(data_dir, out_dir, *extra):
    return ["--multi_config", TEST_TASKS, "--train_replay_id", "1", "--epochs", "1", "--num_steps", "1000",
            "--output_dir", str(out_dir), "--data_dir_prefix", str(data_dir), "--obs_type", "state", *TINY_ARGS,
            *extra]


def numpy_stats(dm: MultiTaskDataModule, episodes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per domain: mean and std (float64 numpy) of the given episodes' rows of every training file."""
    rows: dict[str, list[np.ndarray]] = {}
    for f, sel in zip(dm.train_set.files, episodes):
        rows.setdefault(f.domain, []).append(f.observations[f.index.select(sel)])
    return {d: (np.concatenate(r).astype(np.float64).mean(0), np.concatenate(r).astype(np.float64).std(0))
            for d, r in rows.items()}


def training_episodes(dm: MultiTaskDataModule) -> list[np.ndarray]:
    """Each training file's episodes that training windows come from."""
    ds = dm.train_set
    return [np.unique(f.index.episode_of_step()[ds.starts[ds.window_file == i] - ds.file_offsets[i]])
            for i, f in enumerate(ds.files)]


# ---- statistics --------------------------------------------------------------------------------------------------
def test_statistics_are_those_of_the_training_episodes_per_domain_slot(collected_dir, monkeypatch):
    monkeypatch.setattr(obs_stats_module, "CHUNK_ROWS", 7)  # many chunks per file: the pairwise merge is exact
    dm = MultiTaskDataModule(multi_config=TEST_TASKS, data_dir_prefix=str(collected_dir), train_replay_id=2,
                             num_steps=1000, obs_type="state", context_length=6, val_fraction=0.25)
    dm.setup()
    stats = dm.obs_stats
    train = training_episodes(dm)
    everything = [np.arange(f.index.num_episodes) for f in dm.train_set.files]
    assert all(len(t) < len(e) for t, e in zip(train, everything))  # validation episodes exist
    expected, with_val = numpy_stats(dm, train), numpy_stats(dm, everything)
    assert stats.layout == dm.obs_layout == SlotLayout({"cartpole": (0, 5), "pendulum": (5, 3)})
    for domain, (offset, size) in dm.obs_layout.slots.items():
        mean, std = stats.mean[offset : offset + size], stats.std[offset : offset + size]
        np.testing.assert_allclose(mean, expected[domain][0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(std, expected[domain][1], rtol=1e-6)
        assert not np.allclose(mean, with_val[domain][0], rtol=1e-4)  # the held-out episodes are not in it
    assert stats.steps == {d: sum(len(f.index.select(t)) for f, t in zip(dm.train_set.files, train)
                               if f.domain == d) for d in ("cartpole", "pendulum")}
    assert stats.slot_index().tolist() == [0] * 5 + [1] * 3
    off = MultiTaskDataModule(multi_config=TEST_TASKS, data_dir_prefix=str(collected_dir), num_steps=1000,
                              obs_type="state", context_length=6, normalize_obs=False)
    off.setup()
    assert off.obs_stats is None


def test_constant_dimensions_are_divided_by_the_floor(tmp_path):
    write_synthetic(tmp_path / "a.h5", [6, 4], first_id=3, obs_dim=2)  # every row of an episode is its id
    f = TrajectoryFile(str(tmp_path / "a.h5"))
    stats = ObsStats.compute([f], [np.array([1])], SlotLayout.single("cartpole", 2))  # one episode: constant
    np.testing.assert_array_equal(stats.mean, [4.0, 4.0])
    np.testing.assert_array_equal(stats.std, np.float32([STD_FLOOR, STD_FLOOR]))
    assert stats.to_json("test")["domains"]["cartpole"]["floored_dims"] == [0, 1]
    both = ObsStats.compute([f], [None], SlotLayout.single("cartpole", 2))
    np.testing.assert_allclose(both.std, np.std([3.0] * 6 + [4.0] * 4))


def test_padding_stays_zero_and_each_sample_uses_its_own_slot(collected_dir):
    dm = MultiTaskDataModule(multi_config=TEST_TASKS, data_dir_prefix=str(collected_dir), num_steps=1000,
                             obs_type="state", context_length=4)
    dm.setup()
    model = tiny_model(obs_dim=dm.obs_dim, action_dim=dm.action_dim)
    stats = dm.obs_stats
    model.obs_normalizer.set_stats(stats.mean, stats.std, stats.slot_index())
    batch = dm.train_set.__getitems__(np.arange(len(dm.train_set)))
    out = model.obs_normalizer(batch["observations"], batch["domain_id"])  # (B, K, 8)
    for d, (offset, size) in enumerate(dm.obs_layout.slots.values()):
        mine = batch["domain_id"] == d
        assert mine.any() and (~mine).any()
        own = slice(offset, offset + size)
        expected = (batch["observations"][mine][..., own] - stats.mean[own]) / stats.std[own]
        torch.testing.assert_close(out[mine][..., own], expected)
        assert torch.all(out[~mine][..., own] == 0)  # another domain's slot: padding, exactly 0
    with pytest.raises(ValueError, match="domain_id"):  # two slots: the sample's slot must be known
        model.obs_normalizer(batch["observations"])


# ---- a real pretraining run --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained_run(collected_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("norm_pretrained")
    cli = run_in_process(dmc_pretrain.main, pretrain_args(collected_dir, out))
    return cli, out


def test_a_pretraining_run_stores_its_statistics_in_the_checkpoint_and_json(pretrained_run, collected_dir, tmp_path):
    cli, out = pretrained_run
    stats = cli.datamodule.obs_stats
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    np.testing.assert_array_equal(state[NORM + "mean"].numpy(), stats.mean)
    np.testing.assert_array_equal(state[NORM + "std"].numpy(), stats.std)
    assert state[NORM + "slot"].tolist() == [0] * 5 + [1] * 3
    saved = json.loads((out / "obs_stats.json").read_text())
    assert (out / "config.yaml").exists() and saved["std_floor"] == STD_FLOOR
    assert saved["source"].startswith("the pretraining training split")
    assert saved["domains"]["pendulum"]["slot"] == [5, 3]
    np.testing.assert_allclose(saved["domains"]["pendulum"]["mean"], stats.mean[5:], rtol=1e-6)
    assert saved["domains"]["cartpole"]["steps"] == stats.steps["cartpole"] > 0

    # The model encodes normalised observations; with --data.normalize_obs false it encodes raw ones, as before.
    raw = run_in_process(dmc_pretrain.main, pretrain_args(collected_dir, tmp_path, "--data.normalize_obs", "false"))
    batch = cli.datamodule.val_set.__getitems__(np.arange(4))
    obs, domain = batch["observations"], batch["domain_id"]
    for module, inputs in ((cli.model, (obs - torch.as_tensor(stats.mean)) / torch.as_tensor(stats.std)),
                           (raw.model, obs)):
        model = module.model.eval()
        inputs = torch.where(model.obs_normalizer.slot == domain[:, None, None], inputs, obs)
        with torch.no_grad():
            torch.testing.assert_close(model.encode_observations(batch), model.obs_encoder(inputs))
            torch.testing.assert_close(model.encode_target(batch), model.target_obs_encoder(inputs))
    assert raw.model.model.obs_normalizer.is_identity
    assert not torch.allclose(cli.model.model.obs_encoder(obs), cli.model.model.encode_observations(batch))
    assert json.loads((tmp_path / "obs_stats.json").read_text())["source"].startswith("identity")


def test_resume_keeps_the_checkpoint_statistics(pretrained_run, collected_dir, tmp_path, caplog):
    _, out = pretrained_run
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    torch.save(saved, tmp_path / "last.ckpt")
    with caplog.at_level(logging.WARNING):
        cli = run_in_process(dmc_pretrain.main, pretrain_args(collected_dir, tmp_path, "--epochs", "2",
                                                              "--data.normalize_obs", "false",
                                                              "--ckpt_path", str(tmp_path / "last.ckpt")))
    assert cli.trainer.current_epoch == 2
    torch.testing.assert_close(cli.model.model.obs_normalizer.mean, saved["state_dict"][NORM + "mean"])
    assert "the checkpoint's are used" in caplog.text
    written = json.loads((tmp_path / "obs_stats.json").read_text())
    assert written["source"] == "the checkpoint this run resumed from"
    np.testing.assert_allclose(written["domains"]["cartpole"]["std"], saved["state_dict"][NORM + "std"][:5])


def test_checkpoints_without_statistics_load_as_identity(pretrained_run, tmp_path):
    _, out = pretrained_run
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith(NORM)}
    torch.save(ckpt, tmp_path / "old.ckpt")
    module = PretrainModule.load_from_checkpoint(tmp_path / "old.ckpt", map_location="cpu")  # strict loading
    assert module.model.obs_normalizer.is_identity and module.model.obs_normalizer.num_slots == 1
    assert "obs_normalizer" not in dict(tiny_model("pixels").named_children())  # pixels: nothing changes


# ---- rollouts ----------------------------------------------------------------------------------------------------
def write_episode(path, ep: dict, obs_layout: SlotLayout, action_layout: SlotLayout, domain: str) -> None:
    """A rollout's history as a dataset file (the domain's own widths), to read it back as training data."""
    attrs = {"domain": domain, "task": "swingup", "policy": "random", "seed": 0, "replay_id": 1,
             "action_repeat": 4, "obs_keys": ["position", "velocity"]}
    n = len(ep["actions"])
    obs, actions = obs_layout.take(domain, ep["observations"]), action_layout.take(domain, ep["actions"])
    with TrajectoryWriter(str(path), attrs, obs.shape[1], actions.shape[1], 1) as w:
        w.append_episode({"observations": obs, "actions": actions, "rewards": ep["rewards"],
                          "terminals": np.zeros(n, bool), "timeouts": np.arange(n) == n - 1,
                          "physics": np.zeros((n, 1))})


def test_rollouts_normalise_raw_observations_as_training_batches_do(tmp_path):
    """cartpole in the second slot of a two-domain layout: the action a rollout took from raw observations is the
    action the model predicts from the training batch of the same steps, read back through the data pipeline."""
    K = 4
    obs_layout = SlotLayout({"pendulum": (0, 3), "cartpole": (3, 5)})
    action_layout = SlotLayout({"pendulum": (0, 1), "cartpole": (1, 1)})
    torch.manual_seed(0)
    model = ControlTransformer(ControlTransformerConfig(
        obs_type="state", obs_dim=8, action_dim=2, n_layer=1, n_head=2, n_embd=32, context_length=K,
        max_timestep=64, state_hidden=32)).eval()  # fmt: skip
    rng = np.random.default_rng(0)
    stats = ObsStats(obs_layout, rng.normal(0, 1, 8).astype(np.float32), rng.uniform(0.2, 3, 8).astype(np.float32),
                     {"pendulum": 1, "cartpole": 1})
    model.obs_normalizer.set_stats(stats.mean, stats.std, stats.slot_index())
    head = BehaviorCloningObjective(32, 2).eval()
    with torch.no_grad():
        head.head.weight.mul_(20.0)  # actions that move the cart
    policy = BehaviorCloningPolicy(model, head, obs_layout=obs_layout, action_layout=action_layout)
    res = evaluate(policy, lambda s: make_env("cartpole", "swingup", seed=s), seeds=[0], max_steps=10,
                   keep_history=True)
    ep = res.histories[0]
    write_episode(tmp_path / "ep.h5", ep, obs_layout, action_layout, "cartpole")
    data = EpisodeWindowDataset([TrajectoryFile(str(tmp_path / "ep.h5"))], K, obs_layout=obs_layout,
                                action_layout=action_layout)
    for t in (K - 1, 6, 9):  # window [t-K+1, t], read at its last observation
        batch = data.__getitems__([t - K + 1])
        assert batch["domain_id"].item() == 1
        with torch.no_grad():
            pred = head.predict_actions(model, batch)[0, -1].clamp(-1, 1)
        np.testing.assert_allclose(pred[1].item(), ep["actions"][t][1], atol=1e-5, err_msg=f"step {t}")
        # Power: the same window with unnormalised observations gives another action.
        model.obs_normalizer.set_stats(np.zeros(8), np.ones(8), stats.slot_index())
        with torch.no_grad():
            raw = head.predict_actions(model, batch)[0, -1].clamp(-1, 1)
        model.obs_normalizer.set_stats(stats.mean, stats.std, stats.slot_index())
        assert abs(raw[1].item() - ep["actions"][t][1]) > 1e-3


# ---- finetuning --------------------------------------------------------------------------------------------------
def finetune(ckpt, data_dir, domain: str, task: str, out_dir, obs_dim: int):
    """One training step of a real Trainer (no validation, so no rollouts); returns the module."""
    dm = DownstreamDataModule(domain=domain, task=task, source_data_type="rand", data_dir_prefix=str(data_dir),
                              num_steps=1000, select_rate=1.0, obs_type="state", context_length=6, batch_size=4,
                              num_workers=0)
    assert dm.obs_dim == obs_dim
    module = DownstreamModule(domain=domain, task=task, obs_type="state", obs_dim=dm.obs_dim,
                              action_dim=dm.action_dim, n_layer=1, n_head=2, n_embd=32, context_length=6,
                              load_model_from=ckpt and str(ckpt), eval_episodes=1)
    Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=str(out_dir)).fit(module, datamodule=dm)
    forget_pretrained()
    return module, dm


@pytest.fixture(scope="module")
def finetune_data(tmp_path_factory):
    """Synthetic replays 1 and 2 of cartpole (a domain seen in pretraining) and acrobot (unseen)."""
    root = tmp_path_factory.mktemp("finetune_data")
    for domain, obs_dim, action_dim in (("cartpole", 5, 1), ("acrobot", 6, 1)):
        for replay in (1, 2):
            write_synthetic(dataset_path(str(root), "randcollect", domain, "swingup", replay), [20, 30, 25],
                            first_id=10 * replay, domain=domain, obs_dim=obs_dim, action_dim=action_dim, seed=replay)
    return root


def test_finetuning_keeps_a_seen_domains_statistics_and_computes_an_unseen_ones(
        pretrained_run, finetune_data, tmp_path, caplog):  # fmt: skip
    _, out = pretrained_run
    ckpt = out / "checkpoints" / "last.ckpt"
    pretrained = torch.load(ckpt, weights_only=False)["state_dict"]
    with caplog.at_level(logging.INFO, logger="control_pretrain.lit.control_module"):
        seen, _ = finetune(ckpt, finetune_data, "cartpole", "swingup", tmp_path / "seen", obs_dim=5)
        unseen, unseen_dm = finetune(ckpt, finetune_data, "acrobot", "swingup", tmp_path / "unseen", obs_dim=6)
        scratch, _ = finetune(None, finetune_data, "acrobot", "swingup", tmp_path / "scratch", obs_dim=6)
    norm = seen.model.obs_normalizer
    for key in ("mean", "std", "slot"):
        torch.testing.assert_close(getattr(norm, key), pretrained[NORM + key])
    assert f"observation statistics for cartpole, pendulum: checkpoint {ckpt}, a seen domain" in caplog.text
    # acrobot: the mean and std of its 75 training rows (ids 10, 11, 12 in episodes of 20, 30 and 25 steps)
    ids = np.repeat([10.0, 11.0, 12.0], [20, 30, 25])
    for module in (unseen, scratch):
        np.testing.assert_allclose(module.model.obs_normalizer.mean.numpy(), [ids.mean()] * 6, rtol=1e-6)
        np.testing.assert_allclose(module.model.obs_normalizer.std.numpy(), [ids.std()] * 6, rtol=1e-5)
    np.testing.assert_array_equal(unseen.model.obs_normalizer.mean.numpy(), unseen_dm.obs_stats.mean)
    assert "observation statistics for acrobot: the finetuning training episodes (75 steps), a domain" in caplog.text
    assert "training from scratch" in caplog.text
    written = json.loads((tmp_path / "unseen" / "obs_stats.json").read_text())
    assert list(written["domains"]) == ["acrobot"] and written["domains"]["acrobot"]["steps"] == 75
    assert list(json.loads((tmp_path / "seen" / "obs_stats.json").read_text())["domains"]) == ["cartpole", "pendulum"]
    # A seen domain's training batches are normalised in its pretraining slot (cartpole = slot 0 of 2).
    batch = seen.prepare(seen.trainer.datamodule.train_set.__getitems__([0]))
    assert batch["domain_id"].tolist() == [0] and batch["observations"].shape[-1] == 8
