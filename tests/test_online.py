"""``python src/dmc_online.py``: a tiny online SAC run logs evaluations, and ``--resume`` after an interruption
continues it into the run that would have happened without the interruption."""

import os

import pytest
import torch
from conftest import run_curve, run_metrics, run_script

from control_pretrain.agents.online_run import AGENT_FILE, STATE_FILE, OnlineRun, train_online
from control_pretrain.agents.sac import SACAgent
from control_pretrain.cli.online import main
from control_pretrain.data.schema import validate

TINY = {"hidden_dim": 32, "batch_size": 32, "init_steps": 250}


def tiny_run(folder, **kw) -> OnlineRun:
    args = {"agent": "sac", "domain": "cartpole", "task": "balance", "num_steps": 500, "seed": 3,
            "output_dir": str(folder), "overrides": TINY, "eval_every": 250, "eval_episodes": 1}
    return OnlineRun(**{**args, **kw})


def stop_after_first_episode(_steps: int) -> None:
    raise KeyboardInterrupt


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("online") / "straight"
    train_online(tiny_run(folder))
    return folder


def test_a_tiny_run_logs_evaluations_and_saves_its_agent(straight):
    evals = [m for m in run_metrics(straight) if "eval/return_mean" in m]
    assert [m["step"] for m in evals] == [250, 500]
    assert sum("train/episode_return" in m for m in run_metrics(straight)) == 2
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(straight))
    assert not os.path.exists(straight / STATE_FILE)
    agent, saved = SACAgent.load(str(straight / AGENT_FILE))  # the format collect --policy checkpoint reads
    assert saved["steps"] == 500 and agent.num_updates == 500 and agent.cfg.hidden_dim == 32


def test_resume_after_an_interruption_continues_the_same_run(straight, tmp_path):
    folder = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train_online(tiny_run(folder), stop_after_first_episode)
    assert os.path.exists(folder / STATE_FILE) and not os.path.exists(folder / AGENT_FILE)
    train_online(tiny_run(folder, resume=True))
    assert run_curve(folder) == run_curve(straight)
    a, _ = SACAgent.load(str(folder / AGENT_FILE))
    b, _ = SACAgent.load(str(straight / AGENT_FILE))
    for p, q in zip(a.actor.parameters(), b.actor.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_the_entry_script_runs():
    res = run_script("dmc_online.py", "--help")
    assert res.returncode == 0 and "--resume" in res.stdout and "--sac.hidden_dim" in res.stdout


def test_clear_errors_exit_2(straight, tmp_path, capsys):
    common = ["--domain", "cartpole", "--task", "balance", "--num_steps", "500", "--seed", "3"]
    cases = [
        (["--output_dir", str(tmp_path / "empty"), "--resume"], "nothing to resume"),
        (["--output_dir", str(straight), "--resume", *(f"--sac.{k}={v}" for k, v in TINY.items())], "finished"),
        (["--output_dir", str(straight)], "another run"),
        (["--output_dir", str(tmp_path / "px"), "--agent", "sac_mlr"], "learns from pixels"),
    ]
    for extra, needle in cases:
        assert main([*common, *extra]) == 2, extra
        assert needle in capsys.readouterr().err


def test_record_writes_the_replay_like_collect(tmp_path):
    assert main(["--domain", "cartpole", "--task", "balance", "--num_steps", "250", "--output_dir", str(tmp_path),
                 "--record", "--eval_every", "0", "--sac.hidden_dim", "16", "--sac.init_steps", "250"]) == 0
    path = tmp_path / "fullcollect_cartpole_balance" / "cartpole_balance_s1.h5"
    info = validate(str(path))
    assert info.attrs["policy"] == "sac" and info.num_steps == 250
    assert os.path.exists(str(path)[: -len(".h5")] + ".agent.pt") and os.path.exists(tmp_path / "metrics.jsonl")
