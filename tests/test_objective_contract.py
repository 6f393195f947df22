"""The contract every objective meets (in the manner of d3rlpy's algo_tester), on state and pixel observations,
inside the real LightningModule that trains it (PretrainModule for SMART's objectives, DownstreamModule for the
policy heads):

1. fit: a few optimiser steps through ``ControlModule.optimizer_step`` lower nothing to NaN;
2. save -> load: the state_dict and hyperparameters go through a file (loaded with ``weights_only=True``, no code
   unpickled) into a freshly built module, which gives identical losses (and actions) in eval mode;
3. one optimiser step changes every parameter that should learn (heads, trunk, encoders) and leaves the frozen
   ones (the EMA target, a frozen encoder) out of the gradient step; the EMA target moves only through forward
   dynamics' ``after_optimizer_step`` hook, by exactly tau.

A new objective joins by adding one entry to ``OBJECTIVES``.
"""

import dataclasses

import pytest
import torch
from conftest import ACTION_DIM, OBS_DIM, C, K, make_batch, optimizer_step

from control_pretrain.lit.downstream_module import DownstreamModule
from control_pretrain.lit.mtm_module import MTMPretrainModule
from control_pretrain.lit.pretrain_module import PretrainModule
from control_pretrain.objectives.mtm import MaskedReconstructionConfig

TAU = 0.25  # large, so that a wrong EMA update is far from the right one
SIZES = {"obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "n_layer": 2, "n_head": 2, "n_embd": C, "context_length": K,
         "max_timestep": 64, "lr": 1e-3, "lr_schedule": "constant"}
SMART = {"forward": ("ForwardDynamicsObjective", {"ema_tau": TAU}), "inverse": ("InverseDynamicsObjective", {}),
         "masked_hindsight": ("MaskedHindsightControlObjective", {})}


def pretrain_only(name: str):
    """PretrainModule with one objective, given as the CLI gives it: a {class_path, init_args} spec."""
    def build(obs_type: str, **extra) -> PretrainModule:
        cls, config = SMART[name]
        spec = {"class_path": f"control_pretrain.objectives.{cls}", "init_args": {"config": config}}
        return PretrainModule(obs_type=obs_type, objectives=[spec], mask_actions=2, mask_obs=1, **SIZES, **extra)
    return build


def policy(model_type: str):
    def build(obs_type: str, **extra) -> DownstreamModule:
        return DownstreamModule(domain="cartpole", task="swingup", obs_type=obs_type, model_type=model_type,
                                **SIZES, **extra)
    return build


def masked(method: str):
    """The masked trajectory model with MaskDP's objective (configs/methods/maskdp.yaml at the test's size)."""
    def build(obs_type: str, **extra) -> MTMPretrainModule:
        objective = MaskedReconstructionConfig(masks=["maskdp"], ema_tau=TAU)
        return MTMPretrainModule(obs_type=obs_type, obs_dim=OBS_DIM, action_dim=ACTION_DIM, n_embd=C, n_head=2,
                                 n_enc_layer=1, n_dec_layer=1, context_length=K, dropout=0.0,
                                 modalities=("obs", "act"), objective=objective, lr=1e-3, lr_schedule="constant",
                                 **extra)
    return build


def mae(obs_type: str, **extra) -> PretrainModule:
    """MWM's masked autoencoder (configs/methods/mae.yaml) at a micro size: its own network, the trunk frozen."""
    config = {"image_size": 32, "embed_dim": 32, "decoder_dim": 32, "encoder_depth": 1, "decoder_depth": 1,
              "n_head": 2}
    spec = {"class_path": "control_pretrain.objectives.MaskedAutoencoderObjective", "init_args": {"config": config}}
    return PretrainModule(obs_type=obs_type, objectives=[spec], **SIZES, **extra)


# The EMA target encoder moves through the objective's hook: forward dynamics always, MaskDP's for pixel targets.
EMA_TARGETS = {("forward", "state"), ("forward", "pixels"), ("maskdp", "pixels")}
OBJECTIVES = {"maskdp": masked("maskdp"), "forward": pretrain_only("forward"), "inverse": pretrain_only("inverse"),
              "masked_hindsight": pretrain_only("masked_hindsight"), "bc": policy("naive"),
              "rtg": policy("reward_conditioned"), "mae": mae}
PIXELS_ONLY = {"mae"}  # reconstructs frames
CASES = [(name, obs_type) for name in OBJECTIVES for obs_type in ("state", "pixels")
         if obs_type == "pixels" or name not in PIXELS_ONLY]


def outputs(module, batch: dict) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same RMHC masks for both modules
    with torch.no_grad():
        out = dict(module.compute_losses(batch))
        if hasattr(module, "policy"):
            out["actions"] = module.policy.predict_actions(module.model, batch)
    return out


@pytest.mark.parametrize(("name", "obs_type"), CASES)
def test_fit_save_load_gives_identical_outputs(name, obs_type, tmp_path):
    torch.manual_seed(0)
    module = OBJECTIVES[name](obs_type).train()
    assert [o.name for o in module.objectives.values()] == [{"maskdp": "mtm"}.get(name, name)]
    optimizer = module.configure_optimizers()
    batch = make_batch(obs_type)
    for _ in range(3):
        optimizer_step(module, optimizer, batch)
    path = tmp_path / "module.pt"
    hparams = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in module.hparams.items()}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    saved = torch.load(path, weights_only=True)
    fresh = type(module)(**saved["hyper_parameters"])
    fresh.load_state_dict(saved["state_dict"])
    module.eval(), fresh.eval()
    a, b = outputs(module, batch), outputs(fresh, batch)
    assert a.keys() == b.keys() and all(torch.isfinite(v).all() for v in a.values())
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(("name", "obs_type"), CASES)
def test_one_step_updates_what_learns_and_nothing_frozen(name, obs_type):
    torch.manual_seed(0)
    module = OBJECTIVES[name](obs_type).train()
    optimizer = module.configure_optimizers()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    optimizer_step(module, optimizer, make_batch(obs_type))
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    assert {n for n in before if n.startswith("model.target_obs_encoder.")} <= frozen
    for n, p in module.named_parameters():
        if n in frozen:
            assert p.grad is None, n
        else:
            assert p.grad is not None and not torch.equal(p, before[n]), n  # heads, trunk and encoders all learn
    online = dict(module.model.obs_encoder.named_parameters())
    for n, p in module.model.target_obs_encoder.named_parameters():
        target_before = before[f"model.target_obs_encoder.{n}"]
        if (name, obs_type) in EMA_TARGETS:  # only through the hook, by exactly tau
            assert torch.allclose(p, (1 - TAU) * target_before + TAU * online[n].detach(), atol=1e-7), n
        else:
            assert torch.equal(p, target_before), n


@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_a_frozen_encoder_stays_out_of_the_step(obs_type):
    torch.manual_seed(0)
    module = policy("naive")(obs_type, freeze_encoder=True).train()
    optimizer = module.configure_optimizers()
    before = {n: p.detach().clone() for n, p in module.model.obs_encoder.named_parameters()}
    head_before = module.policy.head.weight.detach().clone()
    optimizer_step(module, optimizer, make_batch(obs_type))
    for n, p in module.model.obs_encoder.named_parameters():
        assert p.grad is None and torch.equal(p, before[n]), n
    assert not torch.equal(module.policy.head.weight, head_before)  # the rest still learns
