"""The contract every online agent keeps (agents/loop.py's ``Agent`` protocol), run for each registered agent
on CPU and, where a GPU is visible, on CUDA: save -> load gives identical actions and an identical next update;
one update moves the online networks on their cadence and the target networks only by their EMA."""

import numpy as np
import pytest
import torch

from control_pretrain.agents.registry import AGENTS
from control_pretrain.agents.replay import ReplayBuffer

OBS_DIM, ACTION_DIM = 5, 2
# Per agent: a tiny config, and which networks an update moves: every update, on a cadence (every k updates), and
# the targets (target, online, tau, every k updates). MLR/MWM add their entries here.
SPECS = {
    "sac": {
        "config": {"hidden_dim": 16, "batch_size": 16},
        "every_update": ["critic"],
        "cadence": {"actor": "actor_update_every"},
        "targets": [("critic_target", "critic", "tau", "target_update_every")],
    },
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def make(name: str, device: str):
    config_cls, agent_cls = AGENTS[name]
    torch.manual_seed(0)
    return agent_cls(OBS_DIM, ACTION_DIM, config_cls.from_dict(SPECS[name]["config"]), device=device)


def batches(device: str, n: int = 256) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(OBS_DIM, ACTION_DIM, n, seed=0, device=device)
    buf.add(rng.normal(size=(n, OBS_DIM)), rng.uniform(-1, 1, (n, ACTION_DIM)), rng.uniform(0, 1, n), np.ones(n),
            np.zeros(n, bool))
    return buf


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def moved(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return all(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))


def test_every_agent_has_a_contract_spec():
    assert set(SPECS) == set(AGENTS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_save_load_gives_identical_actions_and_next_update(name, device, tmp_path):
    agent, buf = make(name, device), batches(device)
    for _ in range(3):
        agent.update(*buf.sample(agent.batch_size))
    torch.save(agent.state_dict(), tmp_path / "agent.pt")
    loaded = make(name, device)
    loaded.load_state_dict(torch.load(tmp_path / "agent.pt", map_location="cpu", weights_only=True))
    obs = np.random.default_rng(1).normal(size=(4, OBS_DIM)).astype(np.float32)
    for o in obs:
        a = agent.act(o, deterministic=True)
        assert isinstance(a, np.ndarray) and a.shape == (ACTION_DIM,) and np.abs(a).max() <= 1
        np.testing.assert_array_equal(a, loaded.act(o, deterministic=True))
    batch = buf.sample(agent.batch_size)
    torch.manual_seed(7)
    info = agent.update(*batch)
    torch.manual_seed(7)
    assert loaded.update(*batch) == info
    for a, b in zip(agent.state_dict()["actor"].values(), loaded.state_dict()["actor"].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(AGENTS))
def test_an_update_moves_online_nets_on_cadence_and_targets_by_ema(name, device):
    spec, agent, buf = SPECS[name], make(name, device), batches(device)
    cfg = agent.cfg
    for step in range(1, 5):
        nets = {k: params(getattr(agent, k)) for k in spec["every_update"] + list(spec["cadence"])}
        targets = {t: params(getattr(agent, t)) for t, *_ in spec["targets"]}
        agent.update(*buf.sample(agent.batch_size))
        for k in spec["every_update"]:
            assert moved(nets[k], getattr(agent, k)), f"update {step}: {k} did not move"
        for k, every in spec["cadence"].items():
            due = step % getattr(cfg, every) == 0
            if due:
                assert moved(nets[k], getattr(agent, k)), f"update {step}: {k} did not move on its cadence"
            else:
                for b, p in zip(nets[k], getattr(agent, k).parameters(), strict=True):
                    assert torch.equal(b, p), f"update {step}: {k} moved off its cadence"
        for target, online, tau, every in spec["targets"]:
            due = step % getattr(cfg, every) == 0
            online_now = getattr(agent, online).parameters()
            for b, t, o in zip(targets[target], getattr(agent, target).parameters(), online_now, strict=True):
                expected = b + getattr(cfg, tau) * (o.detach() - b) if due else b  # EMA towards the updated net
                torch.testing.assert_close(t, expected, rtol=1e-6, atol=1e-7)
                assert not t.requires_grad
