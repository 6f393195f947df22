"""studies/pretraining/: the typed YAML presets and the report, on the committed cell JSONs."""

import glob
import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest

from control_pretrain.errors import ArgumentError

STUDY = os.path.join(os.path.dirname(__file__), "..", "studies", "pretraining")
RESULTS = os.path.join(STUDY, "results", "cpu")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"study_{name}", os.path.join(STUDY, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


preset = _load("preset")
report = _load("report")


def test_shipped_presets_load_typed():
    assert preset.preset_names() == ["compare", "compare_paper", "cpu", "mlr_offline", "objectives", "paper", "transfer"]
    cpu, paper = preset.load_preset("cpu"), preset.load_preset("paper")
    assert cpu.name == "cpu" and cpu.episodes == (10, 50) and cpu.seeds == (1, 2, 3)
    assert cpu.model == {"n_layer": 2, "n_head": 2, "n_embd": 64} and cpu.target_returns == {"reacher-easy": 1000.0}
    assert list(cpu.tasks) == ["unseen_task", "unseen_domain", "seen"]  # order = report and priority order
    assert cpu.task_group("reacher-easy") == "unseen_domain"
    assert paper.extra_train[-2:] == ("--trainer.devices", "1") and paper.demo_action_noise == 0.1
    assert isinstance(paper.pretrain_sac_steps, int) and paper.pretrain_sac_steps == 1_000_000


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return str(path)


def test_preset_errors_name_file_and_key(tmp_path):
    with open(os.path.join(preset.PRESET_DIR, "cpu.yaml")) as f:
        good = f.read()
    assert preset.load_preset(_write(tmp_path, good)).name == "mine"
    with pytest.raises(ArgumentError, match=r"mine.yaml: unknown key\(s\) batchsize"):
        preset.load_preset(_write(tmp_path, good + "batchsize: 3\n"))
    with pytest.raises(ArgumentError, match=r"mine.yaml: seeds\[1\]: expected int, found 'two'"):
        preset.load_preset(_write(tmp_path, good.replace("seeds: [1, 2, 3]", "seeds: [1, two]")))
    with pytest.raises(ArgumentError, match=r"missing key\(s\) val_every"):
        preset.load_preset(_write(tmp_path, good.replace("val_every: 100\n", "")))
    with pytest.raises(ArgumentError, match="--preset gpu: no preset file.*compare, compare_paper, cpu, mlr_offline"):
        preset.load_preset("gpu")
    with pytest.raises(ArgumentError, match="score: expected one of return, demonstrator, found 'expert'"):
        preset.load_preset(_write(tmp_path, good + "score: expert\n"))


def test_run_order_and_scores_follow_the_preset():
    """Blocks run unseen before seen, fewer episodes first; the transfer preset scores against the demonstrator."""
    run = _load("run")
    transfer = preset.load_preset("transfer")
    order = [(m, e, g) for m, e, g in run.priority(transfer)]
    assert order[:3] == [("bc", e, ("unseen_task", "unseen_domain")) for e in (5, 10, 20)]
    assert order[3:] == [("bc", e, ("seen",)) for e in (5, 10, 20)]
    assert len(run.all_cells(transfer)) == 6 * 3 * 3 * 5  # tasks x episodes x inits x seeds
    tasks = [t for ts in transfer.tasks.values() for t in ts]
    data = {f"demos_train/{t}": {"return_mean": 500.0} for t in tasks}
    assert set(report.returns_per_score(transfer, data, tasks).values()) == {5.0}  # 500 -> 100 points
    assert set(report.returns_per_score(preset.load_preset("cpu"), {}, tasks).values()) == {10.0}
    with pytest.raises(ValueError, match="demonstrator needs the demonstrations' returns of walker-walk"):
        report.returns_per_score(transfer, {}, ["walker-walk"])


def test_inits_with_flags_get_their_own_pretraining_run():
    run = _load("run")
    ablation, cpu = preset.load_preset("objectives"), preset.load_preset("cpu")
    assert cpu.pretrain_runs() == {"rand": ["rand"], "full": ["full"]}  # the committed pretrain_{rand,full}.json
    assert ablation.init_names[0] == "scratch" and ablation.pretrain_run("fd_id_rmhc") == "rand"
    cmd = run.pretrain_cmd(ablation, ablation.pretrain_run("rmhc"))
    i = cmd.index("--model.forward_weight")
    assert cmd[i:i + 4] == ["--model.forward_weight", "0", "--model.inverse_weight", "0"]
    assert cmd[cmd.index("--output_dir") + 1] == "outputs/study/objectives/pretrain_rmhc"
    cell = run.Cell("bc", "walker-walk", 10, "fd", 1)
    load = run.cell_cmd(ablation, cell)
    assert load[load.index("--load_model_from") + 1] == "outputs/study/objectives/pretrain_fd/checkpoints/last.ckpt"
    assert run.data_root(ablation) == run.data_root(cpu) == "data/study"


def test_comparison_inits_share_data_and_sizes_and_keep_their_finetuning_flags(tmp_path):
    """The comparison preset (issue 20): every init reads both data kinds (mix, all steps of both files), masked
    trunks get the same depth as encoder + 1 decoder block, and an init's finetune flags reach only its cells."""
    run = _load("run")
    compare = preset.load_preset("compare")
    assert compare.init_names == ("scratch", "smart", "smart-original", "mtm", "maskdp")
    for init in compare.inits:
        cmd = run.pretrain_cmd(compare, compare.pretrain_run(init))
        assert cmd[cmd.index("--source_data_type") + 1] == "mix" and cmd[cmd.index("--num_steps") + 1] == "40000"
    mtm = run.pretrain_cmd(compare, "mtm")
    assert "--model.n_layer" not in mtm and mtm[mtm.index("--model.n_enc_layer") + 1] == "2"
    assert mtm[mtm.index("--model.n_dec_layer") + 1] == "1"
    maskdp_cell = run.cell_cmd(compare, run.Cell("bc", "walker-walk", 10, "maskdp", 1))
    assert maskdp_cell[-2:] == ["--method", "smart"] and "--model.n_layer" in maskdp_cell  # causal finetuning
    mtm_cell = run.cell_cmd(compare, run.Cell("rtg", "walker-walk", 10, "mtm", 1))
    assert "--model.n_enc_layer" in mtm_cell and "--method" not in mtm_cell  # MTM's own module, from its checkpoint
    assert mtm_cell[-2:] == ["--model.lr", "0.0006"]
    original = run.cell_cmd(compare, run.Cell("bc", "walker-walk", 10, "smart-original", 1))
    assert original[-4:] == ["--data.normalize_obs", "false", "--model.rtg_scale", "1"]
    assert "--data.normalize_obs" not in run.cell_cmd(compare, run.Cell("bc", "walker-walk", 10, "smart", 1))
    with open(os.path.join(preset.PRESET_DIR, "compare.yaml")) as f:
        good = f.read()
    with pytest.raises(ArgumentError, match="finetune_flags names mae, which are not inits"):
        preset.load_preset(_write(tmp_path, good.replace("  maskdp: [--method, smart]", "  mae: [--method, smart]")))
    with pytest.raises(ArgumentError, match="inits.mtm: expected .*rand, full or mix"):
        preset.load_preset(_write(tmp_path, good.replace("mtm: [mix,", "mtm: [both,")))


def test_report_on_committed_cells_matches_committed_point_estimates(tmp_path):
    """One block (BC, 10 episodes, unseen tasks) of the committed cells: the IQM is the hand-computed trimmed mean
    of the cells' scores and equals the committed summary's (point estimates do not depend on n_boot)."""
    os.makedirs(tmp_path / "cells")
    names = [p for t in ("walker-walk", "cartpole-balance")
             for p in glob.glob(os.path.join(RESULTS, "cells", f"bc_{t}_ep10_*.json"))]
    assert len(names) == 18  # 2 tasks x 3 inits x 3 seeds
    for p in names:
        shutil.copy(p, tmp_path / "cells")
    summary = report.write_report(preset.load_preset("cpu"), {}, results_dir=str(tmp_path),
                                  img_dir=str(tmp_path / "img"), n_boot=50)
    assert [(b["method"], b["episodes"]) for b in summary["blocks"]] == [("bc", 10)]
    row = next(r for r in summary["blocks"][0]["rows"]
               if (r["group"], r["checkpoint"], r["init"]) == ("unseen_task", "last", "scratch"))
    scores = sorted(_read_json(p)["last"]["mean"] / 10 for p in names if "_scratch_" in p)
    assert (row["tasks"], row["runs"]) == (2, 6)
    assert row["iqm"] == pytest.approx(np.mean(scores[1:5]))  # n=6: drop floor(6/4) = 1 at each end
    committed = _read_json(os.path.join(RESULTS, "summary.json"))
    same = next(r for b in committed["blocks"] if (b["method"], b["episodes"]) == ("bc", 10) for r in b["rows"]
                if (r["group"], r["checkpoint"], r["init"]) == ("unseen_task", "last", "scratch"))
    assert row["iqm"] == same["iqm"] and row["mean"] == same["mean"]
    assert "#### BC, 10 episodes" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_report_reproduces_committed_summary(tmp_path):
    """``--stage report`` on a fresh checkout: summary.json and summary.md byte-identical (about 3 min on 2 cores)."""
    shutil.copytree(os.path.join(RESULTS, "cells"), tmp_path / "cells")
    data = _read_json(os.path.join(RESULTS, "summary.json"))["data"]
    report.write_report(preset.load_preset("cpu"), data, results_dir=str(tmp_path), img_dir=str(tmp_path / "img"))
    for name in ("summary.json", "summary.md"):
        with open(os.path.join(RESULTS, name)) as f:
            assert (tmp_path / name).read_text() == f.read(), name
