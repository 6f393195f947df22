"""Pixel SAC and SAC+MLR (issue 17): the reference's update order, the run header's reductions, and a T0 run on
real cartpole-swingup renders (2,000 env steps) that learns its losses down, continues exactly after an
interruption, and is deterministic under its seed."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import run_curve, run_metrics, run_script

from control_pretrain.agents.online_run import AGENT_FILE, STATE_FILE, OnlineRun, train_online
from control_pretrain.agents.pixel_presets import paper_action_repeat, preset_options, reductions, run_label
from control_pretrain.agents.pixel_sac import PixelSACAgent, PixelSACConfig, SACMLRConfig
from control_pretrain.agents.replay import ReplayBuffer

# T0 (mlr_mwm.md §C.5): cartpole-swingup at action repeat 8, 250 interactions (2,000 env steps), 100 of them
# random. The network is smaller than the spec's T0 (batch 32, MLR 8x16, 32 filters: 1.6 s per update here) so
# that two runs fit the default test budget; the warm-up is shortened so that MLR's learning rate is not ~0.
T0 = {"batch_size": 16, "hidden_dim": 64, "filters": 8, "mlr_batch": 4, "mlr_clip_len": 8, "mlr_warmup": 50,
      "init_steps": 100}


def t0_run(folder, **kw) -> OnlineRun:
    args = {"agent": "sac_mlr", "domain": "cartpole", "task": "swingup", "num_steps": 250, "obs_type": "pixels",
            "seed": 2, "output_dir": str(folder), "overrides": T0, "eval_every": 250, "eval_episodes": 1,
            "preset": "smoke"}
    return OnlineRun(**{**args, **kw})


def test_updates_run_in_the_reference_order():
    """critic -> MLR on every interaction; actor + temperature, then all targets, on every 2nd."""
    torch.manual_seed(0)
    cfg = SACMLRConfig.from_dict({"hidden_dim": 8, "batch_size": 2, "filters": 2, "latent_dim": 4, "mlr_batch": 2,
                                  "mlr_clip_len": 4, "mlr_block": 2})
    agent = PixelSACAgent((9, 100, 100), 1, cfg)
    calls = []

    def spy(obj, name, label):
        method = getattr(obj, name)
        setattr(obj, name, lambda *a, **k: (calls.append((agent.num_updates, label)), method(*a, **k))[1])

    for name, label in [("update_critic", "critic"), ("update_actor", "actor"), ("update_targets", "targets")]:
        spy(agent, name, label)
    spy(agent.mlr, "update", "mlr")
    spy(agent.mlr, "update_targets", "mlr_targets")
    rng = np.random.default_rng(0)
    buf = ReplayBuffer((3, 100, 100), 1, 40, obs_dtype=np.uint8, frame_stack=3)
    buf.add(rng.integers(0, 256, (30, 3, 100, 100), dtype=np.uint8), rng.uniform(-1, 1, (30, 1)), np.zeros(30),
            np.ones(30), np.zeros(30, bool))
    for _ in range(4):
        agent.train_step(buf)
    # (updates done before the call, what ran): the counter moves in the critic update
    assert calls == [(0, "critic"), (1, "mlr"),
                     (1, "critic"), (2, "mlr"), (2, "actor"), (2, "targets"), (2, "mlr_targets"),
                     (2, "critic"), (3, "mlr"),
                     (3, "critic"), (4, "mlr"), (4, "actor"), (4, "targets"), (4, "mlr_targets")]


def test_presets_and_the_header_name_every_reduction():
    assert paper_action_repeat("cartpole") == 8 and paper_action_repeat("walker") == 2
    assert preset_options("cheetah", "paper") == {"actor_lr": 2e-4, "critic_lr": 2e-4, "mlr_lr": 1e-4}
    paper = SACMLRConfig.from_dict(preset_options("cartpole", "paper"))
    assert paper.mlr_block == 4 and paper.filters == 64 and paper.batch_size == 512
    assert run_label(reductions("cartpole", paper, 8, 12_500, 625, 10)) == "DMC-100k (paper configuration)"
    smoke = SACMLRConfig.from_dict(preset_options("cartpole", "smoke"))
    found = reductions("cartpole", smoke, 8, 3_750, 1_250, 5)
    assert "filters 32 (paper 64)" in found and "mlr_clip_len 8 (paper 16)" in found
    assert "30000 env steps (DMC-100k: 100000)" in found
    assert run_label(found).startswith("reduced run, not DMC-100k")
    no_mlr = reductions("cartpole", PixelSACConfig.from_dict(preset_options("cartpole", "smoke")), 8, 12_500, 625, 10)
    assert not any(r.startswith("mlr_") for r in no_mlr)  # MLR's options do not matter without MLR


@pytest.fixture(scope="module")
def t0(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pixel_sac") / "straight"
    train_online(t0_run(folder))
    return folder


def test_t0_run_learns_its_losses_down_and_saves_its_agent(t0):
    episodes = [m for m in run_metrics(t0) if "train/episode_return" in m]
    assert [m["step"] for m in episodes] == [125, 250]
    first, second = episodes
    for key in ("train/critic_loss", "train/mlr_loss", "train/actor_loss"):
        assert np.isfinite([first[key], second[key]]).all()
    assert second["train/mlr_loss"] < 0.5 * first["train/mlr_loss"]  # episode means of 26 and 125 updates
    assert second["train/critic_loss"] < first["train/critic_loss"]
    evals = [m for m in run_metrics(t0) if "eval/return_mean" in m]
    assert [m["step"] for m in evals] == [250] and np.isfinite(evals[0]["eval/return_mean"])
    agent, saved = PixelSACAgent.load(str(t0 / AGENT_FILE))
    assert saved["steps"] == 250 and agent.num_updates == 151 and agent.mlr.num_updates == 151  # no catch-up
    assert agent.cfg.filters == 8 and agent.cfg.mlr_block == 4  # cartpole's temporal block from the paper
    assert not os.path.exists(t0 / STATE_FILE)


def test_t0_resumed_after_an_interruption_is_the_same_run(t0, tmp_path):
    """The same seed gives the same run, and an interruption after the first episode continues into it."""
    folder = tmp_path / "resumed"

    def stop(_steps):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_online(t0_run(folder), stop)
    saved = torch.load(folder / STATE_FILE, weights_only=True)
    assert saved["replay"]["obs"].dtype == torch.uint8 and tuple(saved["replay"]["obs"].shape[1:]) == (3, 100, 100)
    train_online(t0_run(folder, resume=True))
    assert run_curve(folder) == run_curve(t0)
    a, b = (torch.load(f / AGENT_FILE, weights_only=True) for f in (t0, folder))
    for net in ("encoder", "actor", "mlr_head"):
        for k in a[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=0)


def test_cli_refuses_impossible_combinations_with_exit_2(tmp_path):
    base = ["--domain", "cartpole", "--task", "swingup", "--num_steps", "10", "--output_dir", str(tmp_path / "r")]
    for extra, message in [
        (["--agent", "sac_mlr"], "sac_mlr learns from pixels, not --obs_type state"),
        (["--agent", "sac", "--sac.filters", "32"], "unknown SAC option"),
        (["--agent", "sac", "--obs_type", "pixels", "--record"], "pixel agents cannot record"),
    ]:
        result = run_script("dmc_online.py", *base, *extra)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_mlr_study_prints_the_dmc100k_commands_and_reads_resumed_logs(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    out = subprocess.run([sys.executable, "studies/mlr/run.py", "--preset", "gpu", "--dry_run"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    runs = [line for line in out if "dmc_online.py" in line]
    assert len(runs) == 3 * 5 * 2 and all("--preset paper" in r and "--device cuda" in r for r in runs)
    assert sum("--task swingup --num_steps 12500" in r for r in runs) == 10  # 100k env steps at action repeat 8
    assert sum("--task walk --num_steps 50000" in r for r in runs) == 10
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlr_study", os.path.join(ROOT, "studies", "mlr", "run.py"))
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)

    lines = [{"step": 125, "wall_s": 10.0, "train/episode_return": 1.0},
             {"step": 250, "wall_s": 20.0, "train/episode_return": 2.0},  # logged again after the resume
             {"step": 250, "wall_s": 9.0, "train/episode_return": 2.0},
             {"step": 250, "wall_s": 12.0, "eval/return_mean": 5.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    records, wall = study.read_metrics(str(tmp_path))
    assert [m["step"] for m in records] == [125, 250, 250] and wall == 20.0 + 12.0
