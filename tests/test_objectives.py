"""Objectives: information-leak tests with the real model and masks, RMHC read positions, pass sharing, the
parameter-update check, padded action dims, rollout histories, the mask curriculum."""

import pytest
import torch
from conftest import ACTION_DIM, VALID_DIMS, C, K, make_batch, tiny_model
from torch import nn

from control_pretrain.models.control_transformer import param_groups
from control_pretrain.objectives import (
    BehaviorCloningObjective,
    ForwardDynamicsConfig,
    ForwardDynamicsObjective,
    InverseDynamicsConfig,
    InverseDynamicsObjective,
    MaskedHindsightControlConfig,
    MaskedHindsightControlObjective,
    ReturnConditionedObjective,
    combine_losses,
    curriculum_mask_sizes,
)


def pretraining_objectives(share_passes: bool = True) -> list[nn.Module]:
    return [
        ForwardDynamicsObjective(C, ACTION_DIM, ForwardDynamicsConfig(share_passes)),
        InverseDynamicsObjective(C, ACTION_DIM, InverseDynamicsConfig(share_passes)),
        MaskedHindsightControlObjective(C, ACTION_DIM, MaskedHindsightControlConfig(mask_actions=2, mask_obs=1)),
    ]


def perturbed(batch: dict, key: str, step: int) -> dict:
    out = dict(batch)
    out[key] = batch[key].clone()
    if key == "pixels":
        out[key][:, step] = torch.randint(0, 256, out[key][:, step].shape, dtype=torch.uint8)
    else:
        out[key][:, step] = -out[key][:, step] + 0.5
    return out


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-6)


# ---- information leaks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_bc_prediction_is_causal_and_blind_to_its_own_action(obs_type):
    torch.manual_seed(0)
    model, bc = tiny_model(obs_type).eval(), BehaviorCloningObjective(C, ACTION_DIM).eval()
    obs_key = "pixels" if obs_type == "pixels" else "observations"
    batch = make_batch(obs_type)
    t = 1
    pred = bc.predict_actions(model, batch)[:, t]
    for key, step in [("actions", t), ("actions", t + 1), (obs_key, t + 1), (obs_key, K - 1)]:
        assert same(bc.predict_actions(model, perturbed(batch, key, step))[:, t], pred), (key, step)
    for key, step in [("actions", t - 1), (obs_key, t), (obs_key, t - 1)]:
        assert not same(bc.predict_actions(model, perturbed(batch, key, step))[:, t], pred), (key, step)


def test_rtg_prediction_is_causal_and_uses_its_own_rtg():
    torch.manual_seed(0)
    model, rtg = tiny_model().eval(), ReturnConditionedObjective(C, ACTION_DIM).eval()
    batch = make_batch()
    t = 1
    pred = rtg.predict_actions(model, batch)[:, t]
    for key, step in [("actions", t), ("observations", t + 1), ("rtg", t + 1)]:
        assert same(rtg.predict_actions(model, perturbed(batch, key, step))[:, t], pred), (key, step)
    assert not same(rtg.predict_actions(model, perturbed(batch, "rtg", t))[:, t], pred)


def test_inverse_mask_hides_a_t_from_o_t_plus_1():
    torch.manual_seed(0)
    model = tiny_model().eval()
    batch = make_batch()

    def next_obs_out(b: dict) -> torch.Tensor:
        obs, act = model.encode_observations(b), model.embed_actions(b["actions"])
        return model(obs, act, b["timesteps"], model.attn_mask("inverse"))[:, 0::2]  # (B, K, C)

    t = 1
    out = next_obs_out(batch)[:, t + 1]
    assert same(next_obs_out(perturbed(batch, "actions", t))[:, t + 1], out)
    assert not same(next_obs_out(perturbed(batch, "actions", t - 1))[:, t + 1], out)
    assert not same(next_obs_out(perturbed(batch, "observations", t))[:, t + 1], out)


@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_rmhc_prediction_does_not_see_the_masked_action(obs_type):
    torch.manual_seed(0)
    model = tiny_model(obs_type).eval()
    rmhc = MaskedHindsightControlObjective(C, ACTION_DIM).eval()
    obs_key = "pixels" if obs_type == "pixels" else "observations"
    batch = make_batch(obs_type)
    act_replace = torch.zeros(3, K, dtype=torch.bool)
    act_replace[:, [1, 3]] = True
    obs_replace = torch.zeros(3, K, dtype=torch.bool)
    obs_replace[:, 2] = True

    def pred(b: dict) -> torch.Tensor:
        return rmhc.predict(model, b, {}, act_replace, obs_replace)[:, 1]

    base = pred(batch)
    for key, step in [("actions", 1), ("actions", 3), (obs_key, 2)]:  # masked tokens
        assert same(pred(perturbed(batch, key, step)), base), (key, step)
    for key, step in [("actions", 0), ("actions", 2), (obs_key, 3), (obs_key, 0)]:  # visible, both directions
        assert not same(pred(perturbed(batch, key, step)), base), (key, step)


@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_every_masked_input_reaches_the_trunk_as_the_mask_token(obs_type):
    """The trunk sees ``mask_token`` in place of every masked input (the same hidden states as putting it there by
    hand); so perturbing a masked input's value changes no prediction, and unmasking that one token does."""
    torch.manual_seed(0)
    model = tiny_model(obs_type).eval()
    rmhc = MaskedHindsightControlObjective(C, ACTION_DIM, MaskedHindsightControlConfig(mask_actions=2, mask_obs=1))
    obs_key = "pixels" if obs_type == "pixels" else "observations"
    batch = make_batch(obs_type)
    act_replace, obs_replace = rmhc.sample_masks(3, K, "cpu")
    obs, act = model.encode_observations(batch), model.embed_actions(batch["actions"])
    by_hand = model(torch.where(obs_replace[..., None], model.mask_token, obs),
                    torch.where(act_replace[..., None], model.mask_token, act), batch["timesteps"])
    assert torch.equal(model(obs, act, batch["timesteps"], None, obs_replace, act_replace), by_hand)

    base = rmhc.predict(model, batch, {}, act_replace, obs_replace)  # (B, K, A)
    for key, replace in [("actions", act_replace), (obs_key, obs_replace)]:
        for b, step in replace.nonzero().tolist():
            hidden_value = dict(batch, **{key: batch[key].clone()})
            hidden_value[key][b, step] = perturbed(batch, key, step)[key][b, step]
            assert same(rmhc.predict(model, hidden_value, {}, act_replace, obs_replace), base), (key, b, step)
            unmasked = replace.clone()
            unmasked[b, step] = False
            masks = (unmasked, obs_replace) if key == "actions" else (act_replace, unmasked)
            pred = rmhc.predict(model, batch, {}, *masks)
            assert not same(pred[b][act_replace[b]], base[b][act_replace[b]]), (key, b, step)


@pytest.mark.parametrize("isolate", [True, False])
def test_rmhc_isolate_actions_hides_other_steps_actions(isolate):
    """One block, so no path through observations: with ``isolate_actions`` a masked action's prediction ignores
    every other step's action, and still sees the observations."""
    torch.manual_seed(0)
    model = tiny_model(n_layer=1).eval()
    rmhc = MaskedHindsightControlObjective(C, ACTION_DIM, MaskedHindsightControlConfig(isolate_actions=isolate))
    batch = make_batch()
    act_replace = torch.zeros(3, K, dtype=torch.bool)
    act_replace[:, 1] = True
    no_obs = torch.zeros(3, K, dtype=torch.bool)
    base = rmhc.predict(model, batch, {}, act_replace, no_obs)[:, 1]
    for step in (0, 2, 3):
        assert same(rmhc.predict(model, perturbed(batch, "actions", step), {}, act_replace, no_obs)[:, 1],
                    base) == isolate, step
    assert not same(rmhc.predict(model, perturbed(batch, "observations", 3), {}, act_replace, no_obs)[:, 1], base)


@pytest.mark.parametrize("original", [False, True])
def test_rmhc_read_positions(original):
    """Which hidden state each prediction is read from, found by perturbing one output position at a time: the fix
    reads masked a_j at its own token 2j+1; the original bug (smart.md §2.5) read position j."""
    torch.manual_seed(0)
    model = tiny_model().eval()
    rmhc = MaskedHindsightControlObjective(C, ACTION_DIM, MaskedHindsightControlConfig(original_read_positions=original))
    batch = make_batch()
    act_replace, obs_replace = rmhc.sample_masks(3, K, "cpu")
    base = rmhc.predict(model, batch, {}, act_replace, obs_replace)  # (B, K, A)

    def changed_predictions(position: int) -> list[int]:
        hook = model.ln_f.register_forward_hook(lambda _m, _i, out: out.index_add(
            1, torch.tensor([position]), torch.ones_like(out[:, :1])))  # fmt: skip
        try:
            pred = rmhc.predict(model, batch, {}, act_replace, obs_replace)
        finally:
            hook.remove()
        return [j for j in range(K) if not same(pred[:, j], base[:, j])]

    for j in range(K):
        reads = changed_predictions(j if original else 2 * j + 1)
        assert reads == [j], (j, reads)
    # the fix never reads observation tokens; the bug reads o_0, a_0, o_1, a_1 for a_0..a_3 and ignores a_2, a_3
    ignored = [2 * j for j in range(K)] if not original else [5, 7]
    for position in ignored:
        assert changed_predictions(position) == [], position


# ---- pass sharing --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("share_passes", "expected"), [(True, 2), (False, 3)])
def test_pretraining_step_pass_count(share_passes, expected):
    model = tiny_model()
    calls = []
    model.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    encoder_calls = []
    model.obs_encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
    batch, cache = make_batch(), {}
    outputs = {obj.name: obj(model, batch, cache) for obj in pretraining_objectives(share_passes)}
    assert len(calls) == expected
    assert len(encoder_calls) == 1  # observations are encoded once per step
    assert set(outputs) == {"forward", "inverse", "masked_hindsight"}
    assert all(out["loss"].ndim == 0 and torch.isfinite(out["loss"]) for out in outputs.values())


def test_share_passes_reads_inverse_pass_for_both_dynamics_objectives():
    model = tiny_model().eval()
    batch = make_batch()
    fwd, inv = pretraining_objectives(True)[:2]
    cache = {}
    fwd(model, batch, cache), inv(model, batch, cache)
    assert {k for k in cache if k.startswith("hidden/")} == {"hidden/inverse"}


# ---- parameter updates ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_one_step_updates_every_trainable_parameter_and_not_the_target(obs_type):
    torch.manual_seed(0)
    model = tiny_model(obs_type)
    objectives = nn.ModuleList(pretraining_objectives())
    everything = nn.ModuleList([model, objectives])
    optimizer = torch.optim.AdamW(param_groups(everything, 0.1), lr=1e-3)
    before = {n: p.detach().clone() for n, p in everything.named_parameters()}
    cache, batch = {}, make_batch(obs_type)
    outputs = {obj.name: obj(model, batch, cache) for obj in objectives}
    combine_losses(outputs).backward()
    optimizer.step()
    # No trainable parameter is exempt: every one of them feeds at least one of the three losses.
    for name, p in everything.named_parameters():
        if name.startswith("0.target_obs_encoder."):
            assert p.grad is None and torch.equal(p, before[name]), name
        else:
            assert p.requires_grad and p.grad is not None, name
            assert not torch.equal(p, before[name]), name
    objectives[0].after_optimizer_step(model)  # forward dynamics' EMA hook
    assert not torch.equal(model.target_obs_encoder.net[0].weight, before["0.target_obs_encoder.net.0.weight"])


# ---- padded action dims ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective_cls", [InverseDynamicsObjective, MaskedHindsightControlObjective,
                                           BehaviorCloningObjective, ReturnConditionedObjective])  # fmt: skip
def test_padded_action_dims_do_not_contribute(objective_cls):
    model = tiny_model().eval()
    objective = objective_cls(C, ACTION_DIM).eval()
    batch = make_batch()

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same RMHC masks each time
        return objective(model, batch)["loss"]

    base = loss()
    with torch.no_grad():
        objective.head.bias[VALID_DIMS:] += 5.0  # predictions on the padded dim only
    assert torch.equal(loss(), base)
    with torch.no_grad():
        objective.head.bias[0] += 5.0
    assert not torch.allclose(loss(), base)


# ---- policies at rollout time --------------------------------------------------------------------------------------
@pytest.mark.parametrize("obs_type", ["state", "pixels"])
@pytest.mark.parametrize("T", [1, 2, K])
def test_predict_actions_on_histories_ending_with_an_observation(obs_type, T):
    """A rollout history (T observations, T-1 actions, T <= K) predicts what the full training window predicts at
    the same observation tokens: the causal pass never reads a_t or later steps for o_t's action."""
    torch.manual_seed(0)
    model = tiny_model(obs_type).eval()
    full = make_batch(obs_type, B=2)
    obs_key = "pixels" if obs_type == "pixels" else "observations"
    history = {"actions": full["actions"][:, : T - 1], "timesteps": full["timesteps"][:, :T], "rtg": full["rtg"][:, :T],
               obs_key: full[obs_key][:, :T]}
    for policy in (BehaviorCloningObjective(C, ACTION_DIM).eval(), ReturnConditionedObjective(C, ACTION_DIM).eval()):
        pred = policy.predict_actions(model, history)
        assert pred.shape == (2, T, ACTION_DIM)
        assert torch.allclose(pred, policy.predict_actions(model, full)[:, :T], atol=1e-5)


def test_policy_losses_share_the_causal_pass():
    model = tiny_model()
    calls = []
    model.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    cache, batch = {}, make_batch()
    for policy in (BehaviorCloningObjective(C, ACTION_DIM), ReturnConditionedObjective(C, ACTION_DIM)):
        assert torch.isfinite(policy(model, batch, cache)["loss"])
    assert len(calls) == 1


# ---- curriculum and loss combination -------------------------------------------------------------------------------
def test_curriculum_mask_sizes():
    sizes = [curriculum_mask_sizes(e, 10, 30) for e in range(10)]
    assert [a for a, _ in sizes] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert [o for _, o in sizes] == [3, 6, 9, 12, 15, 15, 15, 15, 15, 15]
    assert curriculum_mask_sizes(0, 50, 30) == (1, 1)  # never below one
    assert curriculum_mask_sizes(12, 10, 30) == (30, 15)  # never above K (training past max_epochs)


def test_combine_losses_is_the_weighted_mean_of_active_terms():
    outputs = {"forward": {"loss": torch.tensor(2.0)}, "inverse": {"loss": torch.tensor(4.0)}}
    assert combine_losses(outputs, {"forward": 0.5}).item() == pytest.approx((0.5 * 2 + 4) / 2)
    assert combine_losses(outputs).item() == pytest.approx(3.0)
