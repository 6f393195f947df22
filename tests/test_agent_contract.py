"""The contract every online agent keeps (agents/loop.py's ``Agent`` protocol), run for each registered agent
on CPU and, where a GPU is visible, on CUDA: save -> load gives identical actions and an identical next update;
one update moves the online networks on their cadence and the target networks only by their EMA."""

from operator import attrgetter

import numpy as np
import pytest
import torch

from control_pretrain.agents.registry import AGENTS
from control_pretrain.agents.replay import ReplayBuffer

OBS_DIM, ACTION_DIM = 5, 2
PIXELS = (3, 100, 100)  # replay rows: single frames; the agents see stacks of 3
TINY_PIXELS = {"hidden_dim": 16, "batch_size": 4, "filters": 4, "latent_dim": 8, "mlr_batch": 2, "mlr_clip_len": 4,
               "mlr_block": 2}
PIXEL_NETS = {"every_update": ["critic", "encoder"],
              "cadence": {"actor": "actor_update_every", "actor_encoder.fc": "actor_update_every",
                          "actor_encoder.ln": "actor_update_every"},
              "targets": [("critic_target", "critic", "tau", "target_update_every"),
                          ("target_encoder", "encoder", "encoder_tau", "target_update_every")]}
# MWM (agents/mwm/): the t0 preset shrunk further; the first update also pretrains the MAE (one update).
TINY_MWM = {"mae_width": 16, "mae_depth": 1, "mae_decoder_depth": 1, "mae_heads": 2, "mae_batch": 4, "mae_pretrain": 1,
            "mae_warmup": 2, "wm_width": 16, "wm_depth": 1, "wm_heads": 2, "deter": 16, "hidden": 16, "stoch": 4,
            "discrete": 4, "units": 16, "layers": 1, "batch_size": 2, "seq_len": 4, "horizon": 3,
            "slow_critic_every": 2}
# Per agent: a tiny config, and which networks an update moves: every update, on a cadence (every k updates), and
# the targets (target, online, tau, every k updates), as attribute paths of the agent; pixel agents may name their
# replay rows ("frame", default PIXELS) and how many frames they stack ("frame_stack", default 3).
SPECS = {
    ("sac", "state"): {
        "config": {"hidden_dim": 16, "batch_size": 16},
        "every_update": ["critic"],
        "cadence": {"actor": "actor_update_every"},
        "targets": [("critic_target", "critic", "tau", "target_update_every")],
    },
    ("sac", "pixels"): {"config": TINY_PIXELS, **PIXEL_NETS},
    ("sac_mlr", "pixels"): {
        "config": TINY_PIXELS,
        "every_update": [*PIXEL_NETS["every_update"], "mlr.head.blocks", "mlr.head.prediction"],
        "cadence": PIXEL_NETS["cadence"],
        "targets": [*PIXEL_NETS["targets"], ("mlr.momentum", "encoder", "mlr_tau", "target_update_every"),
                    ("mlr.head.target_projection", "mlr.head.projection", "mlr_tau", "target_update_every")],
    },
    ("mwm", "pixels"): {
        "config": TINY_MWM, "frame": (3, 64, 64), "frame_stack": 1,
        "every_update": ["mae", "world_model", "behavior.actor", "behavior.critic"],
        "cadence": {},
        "targets": [("behavior.slow_critic", "behavior.critic", "slow_critic_fraction", "slow_critic_every")],
    },
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
KINDS = sorted(AGENTS)


def frames(kind) -> tuple[tuple[int, ...], int]:
    """(replay row shape, frames stacked) of a pixel agent."""
    return SPECS[kind].get("frame", PIXELS), SPECS[kind].get("frame_stack", 3)


def make(kind, device: str):
    config_cls, agent_cls = AGENTS[kind]
    torch.manual_seed(0)
    if kind[1] == "state":
        obs = OBS_DIM
    else:
        frame, stack = frames(kind)
        obs = (stack * frame[0], *frame[1:])
    return agent_cls(obs, ACTION_DIM, config_cls.from_dict(SPECS[kind]["config"]), device=device)


def batches(kind, device: str, n: int = 256) -> ReplayBuffer:
    """A replay of random rows: state vectors, or frames in episodes of 32 steps (clips for MLR)."""
    rng = np.random.default_rng(0)
    if kind[1] == "state":
        buf = ReplayBuffer(OBS_DIM, ACTION_DIM, n, seed=0, device=device)
        buf.add(rng.normal(size=(n, OBS_DIM)), rng.uniform(-1, 1, (n, ACTION_DIM)), rng.uniform(0, 1, n),
                np.ones(n), np.zeros(n, bool))
        return buf
    n, (frame, stack) = 64, frames(kind)
    buf = ReplayBuffer(frame, ACTION_DIM, n + 2, seed=0, obs_dtype=np.uint8, device=device, frame_stack=stack)
    ends = (np.arange(n) % 32) == 31
    buf.add(rng.integers(0, 256, (n, *frame), dtype=np.uint8), rng.uniform(-1, 1, (n, ACTION_DIM)),
            rng.uniform(0, 1, n), np.ones(n), ends, rng.integers(0, 256, (2, *frame), dtype=np.uint8))
    return buf


def observations(kind) -> np.ndarray:
    rng = np.random.default_rng(1)
    if kind[1] == "state":
        return rng.normal(size=(4, OBS_DIM)).astype(np.float32)
    frame, stack = frames(kind)
    return rng.integers(0, 256, (2, stack * frame[0], *frame[1:]), dtype=np.uint8)


def net(agent, path: str) -> torch.nn.Module:
    return attrgetter(path)(agent)  # a spec's attribute path, e.g. "actor_encoder.fc"


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def moved(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
    return all(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))


def test_every_agent_has_a_contract_spec():
    assert set(SPECS) == set(AGENTS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_gives_identical_actions_and_next_update(kind, device, tmp_path):
    agent, buf = make(kind, device), batches(kind, device)
    for _ in range(3):
        agent.train_step(buf)
    torch.save(agent.state_dict(), tmp_path / "agent.pt")
    loaded = make(kind, device)
    loaded.load_state_dict(torch.load(tmp_path / "agent.pt", map_location="cpu", weights_only=True))
    for o in observations(kind):
        a = agent.act(o, deterministic=True)
        assert isinstance(a, np.ndarray) and a.shape == (ACTION_DIM,) and np.abs(a).max() <= 1
        np.testing.assert_array_equal(a, loaded.act(o, deterministic=True))
    cursor = buf.cursor()
    torch.manual_seed(7)
    info = agent.train_step(buf)
    buf.rollback(cursor)  # the same batch again
    torch.manual_seed(7)
    assert loaded.train_step(buf) == info
    for name in agent.networks():
        for a, b in zip(agent.state_dict()[name].values(), loaded.state_dict()[name].values(), strict=True):
            if torch.is_tensor(a):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            else:  # a module's extra state (the MAE's config)
                assert a == b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_an_update_moves_online_nets_on_cadence_and_targets_by_ema(kind, device):
    spec, agent, buf = SPECS[kind], make(kind, device), batches(kind, device)
    cfg = agent.cfg

    for step in range(1, 5):
        nets = {k: params(net(agent, k)) for k in spec["every_update"] + list(spec["cadence"])}
        targets = {t: params(net(agent, t)) for t, *_ in spec["targets"]}
        agent.train_step(buf)
        for k in spec["every_update"]:
            assert moved(nets[k], net(agent, k)), f"update {step}: {k} did not move"
        for k, every in spec["cadence"].items():
            due = step % getattr(cfg, every) == 0
            if due:
                assert moved(nets[k], net(agent, k)), f"update {step}: {k} did not move on its cadence"
            else:
                for b, p in zip(nets[k], net(agent, k).parameters(), strict=True):
                    assert torch.equal(b, p), f"update {step}: {k} moved off its cadence"
        for target, online, tau, every in spec["targets"]:
            due = step % getattr(cfg, every) == 0
            online_now = net(agent, online).parameters()
            for b, t, o in zip(targets[target], net(agent, target).parameters(), online_now, strict=True):
                expected = b + getattr(cfg, tau) * (o.detach() - b) if due else b  # EMA towards the updated net
                torch.testing.assert_close(t, expected, rtol=1e-6, atol=1e-7)
                assert not t.requires_grad
