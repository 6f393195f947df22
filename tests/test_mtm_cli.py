"""MTM through the real CLI on tiny dm_control data: ``dmc_pretrain.py --method mtm`` (its metrics, statistics
and checkpoint), every ``dmc_downstream.py --mode`` from that checkpoint, heteromodal pretraining, clear errors
for modes a SMART checkpoint does not have, and per-rank masks under two-process DDP."""

import json
import os

import pytest
import torch
from conftest import ROOT, run_in_process, run_script, scalars

import dmc_downstream
import dmc_pretrain
from control_pretrain.lit.mtm_module import mask_seed
from control_pretrain.lit.weights import read_pretrained
from control_pretrain.objectives.mtm import MaskedReconstructionObjective

TINY = ["--multi_config", "configs/pretrain_configs/multipretrain_source_test.json", "--train_replay_id", "1",
        "--num_steps", "1000", "--obs_type", "state", "--model.n_embd", "32", "--model.n_head", "2", "--context_length",
        "6", "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.limit_train_batches", "3",
        "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1", "--quiet"]
TINY_MTM = ["--method", "mtm", *TINY, "--model.n_enc_layer", "1", "--model.n_dec_layer", "1"]
PROBES = ("bc", "rcbc", "id", "fd", "goal")


@pytest.fixture(scope="module")
def mtm_ckpt(collected_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("mtm")
    cli = run_in_process(dmc_pretrain.main, [*TINY_MTM, "--epochs", "1", "--output_dir", str(out),
                                             "--data_dir_prefix", str(collected_dir)])
    return cli, out


def finetune(data_dir, out_dir, ckpt, *extra):
    return run_in_process(dmc_downstream.main, [
        "--epochs", "1", "--num_steps", "1000", "--domain", "cartpole", "--task", "swingup", "--source_data_type",
        "rand", "--train_replay_id", "2", "--val_replay_id", "1", "--data_dir_prefix", str(data_dir), "--output_dir",
        str(out_dir), "--obs_type", "state", "--eval_episodes", "2", "--data.batch_size", "8", "--data.num_workers",
        "0", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--quiet",
        "--load_model_from", str(ckpt), *extra])


def test_pretraining_logs_reconstruction_and_probes_and_stores_its_statistics(mtm_ckpt):
    cli, out = mtm_ckpt
    logged = scalars(out)
    for m in ("obs", "rtg", "act"):
        for part in ("all", "masked", "visible"):
            assert f"val/recon_{part}_{m}" in logged, sorted(logged)
    for name in PROBES:
        values = logged[f"val/probe_{name}_mse"]
        assert len(values) == 1 and 0 < values[0] < 100
    pretrained = read_pretrained(str(out / "checkpoints" / "last.ckpt"))
    assert pretrained.model_config["trunk"] == "mtm" and pretrained.model_config["mae_split"]
    state = pretrained.state_dict
    # The return token's statistics are the training split's, not the identity.
    train = cli.datamodule.train_set
    values = train.rtg_avg[train.starts]
    assert float(state["model.rtg_mean"]) == pytest.approx(float(values.mean()), rel=1e-5) != 0.0
    assert float(state["model.rtg_std"]) == pytest.approx(float(values.std()), rel=1e-4)
    assert float(state["model.obs_normalizer.std"].max()) != 1.0  # observation statistics too


@pytest.mark.parametrize("mode", ["bc", "rcbc", "id", "fd", "probes"])
def test_every_mode_runs_from_the_mtm_checkpoint(mtm_ckpt, collected_dir, tmp_path, mode):
    _, out = mtm_ckpt
    cli, report = finetune(collected_dir, tmp_path, out / "checkpoints" / "last.ckpt", "--mode", mode)
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved == json.loads(json.dumps(report))  # the file is what main returned
    assert saved["mode"] == mode and cli.model.hparams.mode == mode
    assert any(n.startswith("model.blocks.") for n in cli.model.loaded)  # the trunk came from the checkpoint
    # finetuning masks came from the module's seeded generators, not the global RNG (the last one: the test's)
    assert cli.model.objective("mtm").generator is cli.model.evaluation_generator
    if mode in ("bc", "rcbc"):
        assert len(saved["returns"]) == 2 and saved["model_type"] == mode
        if mode == "rcbc":
            assert saved["target_rtg_avg"] > 0
    else:
        wanted = PROBES if mode == "probes" else (mode,)
        assert set(saved["metrics"]) == {f"{n}_mse" for n in wanted}
        assert all(0 <= v < 100 for v in saved["metrics"].values())


def test_smart_checkpoints_have_no_offline_modes(collected_dir, tmp_path):
    run_in_process(dmc_pretrain.main, [*TINY, "--model.n_layer", "1", "--epochs", "1", "--output_dir",
                                       str(tmp_path / "smart"), "--data_dir_prefix", str(collected_dir)])
    ckpt = tmp_path / "smart" / "checkpoints" / "last.ckpt"
    res = run_script("dmc_downstream.py", "--load_model_from", str(ckpt), "--mode", "id", "--domain", "cartpole",
                     "--task", "swingup", "--data_dir_prefix", str(collected_dir), "--output_dir", str(tmp_path / "x"))
    assert res.returncode == 2 and "--mode id needs a masked trajectory (MTM, MaskDP) checkpoint" in res.stderr
    assert "Traceback" not in res.stderr


def test_heteromodal_pretraining_never_shows_or_scores_unlabelled_actions(collected_dir, tmp_path):
    cli = run_in_process(dmc_pretrain.main, [*TINY_MTM, "--epochs", "1", "--output_dir", str(tmp_path),
                                             "--data_dir_prefix", str(collected_dir),
                                             "--data.action_label_fraction", "0.5"])
    train = cli.datamodule.train_set
    batch = train.__getitems__(range(len(train)))
    unlabelled = ~batch["has_action"]
    assert unlabelled.any() and batch["has_action"].any()
    assert (batch["actions"][unlabelled] == 0).all()
    cli.model.eval()
    objective = cli.model.mtm
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = objective(cli.model.model, batch, {"generator": generator})
    act = list(cli.model.model.modalities).index("act")
    assert not objective.last_visible[unlabelled][..., act].any()
    # The action loss is the labelled windows' alone: recomputed on them only, it is the same number.
    labelled = {k: v[~unlabelled] if torch.is_tensor(v) and len(v) == len(unlabelled) else v for k, v in batch.items()}
    with torch.no_grad():
        alone = objective(cli.model.model, labelled, {"generator": None, "visible": objective.last_visible[~unlabelled]})
    assert float(out["recon_all_act"]) == pytest.approx(float(alone["recon_all_act"]), rel=1e-5)


def test_two_processes_draw_their_own_masks_from_the_seed(collected_dir, tmp_path):
    probe = [{"class_path": "ddp_probe.RecordMasks", "init_args": {"out_dir": str(tmp_path / "masks")}}]
    res = run_script("dmc_pretrain.py", *TINY_MTM, "--epochs", "1", "--output_dir", str(tmp_path),
                     "--data_dir_prefix", str(collected_dir), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                     "--trainer.strategy", "ddp", "--seed_everything", "7", "--trainer.callbacks", json.dumps(probe),
                     env={"PYTHONPATH": os.path.join(ROOT, "tests"), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((tmp_path / "masks" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["masks"] != ranks[1]["masks"]  # each rank its own masks
    for record in ranks:  # ... and each is the pure function of (seed, rank, step) the module documents
        for step, mask in enumerate(record["masks"]):
            generator = torch.Generator().manual_seed(mask_seed(7, record["rank"], step))
            expected = MaskedReconstructionObjective().sample_visible({"actions": torch.zeros(len(mask), 6, 1)},
                                                                      ("obs", "rtg", "act"), generator)
            assert expected.tolist() == mask
