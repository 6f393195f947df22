"""SMART pretraining through the real CLI on tiny collected data: fit -> checkpoint -> reload -> identical outputs
once per observation type (every objective alone: test_objective_contract.py); metrics; resume; method presets
and config stacking; config.yaml reproduces the run."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_ARGS, run_in_process, run_script, scalars

import dmc_pretrain
from control_pretrain.data.datamodules.pretrain import MultiTaskDataModule
from control_pretrain.lit.pretrain_module import PretrainModule

TINY = TINY_ARGS
OBJECTIVES = {"forward": "--model.forward_weight", "inverse": "--model.inverse_weight",
              "masked_hindsight": "--model.masked_hindsight_weight"}


def pretrain_args(data_dir, out_dir, obs_type="state", epochs=1, extra=()):
    return ["--multi_config", "configs/pretrain_configs/multipretrain_source_test.json", "--source_data_type", "rand",
            "--train_replay_id", "1", "--epochs", str(epochs), "--num_steps", "1000", "--model_type", "naive",
            "--output_dir", str(out_dir), "--data_dir_prefix", str(data_dir), "--obs_type", obs_type, *TINY, *extra]


def fixed_batch(cli):
    dm = cli.datamodule
    return dm.val_set.__getitems__(np.arange(4))


@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_cli_fit_checkpoint_reload(obs_type, collected_dir, pixel_dir, tmp_path):
    """The whole CLI once per observation type; each objective alone goes through test_objective_contract.py."""
    data = collected_dir if obs_type == "state" else pixel_dir
    fixed_masks = ["--model.mask_actions", "2", "--model.mask_obs", "1"]  # the curriculum is per-epoch state
    cli = run_in_process(dmc_pretrain.main, pretrain_args(data, tmp_path, obs_type, extra=fixed_masks))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.exists() and (tmp_path / "config.yaml").exists()
    trained = cli.model.eval()
    assert {o.name for o in trained.objectives.values()} == set(OBJECTIVES)
    # objectives are stored as their {class_path, init_args} specs: the checkpoint loads without unpickling code
    hparams = torch.load(last, weights_only=True)["hyper_parameters"]
    assert [o["class_path"].rsplit(".", 1)[1] for o in hparams["objectives"]] == [
        "ForwardDynamicsObjective", "InverseDynamicsObjective", "MaskedHindsightControlObjective"]
    reloaded = PretrainModule.load_from_checkpoint(last, map_location="cpu").eval()
    batch = fixed_batch(cli)
    torch.manual_seed(0)
    a = trained.compute_losses(batch)
    torch.manual_seed(0)
    b = reloaded.compute_losses(batch)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for (n1, p1), (n2, p2) in zip(trained.state_dict().items(), reloaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_metrics_and_mask_curriculum(collected_dir, tmp_path):
    run_in_process(dmc_pretrain.main, pretrain_args(collected_dir, tmp_path, epochs=2,
                                                    extra=["--trainer.limit_train_batches", "4"]))
    tags = scalars(tmp_path)
    for name in ("forward", "inverse", "masked_hindsight"):
        assert f"train/{name}_loss" in tags and f"val/{name}_loss" in tags
    for tag in ("train/loss", "val/loss", "train/device/samples_per_sec", "train/data_wait_frac", "lr-AdamW/pg1"):
        assert tag in tags, tag
    # K=6, E=2: RMHC masks max(1, 6*1/2)=3 then 6 actions; observations min(3, .) = 3, 3
    assert tags["train/mask_actions"] == [3.0, 6.0] and tags["train/mask_obs"] == [3.0, 3.0]
    assert all(np.isfinite(v).all() for v in tags.values())
    lr = tags["lr-AdamW/pg1"]
    assert lr[-1] < max(lr) and max(lr) == pytest.approx(6e-4)  # cosine decay from the peak


def test_resume_continues_where_it_stopped(collected_dir, tmp_path):
    run_in_process(dmc_pretrain.main, pretrain_args(collected_dir, tmp_path, epochs=1))
    first = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    cli = run_in_process(dmc_pretrain.main, pretrain_args(collected_dir, tmp_path, epochs=2,
                                                          extra=["--ckpt_path", "last"]))
    second = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert (first["epoch"], first["global_step"]) == (0, 3)
    assert (second["epoch"], second["global_step"]) == (1, 6)
    assert cli.trainer.current_epoch == 2
    assert any(f.startswith("best-epoch01") for f in os.listdir(tmp_path / "checkpoints"))


def test_rerun_into_the_same_folder_overwrites_last_ckpt(collected_dir, tmp_path):
    run_in_process(dmc_pretrain.main, pretrain_args(collected_dir, tmp_path, epochs=1))
    run_in_process(dmc_pretrain.main, pretrain_args(collected_dir, tmp_path, epochs=2))
    files = os.listdir(tmp_path / "checkpoints")
    assert "last.ckpt" in files and not any("-v1" in f for f in files)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1


def test_config_yaml_reproduces_the_run(collected_dir, tmp_path):
    run_in_process(dmc_pretrain.main, pretrain_args(collected_dir, tmp_path / "a"))
    run_in_process(dmc_pretrain.main, ["--config", str(tmp_path / "a" / "config.yaml"),
                                       "--trainer.default_root_dir", str(tmp_path / "b")])
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_original_readme_command_parses():
    res = run_script("dmc_pretrain.py", "--multi_config", "configs/pretrain_configs/multipretrain_source_v1.json",
                     "--source_data_type", "rand", "--train_replay_id", "5", "--epochs", "10", "--num_steps", "80000",
                     "--model_type", "naive", "--output_dir", "./outputs/pretrain_explore/", "--data_dir_prefix", "data",
                     "--print_config")
    assert res.returncode == 0, res.stderr
    for line in ("max_epochs: 10", "default_root_dir: ./outputs/pretrain_explore/", "train_replay_id: 5",
                 "num_steps: 80000", "multi_config: configs/pretrain_configs/multipretrain_source_v1.json",
                 "source_data_type: rand", "n_layer: 8", "n_embd: 256", "context_length: 30", "ema_tau: 0.005"):
        assert line in res.stdout, line
    assert "model_type" not in res.stdout  # accepted and ignored: pretraining trains no policy head
    assert "--model_type naive ignored" in res.stderr


def test_unknown_method_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_in_process(dmc_pretrain.main, ["--method", "nope", "--print_config"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert "--method nope" in err and "smart" in err


def test_method_preset_then_config_then_flags_last_wins(tmp_path, capsys):
    """--method smart loads configs/methods/smart.yaml; --config stacks on top; later flags win; --method=smart and
    no --method at all give the same config."""
    override = tmp_path / "small.yaml"
    override.write_text(yaml.safe_dump({"model": {"n_layer": 2, "n_embd": 64}}))

    def printed(*args: str) -> dict:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            run_in_process(dmc_pretrain.main, [*args, "--print_config"])
        assert exit_.value.code in (0, None)
        return yaml.safe_load(capsys.readouterr().out)["model"]

    preset = yaml.safe_load(Path("configs/methods/smart.yaml").read_text())["model"]
    default = printed()
    assert {k: default[k] for k in preset} == preset
    assert printed("--method=smart") == default
    stacked = printed("--method", "smart", "--config", str(override), "--model.n_embd", "96", "--model.ema_tau", "0.1",
                      "--model.inverse_weight", "0.5", "--model.masked_hindsight_weight", "0")
    assert (stacked["n_layer"], stacked["n_embd"]) == (2, 96)
    assert stacked["n_head"] == preset["n_head"]  # untouched keys keep the preset's value
    # the flat objective flags of earlier versions land in the preset's objective list; weight 0 leaves one out
    forward, inverse = stacked["objectives"]
    assert forward["class_path"].endswith("ForwardDynamicsObjective") and forward["init_args"]["config"]["ema_tau"] == 0.1
    assert inverse["class_path"].endswith("InverseDynamicsObjective") and inverse["init_args"]["weight"] == 0.5


def test_missing_files_are_all_named_before_training(tmp_path):
    res = run_script("dmc_pretrain.py", "--multi_config", "configs/pretrain_configs/multipretrain_source_v1.json",
                     "--train_replay_id", "2", "--data_dir_prefix", str(tmp_path), "--output_dir", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "10 dataset file(s) missing" in res.stderr
    assert "walker_run_s2.h5" in res.stderr and "hopper_hop_s1.h5" in res.stderr
    assert "dmc_data.py collect" in res.stderr


def test_validation_episodes_are_held_out(collected_dir):
    dm = MultiTaskDataModule(data_dir_prefix=str(collected_dir), train_replay_id=2, num_steps=1000, obs_type="state",
                             context_length=10, val_fraction=0.25)
    dm.setup()
    def episodes(ds):
        files = ds.window_file
        local = ds.starts - ds.file_offsets[files]
        return {(int(f), int(ds.files[f].index.episode_of_step()[s])) for f, s in zip(files, local)}
    train, val = episodes(dm.train_set), episodes(dm.val_set)
    assert train and val and not (train & val)
    assert len(val) == 4  # one of the 4 episodes of each of the 4 files
    with pytest.raises(Exception, match="also a training replay id"):
        MultiTaskDataModule(data_dir_prefix=str(collected_dir), train_replay_id=2, val_replay_id=2, obs_type="state")
    dm = MultiTaskDataModule(data_dir_prefix=str(collected_dir), train_replay_id=1, val_replay_id=2, obs_type="state",
                             num_steps=1000, context_length=10)
    dm.setup()
    assert {f.path for f in dm.val_set.files}.isdisjoint({f.path for f in dm.train_set.files})
