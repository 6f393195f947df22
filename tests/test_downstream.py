"""Finetuning through the real CLI on tiny data: BC and return-conditioned runs end to end, eval_results.json
through ``trainer.test`` on the last and the best checkpoint, the evaluation callback's metrics, weight-loading
rules, data selection, a frozen encoder in a real fit, and clear errors for checkpoints that do not fit."""

import inspect
import json
import os

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, run_in_process, run_script, scalars, write_synthetic
from lightning.pytorch import Trainer

import dmc_downstream
import dmc_pretrain
from control_pretrain.data.datamodules.downstream import DownstreamDataModule, select_episodes
from control_pretrain.data.slots import SlotLayout
from control_pretrain.data.trajectory_file import TrajectoryFile
from control_pretrain.data.windows import EpisodeWindowDataset, window_loader
from control_pretrain.envs.dmc import make_env
from control_pretrain.eval.rollout import evaluate
from control_pretrain.lit.downstream_module import DownstreamModule
from control_pretrain.lit.weights import forget_pretrained, read_pretrained
from control_pretrain.models.ema import ema_update

TINY_PRETRAIN = ["--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2", "--context_length", "6",
                 "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.limit_train_batches", "2",
                 "--trainer.limit_val_batches", "1", "--quiet"]
RESULT_KEYS = {"domain", "task", "model_type", "checkpoint", "pretrained_from", "target_return", "num_episodes",
               "seeds", "returns", "mean", "std", "iqm", "ci95"}


@pytest.fixture(scope="module")
def pretrained(collected_dir, tmp_path_factory):
    """A tiny state model pretrained on cartpole-swingup + pendulum-swingup."""
    out = tmp_path_factory.mktemp("pretrained")
    run_in_process(dmc_pretrain.main, [*PRETRAIN_ARGS, "--epochs", "1", "--output_dir", str(out),
                                       "--data_dir_prefix", str(collected_dir)])
    return out / "checkpoints" / "last.ckpt"


PRETRAIN_ARGS = ["--multi_config", "configs/pretrain_configs/multipretrain_source_test.json", "--train_replay_id", "1",
                 "--num_steps", "1000", "--obs_type", "state", *TINY_PRETRAIN]


@pytest.fixture(scope="module")
def pretrained_before_issue_13(collected_dir, tmp_path_factory):
    """A checkpoint as written before ``position_encoding`` existed: the reference's absolute positions, and the
    setting in neither ``model_config`` nor the hyperparameters."""
    out = tmp_path_factory.mktemp("pretrained_old")
    run_in_process(dmc_pretrain.main, [*PRETRAIN_ARGS, "--epochs", "1", "--output_dir", str(out), "--data_dir_prefix",
                                       str(collected_dir), "--model.position_encoding", "absolute"])
    path = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    for stored in (ckpt["model_config"], ckpt["hyper_parameters"]):
        stored.pop("position_encoding")
        stored.pop("relative_bias_scale", None)
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def balance_dir(collected_dir):
    """cartpole-balance (a task unseen in pretraining, seen domain), replay ids 1 and 2."""
    res = run_script("dmc_data.py", "collect", "--domain", "cartpole", "--task", "balance", "--num_steps", "1000",
                     "--replay_id", "1", "2", "--data_dir_prefix", str(collected_dir), "--quiet")
    assert res.returncode == 0, res.stderr
    return collected_dir


def finetune_args(data_dir, out_dir, *extra):
    return ["--epochs", "1", "--num_steps", "1000", "--domain", "cartpole", "--task", "balance",
            "--source_data_type", "rand", "--data_dir_prefix", str(data_dir), "--output_dir", str(out_dir),
            "--obs_type", "state", "--select_rate", "0.5", "--eval_episodes", "2", "--data.batch_size", "8",
            "--data.num_workers", "0", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
            "--quiet", *extra]


def test_bc_from_pretrained_end_to_end(pretrained, balance_dir, tmp_path):
    cli, report = run_in_process(dmc_downstream.main, finetune_args(
        balance_dir, tmp_path, "--model_type", "naive", "--no_load_action", "--load_model_from", str(pretrained),
        "--epochs", "2"))
    module = cli.model
    # Sizes came from the checkpoint, not the paper defaults.
    assert (module.hparams.n_layer, module.hparams.n_embd, module.hparams.context_length) == (1, 32, 6)
    # Explicit rules: trunk and encoder loaded; action encoder (no_load_action) and the new BC head re-initialised.
    assert any(n.startswith("model.blocks.") for n in module.loaded)
    assert any(n.startswith("model.obs_encoder.") for n in module.loaded)
    assert {n.split(".")[1] for n in module.reinitialised} == {"action_encoder", "bc_objective"}
    # cartpole was seen in pretraining: its observations keep their slot, so the whole state encoder transfers.
    assert module.obs_layout == SlotLayout({"cartpole": (0, 5), "pendulum": (5, 3)})
    assert module.model.config.obs_dim == 8 and module.make_policy().obs_layout is module.obs_layout
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert RESULT_KEYS <= saved.keys() and saved == json.loads(json.dumps(report))
    assert saved["pretrained_from"] == str(pretrained) and saved["target_return"] is None
    assert saved["num_episodes"] == 2 and saved["seeds"] == [2000, 2001] and saved["selection_seeds"] == [1000, 1001]
    assert saved["mean"] == pytest.approx(np.mean(saved["returns"]))
    assert saved["ci95"][0] <= saved["mean"] <= saved["ci95"][1]
    assert saved["best"]["checkpoint"].endswith(".ckpt") and len(saved["best"]["returns"]) == 2
    assert (tmp_path / "checkpoints" / "last.ckpt").exists() and (tmp_path / "config.yaml").exists()
    # The callback logged the selection rollouts after each validation epoch (not in the sanity check).
    logged = scalars(tmp_path)
    for key in ("eval/return_mean", "eval/return_std", "eval/return_iqm", "eval/steps_per_sec"):
        assert len(logged[key]) == 2, key
    assert saved["best"]["selection_score"] == pytest.approx(max(logged["eval/return_mean"]))

    # trainer.test loaded each checkpoint itself: the module now holds the best checkpoint's weights, and each
    # report entry is the rollouts of its own checkpoint's weights.
    best = torch.load(saved["best"]["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    last = torch.load(saved["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert all(torch.equal(v, best[k]) for k, v in module.state_dict().items())
    env_kwargs = cli.datamodule.env_kwargs()
    assert env_kwargs == {"action_repeat": 4, "pixels": False, "height": 84, "width": 84, "camera_id": None,
                          "fast_render": False}
    for entry, state in ((saved, last), (saved["best"], best)):
        module.load_state_dict(state)
        res = evaluate(module.eval().make_policy(), lambda s: make_env("cartpole", "balance", seed=s, **env_kwargs),
                       entry["seeds"])
        np.testing.assert_allclose(entry["returns"], res.returns, rtol=1e-6)


def test_return_conditioned_from_scratch_with_the_rtg_preset(balance_dir, tmp_path):
    cli, report = run_in_process(dmc_downstream.main, ["--config", os.path.join(ROOT, "configs/downstream/rtg.yaml"),
                                                       *finetune_args(balance_dir, tmp_path, "--model.n_layer", "1",
                                                       "--model.n_embd", "32", "--model.n_head", "2",
                                                       "--context_length", "6", "--video")])  # fmt: skip
    assert report["pretrained_from"] is None and cli.model.loaded == []
    assert report["model_type"] == "reward_conditioned" and cli.model.hparams.no_load_action  # from the preset
    assert cli.datamodule.hparams.select_rate == 0.5  # a flag after --config overrides the preset
    assert (tmp_path / "videos" / "eval_episode0.mp4").stat().st_size > 1000  # --video: the first test episode
    assert report["target_return"] == 1000  # the reference table's cartpole_balance target
    assert cli.datamodule.hparams.rand_select
    assert "rtg_objective" in dict(cli.model.objectives.named_children())


def test_the_pretraining_checkpoint_is_read_once(pretrained):
    """The CLI's read (model sizes) and the module's (layout, weights) share one ``torch.load``."""
    first = read_pretrained(str(pretrained))
    assert read_pretrained(str(pretrained)) is first  # the second read is the same object: no second load
    assert first.model_config["n_embd"] == 32 and any(k.startswith("model.blocks.") for k in first.state_dict)
    assert first.obs_layout == SlotLayout({"cartpole": (0, 5), "pendulum": (5, 3)})
    forget_pretrained()  # released after loading: the next run reads the file again
    assert read_pretrained(str(pretrained)) is not first
    forget_pretrained()


def test_checkpoint_that_does_not_fit_is_a_clear_error(pretrained, balance_dir, tmp_path):
    res = run_script("dmc_downstream.py", *finetune_args(balance_dir, tmp_path, "--load_model_from", str(pretrained),
                                                         "--model.n_embd", "64"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "n_embd: checkpoint 32, this run 64" in res.stderr
    res = run_script("dmc_downstream.py", *finetune_args(balance_dir, tmp_path, "--load_model_from",
                                                         str(tmp_path / "nope.ckpt")))
    assert res.returncode == 2 and "no such checkpoint" in res.stderr and "Traceback" not in res.stderr
    pix = tmp_path / "pix"
    assert run_script("dmc_data.py", "collect", "--domain", "cartpole", "--task", "balance", "--num_steps", "250",
                      "--replay_id", "1", "2", "--pixels", "--fast_render", "--data_dir_prefix", str(pix),
                      "--quiet").returncode == 0
    res = run_script("dmc_downstream.py", *finetune_args(pix, tmp_path, "--obs_type", "pixels",
                                                         "--load_model_from", str(pretrained)))
    assert res.returncode == 2 and "obs_type: checkpoint 'state', this run 'pixels'" in res.stderr


def test_checkpoints_from_before_position_encoding_finetune_with_their_positions(pretrained_before_issue_13,
                                                                                balance_dir, tmp_path):
    cli, _ = run_in_process(dmc_downstream.main, finetune_args(balance_dir, tmp_path, "--load_model_from",
                                                               str(pretrained_before_issue_13)))
    assert cli.model.model.config.position_encoding == "absolute"  # the checkpoint's, not today's default
    assert "model.pos_emb" in cli.model.loaded
    assert {n.split(".")[1] for n in cli.model.reinitialised} <= {"action_encoder", "bc_objective"}  # new head,
    # and the action encoder where the action slots differ; every trunk tensor was loaded


def test_resuming_with_other_positions_is_a_clear_error(pretrained_before_issue_13, collected_dir, tmp_path):
    res = run_script("dmc_pretrain.py", *PRETRAIN_ARGS, "--epochs", "2", "--output_dir", str(tmp_path),
                     "--data_dir_prefix", str(collected_dir), "--ckpt_path", str(pretrained_before_issue_13))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "position_encoding: checkpoint 'absolute', this run 'relative_bias'" in res.stderr
    assert "--model.position_encoding absolute" in res.stderr


@pytest.mark.parametrize("preset", ["bc", "rtg", "few_shot"])
def test_presets_name_only_real_arguments(preset):
    with open(os.path.join(ROOT, "configs", "downstream", f"{preset}.yaml")) as f:
        config = yaml.safe_load(f)
    assert set(config) == {"model", "data"}
    assert set(config["model"]) <= set(inspect.signature(DownstreamModule).parameters)
    assert set(config["data"]) <= set(inspect.signature(DownstreamDataModule).parameters)
    assert not set(config["model"]) & {"n_layer", "n_head", "n_embd", "context_length"}  # the checkpoint's


def test_selection_top_and_random():
    returns = np.array([5.0, 1.0, 9.0, 3.0, 7.0])
    np.testing.assert_array_equal(select_episodes(returns, 2, randomly=False, seed=0), [2, 4])
    picked = select_episodes(returns, 2, randomly=True, seed=0)
    assert len(set(picked)) == 2 and np.array_equal(picked, select_episodes(returns, 2, randomly=True, seed=0))
    assert len(select_episodes(returns, 0, randomly=False, seed=0)) == 1  # at least one episode


@pytest.mark.parametrize("freeze", [True, False])
def test_a_real_fit_moves_the_right_weights(tmp_path, freeze):
    """A tiny Trainer fit (the real optimiser step and its hooks): a frozen encoder stays put and everything else
    learns; the EMA target encoder never moves in finetuning (no forward-dynamics objective), though the update
    would move it once the online encoder has moved."""
    write_synthetic(tmp_path / "a.h5", [20, 20], obs_dim=5, action_dim=1)
    torch.manual_seed(0)
    module = DownstreamModule(domain="cartpole", task="balance", obs_type="state", obs_dim=5, action_dim=1,
                              n_layer=1, n_head=2, n_embd=32, context_length=6, dropout=0.0, freeze_encoder=freeze,
                              lr=1e-2, lr_schedule="constant")
    module.train()
    assert module.model.obs_encoder.training != freeze
    loader = window_loader(EpisodeWindowDataset([TrajectoryFile(str(tmp_path / "a.h5"))], 6), 8, 0, shuffle=True)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer = Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 3
    for name, p in module.named_parameters():
        moved = not torch.equal(before[name], p)
        if name.startswith("model.target_obs_encoder.") or (freeze and name.startswith("model.obs_encoder.")):
            assert not moved, name
        elif name not in ("model.mask_token",):  # the mask token is only used by masked pretraining
            assert moved, name
    if not freeze:  # the test has power: had the EMA hook run, the target would have followed the encoder
        ema_update(module.model.target_obs_encoder, module.model.obs_encoder, 0.5)
        assert not torch.equal(before["model.target_obs_encoder.net.0.weight"],
                               module.model.target_obs_encoder.net[0].weight)
