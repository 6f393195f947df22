"""ControlTransformer and its blocks: shapes (state and pixels, 2K / 2T-1 tokens, T < K), key-padding masks,
config round trip, the trunk protocol, EMA target, weight-decay groups."""

import pytest
import torch
from conftest import C, make_batch, tiny_model
from torch import nn

from control_pretrain.models.blocks import Block
from control_pretrain.models.control_transformer import (
    ControlTransformer,
    ControlTransformerConfig,
    param_groups,
    split_tokens,
)
from control_pretrain.models.ema import ema_update
from control_pretrain.models.encoders import CNN_FEATURES, PIXEL_SIZE, PixelEncoder
from control_pretrain.models.masks import causal_mask
from control_pretrain.models.trunk import Trunk


def run(model: ControlTransformer, batch: dict, kind: str = "causal") -> torch.Tensor:
    obs = model.encode_observations(batch)
    return model(obs, model.embed_actions(batch["actions"]), batch["timesteps"], model.attn_mask(kind))


@pytest.mark.parametrize("obs_type", ["state", "pixels"])
@pytest.mark.parametrize(("T", "Ta"), [(4, 4), (4, 3), (2, 2), (2, 1), (1, 0)])
def test_shapes(obs_type, T, Ta):
    model = tiny_model(obs_type)
    batch = make_batch(obs_type, B=2, T=T, num_actions=Ta)
    obs = model.encode_observations(batch)
    assert obs.shape == (2, T, 32)
    hidden = run(model, batch)
    assert hidden.shape == (2, T + Ta, 32)
    state_out, action_out = split_tokens(hidden)
    assert state_out.shape == (2, T, 32) and action_out.shape == (2, Ta, 32)
    assert model.encode_target(batch).shape == (2, T, 32)


def test_full_sequence_and_2t_minus_1_agree_on_shared_prefix():
    """Causality: dropping the last action token changes no earlier output."""
    model = tiny_model("state").eval()
    batch = make_batch(model.config.obs_type)
    short = dict(batch, actions=batch["actions"][:, :-1])
    assert torch.allclose(run(model, batch)[:, :-1], run(model, short), atol=1e-6)


def test_rejects_bad_lengths():
    model = tiny_model("state")
    with pytest.raises(ValueError):
        run(model, make_batch(T=3, num_actions=1))
    with pytest.raises(ValueError):
        run(model, make_batch(T=5))


def test_timesteps_are_per_step():
    """Each token carries its own timestep (the original broadcast the window's first step to every token)."""
    model = tiny_model("state").eval()
    batch = make_batch(model.config.obs_type)
    shifted = dict(batch, timesteps=batch["timesteps"].clone())
    shifted["timesteps"][:, 2] += 1
    a, b = run(model, batch), run(model, shifted)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)  # tokens of steps 0, 1 do not see step 2
    assert not torch.allclose(a[:, 4], b[:, 4])


def test_pixel_encoder_takes_uint8_only():
    enc = PixelEncoder(16)
    frames = torch.randint(0, 256, (3, 3, 84, 84), dtype=torch.uint8)
    out = enc(frames)
    assert out.shape == (3, 16) and out.abs().max() <= 1
    # the encoder runs its convolutions channels-last: the same values up to float32 round-off
    torch.testing.assert_close(out, enc.net(frames.float() / 255), atol=1e-5, rtol=1e-4)
    with pytest.raises(TypeError):
        enc(frames.float())


@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_config_round_trip_rebuilds_the_same_model(obs_type):
    model = tiny_model(obs_type).eval()
    state = model.state_dict()
    assert "causal_mask" not in state and "inverse_mask" not in state
    assert any(k.startswith("target_obs_encoder.") for k in state)
    rebuilt = ControlTransformer.from_config(model.to_config()).eval()
    rebuilt.load_state_dict(state)
    batch = make_batch(model.config.obs_type)
    assert torch.equal(run(model, batch), run(rebuilt, batch))


def test_config_validation():
    with pytest.raises(ValueError):
        ControlTransformerConfig(obs_type="state", obs_dim=0)
    with pytest.raises(ValueError):
        ControlTransformerConfig(obs_type="rgb")
    with pytest.raises(ValueError):
        ControlTransformerConfig(n_embd=30, n_head=4)


def test_target_encoder_is_frozen_copy_and_moves_only_on_update():
    model = tiny_model("state")
    online = dict(model.obs_encoder.named_parameters())
    for name, p in model.target_obs_encoder.named_parameters():
        assert not p.requires_grad and torch.equal(p, online[name])
    with torch.no_grad():
        for p in model.obs_encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.target_obs_encoder.parameters()]
    ema_update(model.target_obs_encoder, model.obs_encoder, 0.25)
    for b, p_t, p in zip(before, model.target_obs_encoder.parameters(), model.obs_encoder.parameters(), strict=True):
        assert torch.allclose(p_t, 0.75 * b + 0.25 * p)


def test_init():
    model = tiny_model("state")
    assert torch.equal(model.rel_pos_bias.bias, torch.zeros_like(model.rel_pos_bias.bias))
    reference = tiny_model("state", position_encoding="absolute")
    assert torch.equal(reference.pos_emb, torch.zeros_like(reference.pos_emb))
    block = model.blocks[0]
    assert torch.equal(block.ln_1.weight, torch.ones(32)) and torch.equal(block.ln_1.bias, torch.zeros(32))
    assert torch.equal(block.attn.c_attn.bias, torch.zeros(96))
    assert abs(block.mlp.c_fc.weight.std().item() - 0.02) < 0.005


@pytest.mark.parametrize(("obs_type", "position_encoding"),
                         [("state", "relative_bias"), ("pixels", "relative_bias"), ("state", "absolute"),
                          ("state", "step_type")])
def test_param_groups_decay_only_weight_matrices(obs_type, position_encoding):
    model = tiny_model(obs_type, position_encoding=position_encoding)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decay_ids = {id(p) for p in decay["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    for mod in model.modules():
        for n, p in mod.named_parameters(recurse=False):
            if isinstance(mod, (nn.LayerNorm, nn.Embedding)) or n == "bias":
                assert id(p) not in decay_ids, names[id(p)]
    positions = {"relative_bias": ["rel_pos_bias.bias"], "absolute": ["pos_emb"],
                 "step_type": ["step_pos_emb", "token_type_emb"]}[position_encoding]
    for name in ["mask_token", "timestep_emb.weight", *positions]:
        assert id(model.get_parameter(name)) not in decay_ids, name
    assert id(model.blocks[0].attn.c_attn.weight) in decay_ids
    if obs_type == "pixels":
        assert id(model.obs_encoder.net[0].weight) in decay_ids
    grouped = decay["params"] + no_decay["params"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    assert not any(id(p) in {id(q) for q in grouped} for p in model.target_obs_encoder.parameters())


def test_block_key_padding_equals_dropping_the_padded_tokens():
    torch.manual_seed(0)
    block = Block(C, 2, dropout=0.0).eval()
    x = torch.randn(2, 6, C)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, 4:] = True  # sample 0 has 4 real tokens, sample 1 has 6
    out = block(x, key_padding_mask=padding)
    assert torch.allclose(out[0, :4], block(x[:1, :4])[0], atol=1e-6)
    assert torch.allclose(out[1], block(x[1:])[0], atol=1e-6)
    # with a causal mask too: the first 4 tokens of sample 0 still only see each other, causally
    causal = causal_mask(6)
    out = block(x, causal, padding)
    assert torch.allclose(out[0, :4], block(x[:1, :4], causal[:4, :4])[0], atol=1e-6)
    # the padded tokens really are ignored: changing them changes no real token's output
    x2 = x.clone()
    x2[0, 4:] = torch.randn(2, C)
    assert torch.equal(block(x2, key_padding_mask=padding)[0, :4], block(x, key_padding_mask=padding)[0, :4])


def test_state_dict_keys_are_those_of_older_checkpoints():
    """With the reference's positions (what every checkpoint before issue 13 used) the keys are the old ones."""
    keys = set(tiny_model(position_encoding="absolute").state_dict())
    for key in ("blocks.0.attn.c_attn.weight", "blocks.0.attn.c_proj.bias", "blocks.1.ln_1.weight",
                "blocks.1.ln_2.bias", "blocks.0.mlp.c_fc.weight", "blocks.0.mlp.c_proj.weight", "ln_f.weight",
                "pos_emb", "mask_token", "timestep_emb.weight", "obs_encoder.net.0.weight",
                "target_obs_encoder.net.0.weight", "action_encoder.net.0.weight"):
        assert key in keys, key


def test_control_transformer_is_a_trunk():
    assert isinstance(tiny_model(), Trunk)


def test_pixel_feature_count_is_derived_from_the_frame_size():
    assert PIXEL_SIZE == 84 and CNN_FEATURES == 3136
    assert PixelEncoder(8).net[-2].in_features == CNN_FEATURES
