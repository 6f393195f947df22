"""Checkpoints from elsewhere never run code unless the user says they trust them (issue 19 item 6, safe_load.py).

A hostile checkpoint (a real one plus an object whose unpickling creates a marker file) is refused through the real
CLI by ``dmc_downstream.py --load_model_from``, ``dmc_pretrain.py --ckpt_path last`` and ``dmc_online.py
--encoder_from``: exit 2, one message naming the file and ``--trust_checkpoint``, no traceback, no marker. With
``--trust_checkpoint`` the same commands proceed (and the marker proves the file really runs code). Every checkpoint
the pipeline writes (SMART and MTM pretraining, BC finetuning) loads without the flag."""

import os

import pytest
import torch
from conftest import run_in_process, run_script

import dmc_downstream
import dmc_pretrain
from control_pretrain.errors import CheckpointError
from control_pretrain.safe_load import load_checkpoint, trusted, trusting, unsafe_globals

TINY = ["--multi_config", "configs/pretrain_configs/multipretrain_source_test.json", "--source_data_type", "rand",
        "--train_replay_id", "1", "--num_steps", "1000", "--obs_type", "state", "--context_length", "6",
        "--model.n_embd", "32", "--model.n_head", "2", "--data.batch_size", "8", "--data.num_workers", "0",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--quiet"]
SMART = [*TINY, "--model.n_layer", "1"]
MTM = ["--method", "mtm", *TINY, "--model.n_enc_layer", "1", "--model.n_dec_layer", "1"]


class OpenOnLoad:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff the checkpoint's code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_copy(real, dest, marker):
    """``real`` with one more entry whose unpickling creates ``marker``; otherwise a working checkpoint."""
    ckpt = torch.load(real, map_location="cpu", weights_only=True)
    ckpt["payload"] = OpenOnLoad(marker)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    torch.save(ckpt, dest)
    return str(dest)


def pretrain(args, out, data_dir, *extra):
    return run_in_process(dmc_pretrain.main, [*args, "--epochs", "1", "--output_dir", str(out),
                                              "--data_dir_prefix", str(data_dir), *extra])


def finetune_args(data_dir, out, ckpt, *extra):
    return ["--epochs", "1", "--num_steps", "1000", "--domain", "cartpole", "--task", "swingup", "--source_data_type",
            "rand", "--train_replay_id", "2", "--val_replay_id", "1", "--data_dir_prefix", str(data_dir),
            "--output_dir", str(out), "--obs_type", "state", "--eval_episodes", "1", "--data.batch_size", "8",
            "--data.num_workers", "0", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
            "--quiet", "--load_model_from", str(ckpt), *extra]


@pytest.fixture(scope="module")
def smart_run(collected_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("smart")
    pretrain(SMART, out, collected_dir)
    return out


def assert_refused(res, path, marker):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert f"error: {path}: not loaded" in res.stderr and "io.open" in res.stderr and "--trust_checkpoint" in \
        res.stderr
    assert not os.path.exists(marker)


def test_finetuning_refuses_a_checkpoint_that_runs_code_unless_trusted(smart_run, collected_dir, tmp_path):
    marker = tmp_path / "MARKER"
    bad = hostile_copy(smart_run / "checkpoints" / "last.ckpt", tmp_path / "from_elsewhere.ckpt", marker)
    assert_refused(run_script("dmc_downstream.py", *finetune_args(collected_dir, tmp_path / "refused", bad)), bad,
                   marker)
    out = tmp_path / "trusted"
    _, report = run_in_process(dmc_downstream.main, finetune_args(collected_dir, out, bad, "--trust_checkpoint"))
    assert os.path.exists(marker)  # the file is hostile: trusting it ran its code
    assert report["pretrained_from"] == bad and report["best"]["checkpoint"]  # ... and the run went on
    assert not trusted()  # the in-process run's trust ends with it
    assert "trust_checkpoint: false" in (out / "config.yaml").read_text()  # a rerun with --config trusts nothing
    names = os.listdir(out / "checkpoints")
    assert "last.ckpt" in names and any(n.startswith("best") for n in names)
    for name in names:  # what finetuning writes loads without the flag
        path = str(out / "checkpoints" / name)
        assert unsafe_globals(path) == [] and "state_dict" in load_checkpoint(path, trust=False)


def test_resume_refuses_a_last_ckpt_that_runs_code_unless_trusted(smart_run, collected_dir, tmp_path):
    marker = tmp_path / "MARKER"
    out = tmp_path / "run"
    last = hostile_copy(smart_run / "checkpoints" / "last.ckpt", out / "checkpoints" / "last.ckpt", marker)
    resume = [*SMART, "--epochs", "2", "--output_dir", str(out), "--data_dir_prefix", str(collected_dir),
              "--ckpt_path", "last"]
    assert_refused(run_script("dmc_pretrain.py", *resume), last, marker)
    cli = run_in_process(dmc_pretrain.main, [*resume, "--trust_checkpoint"])
    assert os.path.exists(marker) and cli.trainer.current_epoch == 2  # resumed after epoch 0, trained epoch 1
    assert load_checkpoint(last, trust=False)["epoch"] == 1  # the new last.ckpt is the run's own, and plain


def test_online_encoder_from_refuses_a_checkpoint_that_runs_code(smart_run, tmp_path):
    marker = tmp_path / "MARKER"
    bad = hostile_copy(smart_run / "checkpoints" / "last.ckpt", tmp_path / "cnn.ckpt", marker)
    res = run_script("dmc_online.py", "--agent", "sac", "--obs_type", "pixels", "--domain", "cartpole", "--task",
                     "swingup", "--num_steps", "10", "--output_dir", str(tmp_path / "run"), "--encoder_from", bad)
    assert_refused(res, bad, marker)


def test_checkpoints_of_each_method_load_without_the_flag(smart_run, collected_dir, tmp_path):
    """SMART (the fixture) and MTM pretraining; MaskDP is the MTM module with other settings, MLR the SMART one
    with another objective; finetuning's are checked in the test above. Nothing beyond torch's weights-only
    defaults is needed: the allowlist is for older files."""
    pretrain(MTM, tmp_path / "mtm", collected_dir)
    for run in (smart_run, tmp_path / "mtm"):
        names = os.listdir(run / "checkpoints")
        assert "last.ckpt" in names and any(n.startswith("best") for n in names)
        for name in names:
            path = str(run / "checkpoints" / name)
            assert unsafe_globals(path) == [], path
            assert "state_dict" in load_checkpoint(path, trust=False)


def test_settings_objects_are_saved_as_dicts_and_old_files_with_them_still_load(tmp_path):
    from control_pretrain.lit.mtm_module import MTMPretrainModule
    from control_pretrain.objectives.mtm import MaskedReconstructionConfig

    config = MaskedReconstructionConfig(masks=["bc"])
    module = MTMPretrainModule(obs_dim=3, action_dim=2, n_embd=16, n_head=2, n_enc_layer=1, n_dec_layer=1,
                               context_length=4, objective=config)
    assert module.hparams["objective"]["masks"] == ["bc"]  # a dict: the checkpoint needs no allowlist
    torch.save({"state_dict": {}, "hyper_parameters": dict(module.hparams)}, tmp_path / "new.ckpt")
    assert unsafe_globals(str(tmp_path / "new.ckpt")) == []
    old = tmp_path / "old.ckpt"  # as written before: the dataclass itself (the allowlist's one entry)
    torch.save({"state_dict": {}, "hyper_parameters": {"objective": config}}, old)
    assert load_checkpoint(str(old), trust=False)["hyper_parameters"]["objective"] == config


def test_unreadable_and_missing_files_are_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt: not a readable checkpoint"):
        load_checkpoint(str(garbage))
    with pytest.raises(CheckpointError, match="nope.ckpt: no such file"):
        load_checkpoint(str(tmp_path / "nope.ckpt"))


def test_saved_agents_and_snapshots_are_never_trusted(tmp_path):
    """Files only this project writes (collect --agent_path, dmc_online.py's state.pt) have no flag: a refused
    one says what to do instead."""
    from control_pretrain.agents.sac import SACAgent

    marker = tmp_path / "MARKER"
    path = tmp_path / "agent.pt"
    torch.save({"config": {}, "payload": OpenOnLoad(marker)}, path)
    with pytest.raises(CheckpointError, match="save the agent again") as err:
        SACAgent.load(str(path))
    assert "--trust_checkpoint" not in str(err.value) and not os.path.exists(marker)
    with trusting(True), pytest.raises(CheckpointError):  # --trust_checkpoint of the command does not reach them
        SACAgent.load(str(path))
    assert not os.path.exists(marker)
