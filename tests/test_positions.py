"""Position schemes (models/positions.py): every pass stays causal where it must and prefix-consistent for
rollout histories under each scheme, the relative bias and rotary tables depend only on token offsets, attention
biases combine with boolean masks, and checkpoints written before ``position_encoding`` existed rebuild as they
were trained."""

import pytest
import torch
from conftest import K, make_batch, tiny_model

from control_pretrain.models.blocks import attention_mask
from control_pretrain.models.control_transformer import ControlTransformer, stored_model_config
from control_pretrain.models.masks import action_isolation_mask, causal_mask
from control_pretrain.models.positions import POSITION_ENCODINGS, RelativePositionBias, RotaryEmbedding, apply_rotary

SCHEMES = list(POSITION_ENCODINGS)


def randomised(model: ControlTransformer) -> ControlTransformer:
    """Zero-initialised position parameters would hide a scheme that does nothing: give them values."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("pos_emb", "step_pos_emb", "token_type_emb", "rel_pos_bias.bias"):
                p.normal_()
    return model.eval()


def run(model: ControlTransformer, batch: dict, kind: str = "causal") -> torch.Tensor:
    obs = model.encode_observations(batch)
    return model(obs, model.embed_actions(batch["actions"]), batch["timesteps"], model.attn_mask(kind))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_is_prefix_consistent_and_causal(scheme):
    """A rollout history (2T-1 tokens, T < K) gets the outputs of the same tokens in a training window."""
    model = randomised(tiny_model(position_encoding=scheme))
    batch = make_batch()
    full = run(model, batch)  # (B, 2K, C)
    for T in range(1, K + 1):
        short = {**batch, "observations": batch["observations"][:, :T], "actions": batch["actions"][:, : T - 1],
                 "timesteps": batch["timesteps"][:, :T]}
        assert torch.allclose(run(model, short), full[:, : 2 * T - 1], atol=1e-5), T
    later = {**batch, "observations": batch["observations"].clone()}
    later["observations"][:, -1] += 1.0
    assert torch.allclose(run(model, later)[:, :-2], full[:, :-2], atol=1e-6)  # nothing sees the future
    assert not torch.allclose(run(model, later)[:, -2], full[:, -2])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_tells_tokens_apart_by_position(scheme):
    """Swapping two observation steps changes the bidirectional outputs beyond the swap itself: positions are
    seen, not only content (with identical timesteps, so the timestep embedding cannot tell them apart)."""
    model = randomised(tiny_model(position_encoding=scheme))
    batch = {**make_batch(), "timesteps": torch.zeros(3, K, dtype=torch.long)}
    swapped = {**batch, "observations": batch["observations"][:, [1, 0, *range(2, K)]]}
    a, b = run(model, batch, "full"), run(model, swapped, "full")
    assert not torch.allclose(a[:, 2 * K - 1], b[:, 2 * K - 1], atol=1e-5)


def test_relative_bias_depends_only_on_the_offset_and_is_scaled():
    rel = RelativePositionBias(n_layer=2, n_head=3, max_tokens=8, scale=10.0)
    torch.nn.init.normal_(rel.bias)
    bias = rel(8)  # (2, 3, 8, 8)
    assert bias.shape == (2, 3, 8, 8)
    for i, j in [(0, 1), (3, 4), (6, 7)]:
        assert torch.equal(bias[:, :, i, j], bias[:, :, 0, 1])
    assert torch.equal(bias[:, :, 5, 2], 10.0 * rel.bias[:, :, 8 - 1 - 3])  # offset -3
    assert torch.equal(rel(5), bias[:, :, :5, :5])  # prefix-consistent


def test_rotary_scores_depend_only_on_the_offset():
    rotary = RotaryEmbedding(head_dim=8, max_tokens=16)
    q, k = torch.randn(8), torch.randn(8)
    tables = rotary(16)

    def score(m: int, n: int) -> torch.Tensor:
        x = torch.stack([q, k])[None, None].expand(1, 1, 2, 8)  # as if q at token m and k at token n
        cos, sin = tables
        rq = apply_rotary(x[:, :, :1], (cos[m : m + 1], sin[m : m + 1]))
        rk = apply_rotary(x[:, :, 1:], (cos[n : n + 1], sin[n : n + 1]))
        return (rq * rk).sum()

    assert torch.allclose(score(3, 1), score(12, 10), atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2), atol=1e-3)
    assert torch.allclose(apply_rotary(q[None, None, None].expand(1, 1, 16, 8), tables).norm(dim=-1),
                          q.norm().expand(1, 1, 16))  # a rotation


def test_a_bias_keeps_the_boolean_mask():
    bias = torch.randn(2, 4, 4)
    allowed = causal_mask(4)
    mask = attention_mask(allowed, None, bias)
    assert torch.equal(mask[:, allowed], bias[:, allowed]) and torch.isinf(mask[:, ~allowed]).all()
    padding = torch.tensor([[False, False, False, True]])
    mask = attention_mask(allowed, padding, bias)  # (1, 2, 4, 4)
    assert torch.isinf(mask[0, :, :, 3]).all() and torch.equal(mask[0, :, 2, :3], bias[:, 2, :3])
    assert attention_mask(allowed, None) is allowed  # without a bias, the boolean mask as before


def test_action_isolation_mask():
    mask = action_isolation_mask(3)  # tokens o0 a0 o1 a1 o2 a2
    assert mask[[0, 2, 4]].all()  # observations see everything
    assert mask[1].tolist() == [True, True, True, False, True, False]  # a0 sees every observation and itself
    assert torch.equal(action_isolation_mask(2), mask[:4, :4])


def test_checkpoint_config_from_before_position_encoding_rebuilds_the_reference_positions():
    old = tiny_model(position_encoding="absolute")
    config = old.to_config()
    del config["position_encoding"], config["relative_bias_scale"]  # what checkpoints before issue 13 stored
    assert stored_model_config(config)["position_encoding"] == "absolute" and stored_model_config({}) == {}
    rebuilt = ControlTransformer.from_config(config)
    rebuilt.load_state_dict(old.state_dict())  # strict: the same keys (pos_emb), nothing missing
    batch = make_batch()
    assert torch.equal(run(rebuilt.eval(), batch), run(old.eval(), batch))


def test_unknown_scheme_is_rejected():
    with pytest.raises(ValueError, match="position_encoding"):
        tiny_model(position_encoding="sinusoidal")


def test_relative_bias_is_the_default_and_has_no_position_table():
    model = tiny_model()
    assert model.config.position_encoding == "relative_bias"
    names = dict(model.named_parameters())
    assert "pos_emb" not in names and names["rel_pos_bias.bias"].shape == (2, 2, 2 * 2 * K - 1)
    assert model.rel_pos_bias(2 * K).shape == (2, 2, 2 * K, 2 * K)
