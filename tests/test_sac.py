"""SAC data collection (issue 4/7): the agent's contract, the recorded fullcollect file, resume, checkpoint
rollouts, and that SAC learns cartpole-balance."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from conftest import ROOT, SRC, run_script, write_synthetic

from control_pretrain.agents.replay import ReplayBuffer
from control_pretrain.agents.sac import SACAgent, SACConfig
from control_pretrain.collect.checkpoint import collect_checkpoint
from control_pretrain.collect.job import CollectJob
from control_pretrain.collect.sac import agent_file, collect_sac, log_dir, state_file
from control_pretrain.data.schema import validate
from control_pretrain.data.writer import TrajectoryWriter, partial_path
from control_pretrain.errors import DatasetError

TINY = {"hidden_dim": 32, "batch_size": 32, "init_steps": 250}
KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "physics")


def tiny_job(root, **kw) -> CollectJob:
    args = {"domain": "cartpole", "task": "balance", "replay_id": 1, "num_steps": 750, "data_dir_prefix": str(root),
            "policy": "sac", "sac": TINY, "eval_every": 500, "eval_episodes": 1}
    return CollectJob(**{**args, **kw})


def read_all(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5:
        return {k: h5[k][:] for k in h5}


def metrics(job) -> list[dict]:
    with open(os.path.join(log_dir(job), "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def filled_buffer(obs_dim=5, action_dim=2, n=500) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(obs_dim, action_dim, n, seed=0)
    buf.add(rng.normal(size=(n, obs_dim)), rng.uniform(-1, 1, (n, action_dim)), rng.uniform(0, 1, n), np.ones(n),
            np.zeros(n, bool))
    return buf


def test_update_moves_every_network_and_save_load_round_trips(tmp_path):
    torch.manual_seed(0)
    agent = SACAgent(5, 2, SACConfig(hidden_dim=16, batch_size=16))
    before = {n: p.detach().clone() for n, p in agent.state_dict(with_optimizers=False).items() if torch.is_tensor(p)}
    nets = {"actor": agent.actor, "critic": agent.critic, "critic_target": agent.critic_target}
    snapshot = {k: [p.detach().clone() for p in m.parameters()] for k, m in nets.items()}
    buf = filled_buffer()
    for _ in range(4):  # actor, temperature and targets move every 2 critic updates
        info = agent.update(*buf.sample(16))
    assert {"critic_loss", "actor_loss", "alpha"} <= set(info)
    for k, m in nets.items():
        for p0, p in zip(snapshot[k], m.parameters(), strict=True):
            assert not torch.equal(p0, p), f"{k} has a parameter that did not move"
    assert not torch.equal(before["log_alpha"], agent.log_alpha.detach())

    agent.save(str(tmp_path / "a.pt"))
    loaded, _ = SACAgent.load(str(tmp_path / "a.pt"))
    obs = np.random.default_rng(1).normal(size=5).astype(np.float32)
    np.testing.assert_array_equal(agent.act(obs, deterministic=True), loaded.act(obs, deterministic=True))
    assert loaded.cfg == agent.cfg and loaded.num_updates == agent.num_updates
    # the loaded optimisers continue exactly as the original's
    torch.manual_seed(3)
    agent.update(*filled_buffer().sample(16))
    torch.manual_seed(3)
    loaded.update(*filled_buffer().sample(16))
    for p, q in zip(agent.actor.parameters(), loaded.actor.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_actions_in_bounds_and_log_prob_matches_torch():
    torch.manual_seed(0)
    agent = SACAgent(5, 3, SACConfig(hidden_dim=16))
    obs = torch.randn(64, 5)
    torch.manual_seed(1)
    action, log_prob = agent.actor.sample(obs)
    assert action.shape == (64, 3) and log_prob.shape == (64, 1) and action.abs().max() < 1
    torch.manual_seed(1)
    mu, log_std = agent.actor(obs)
    base = torch.distributions.Normal(mu, log_std.exp())
    dist = torch.distributions.TransformedDistribution(base, [torch.distributions.TanhTransform()])
    pre = mu + torch.randn_like(mu) * log_std.exp()
    torch.testing.assert_close(log_prob, dist.log_prob(torch.tanh(pre)).sum(-1, keepdim=True), rtol=1e-3, atol=1e-3)


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory):
    """A tiny SAC collection with fast-rendered pixels and a saved agent (3 episodes, learning from step 250)."""
    root = tmp_path_factory.mktemp("sac")
    job = tiny_job(root, pixels=True, fast_render=True, save_agent=True)
    reported = []
    assert collect_sac(job, reported.append) == job.path
    return job, reported


def test_sac_file_is_valid_and_returns_match_the_log(sac_run):
    job, reported = sac_run
    info = validate(job.path)
    assert info.attrs["policy"] == "sac" and "fullcollect_cartpole_balance" in job.path
    assert info.num_steps == 750 and info.num_episodes == 3 and reported == [250, 250, 250]
    assert info.pixel_shape == (3, 84, 84) and json.loads(info.attrs["sac_config"])["hidden_dim"] == 32
    logged = [m["train/episode_return"] for m in metrics(job) if "train/episode_return" in m]
    np.testing.assert_allclose(info.episode_returns, logged, rtol=1e-5)
    evals = [m for m in metrics(job) if "eval/return_mean" in m]
    assert [m["step"] for m in evals] == [500, 750]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(log_dir(job)))
    assert os.path.exists(agent_file(job)) and not os.path.exists(partial_path(job.path))
    assert not os.path.exists(state_file(job))
    # the first init_steps actions are uniform random, the rest come from the (tanh) actor
    data = read_all(job.path)
    assert np.abs(data["actions"]).max() <= 1.0


def test_checkpoint_rollouts_of_a_saved_agent(sac_run, tmp_path):
    job, _ = sac_run
    res = run_script("dmc_data.py", "collect", "--domain", "cartpole", "--task", "balance", "--policy", "checkpoint",
                     "--agent_path", agent_file(job), "--action_noise", "0.1", "--num_steps", "500",
                     "--replay_id", "3", "--data_dir_prefix", str(tmp_path), "--quiet")
    assert res.returncode == 0, res.stderr
    info = validate(str(tmp_path / "fullcollect_cartpole_balance" / "cartpole_balance_s3.h5"))
    assert info.attrs["policy"] == "checkpoint" and info.attrs["action_noise"] == pytest.approx(0.1)
    assert info.num_episodes == 2

    # no noise: the recorded actions are the agent's mean actions
    clean = CollectJob("cartpole", "balance", 4, 250, str(tmp_path), policy="checkpoint", agent_path=agent_file(job))
    collect_checkpoint(clean)
    data = read_all(clean.path)
    agent, _ = SACAgent.load(agent_file(job))
    np.testing.assert_allclose(data["actions"][:10], [agent.act(o, deterministic=True) for o in data["observations"][:10]],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(DatasetError, match="agent_path"):
        collect_checkpoint(CollectJob("cartpole", "balance", 5, 250, str(tmp_path), policy="checkpoint"))


class StopAfter:
    """A progress callback that interrupts the collector after ``episodes`` whole episodes."""

    def __init__(self, episodes: int) -> None:
        self.episodes, self.seen = episodes, 0

    def __call__(self, n: int) -> None:
        self.seen += 1
        if self.seen == self.episodes:
            raise KeyboardInterrupt


def test_resume_after_interruption_appends_without_loss_or_duplication(tmp_path):
    job = tiny_job(tmp_path / "a", num_steps=1250, checkpoint_every=100)  # only the interruption saves the state
    with pytest.raises(KeyboardInterrupt):
        collect_sac(job, StopAfter(2))
    assert not os.path.exists(job.path) and os.path.exists(state_file(job))
    kept = validate(partial_path(job.path))  # the partial file holds exactly the 2 whole episodes
    assert kept.num_episodes == 2 and kept.num_steps == 500
    first = read_all(partial_path(job.path))
    with pytest.raises(DatasetError, match="--resume"):
        collect_sac(job)

    resumed = CollectJob(**{**job.__dict__, "resume": True})
    reported = []
    collect_sac(resumed, reported.append)
    assert reported[0] == 500 and sum(reported) == 1250
    info = validate(job.path)
    assert info.num_episodes == 5 and info.num_steps == 1250
    data = read_all(job.path)
    for k in KEYS:
        np.testing.assert_array_equal(data[k][:500], first[k])
    assert not os.path.exists(partial_path(job.path)) and not os.path.exists(state_file(job))
    logged = [m["train/episode_return"] for m in metrics(job) if "train/episode_return" in m]
    np.testing.assert_allclose(info.episode_returns, logged, rtol=1e-5)  # each episode logged once

    # the state saved at the interruption makes the continued run the uninterrupted one
    straight = tiny_job(tmp_path / "b", num_steps=1250)
    collect_sac(straight)
    reference = read_all(straight.path)
    for k in KEYS:
        np.testing.assert_array_equal(data[k], reference[k], err_msg=k)


def test_sigterm_keeps_the_run_and_the_cli_resumes_it(tmp_path):
    args = ["collect", "--domain", "cartpole", "--task", "balance", "--policy", "sac", "--num_steps", "1500",
            "--data_dir_prefix", str(tmp_path), "--quiet", "--eval_every", "0", "--sac.hidden_dim", "32",
            "--sac.batch_size", "32", "--sac.init_steps", "250"]
    proc = subprocess.Popen([sys.executable, os.path.join(SRC, "dmc_data.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics_path = tmp_path / "fullcollect_cartpole_balance" / "tb_s1" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if metrics_path.exists() and len(metrics_path.read_text().splitlines()) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err
    path = tmp_path / "fullcollect_cartpole_balance" / "cartpole_balance_s1.h5"
    kept = validate(partial_path(str(path)))
    assert 2 <= kept.num_episodes < 6 and not path.exists()
    first = read_all(partial_path(str(path)))
    res = run_script("dmc_data.py", *args, "--resume")
    assert res.returncode == 0, res.stderr
    assert validate(str(path)).num_episodes == 6
    data = read_all(path)
    for k in KEYS:
        np.testing.assert_array_equal(data[k][: kept.num_steps], first[k])


def test_resumable_writer_keeps_whole_episodes(tmp_path):
    path = str(tmp_path / "f.h5")
    episodes = write_synthetic(tmp_path / "src.h5", [5, 7, 4])
    attrs = {"domain": "cartpole", "task": "swingup", "policy": "sac", "seed": 0, "replay_id": 1, "action_repeat": 4,
             "obs_keys": ["position"]}
    with pytest.raises(RuntimeError), TrajectoryWriter(path, attrs, 3, 2, 2, resumable=True) as w:
        w.append_episode(episodes[0])
        w.append_episode(episodes[1])
        w._h5["observations"].resize(20, axis=0)  # as if stopped in the middle of writing an episode
        raise RuntimeError
    assert not os.path.exists(path) and validate(partial_path(path)).num_steps == 12
    shutil.copy(partial_path(path), tmp_path / "copy.h5")
    with TrajectoryWriter(path, attrs, 3, 2, 2, resume=True) as w:
        assert w.num_steps == 12
        w.append_episode(episodes[2])
    info = validate(path)
    assert info.num_steps == 16 and list(info.episode_lengths) == [5, 7, 4]
    with pytest.raises(DatasetError, match="task"):
        shutil.copy(tmp_path / "copy.h5", partial_path(path))
        TrajectoryWriter(path, {**attrs, "task": "balance"}, 3, 2, 2, resume=True)


def test_sac_learns_cartpole_balance(tmp_path):
    # ~15 s on one core, so not marked slow: 25 episodes, from ~350 (random) to ~980 in the last 5
    job = tiny_job(tmp_path, num_steps=6250, eval_every=0, sac={"hidden_dim": 64, "batch_size": 64, "init_steps": 500})
    collect_sac(job)
    returns = validate(job.path).episode_returns
    early, late = returns[:2].mean(), returns[-5:].mean()  # the first 2 episodes are (mostly) random actions
    assert late > early + 300, f"no learning: first episodes {returns[:2]}, last {returns[-5:]}"


def test_saved_agent_layout_is_stable(tmp_path):
    # .agent.pt files written since issue 4/7 (collect --save_agent) hold exactly these entries; loading must keep
    # reading them (collect --policy checkpoint), on any device
    agent = SACAgent(5, 2, SACConfig(hidden_dim=16))
    agent.save(str(tmp_path / "a.pt"), extra={"domain": "cartpole", "task": "balance", "steps": 0})
    saved = torch.load(tmp_path / "a.pt", weights_only=True)
    assert set(saved) == {"config", "obs_dim", "action_dim", "actor", "critic", "critic_target", "log_alpha",
                          "num_updates", "optimizers", "domain", "task", "steps"}
    assert set(saved["optimizers"]) == {"actor", "critic", "alpha"} and saved["config"]["hidden_dim"] == 16
    assert all(t.device.type == "cpu" for t in saved["actor"].values())
