"""MLR's pieces (issue 17, mlr_mwm.md §A.4): cube masks, the 2 - 2cos loss, the momentum projection."""

import pytest
import torch

from control_pretrain.models.cube_mask import apply_cube_masks, cube_cell_masks
from control_pretrain.objectives.mlr import LatentReconstruction, MLRConfig, mlr_loss


@pytest.mark.parametrize("per_sample", [False, True])
def test_cube_masks_hide_exactly_the_ratio_per_frame_constant_within_blocks(per_sample):
    g = torch.Generator().manual_seed(0)
    masks = cube_cell_masks(4, 16, 8, grid=10, ratio=0.5, per_sample=per_sample, generator=g)  # (B, K, 10, 10)
    assert masks.shape == (4, 16, 10, 10) and masks.dtype == torch.bool
    assert (masks.sum(dim=(-2, -1)) == 50).all()  # exactly 50 of 100 cells in every frame
    assert (masks[:, :8] == masks[:, :1]).all() and (masks[:, 8:] == masks[:, 8:9]).all()  # constant per block
    assert not torch.equal(masks[:, 0], masks[:, 8])  # a fresh draw per block
    same = all(torch.equal(masks[0], masks[b]) for b in range(4))
    assert same != per_sample  # one mask per batch (the reference) or one per clip


def test_cube_masks_zero_every_channel_of_the_hidden_cells_only():
    frames = torch.randint(1, 256, (2, 8, 9, 100, 100), dtype=torch.uint8)  # 3 stacked RGB frames, no zeros
    masks = cube_cell_masks(2, 8, 4, per_sample=True, generator=torch.Generator().manual_seed(1))
    out = apply_cube_masks(frames, masks)
    cell = out.view(2, 8, 9, 10, 10, 10, 10).permute(0, 1, 3, 5, 2, 4, 6)  # (B, K, gy, gx, C, 10, 10)
    hidden = (cell == 0).flatten(-3).all(-1)  # (B, K, gy, gx): every pixel of every channel zero
    kept = (cell != 0).flatten(-3).all(-1)
    assert torch.equal(hidden, masks) and torch.equal(kept, ~masks)
    assert out.dtype == torch.uint8


def test_cube_masks_refuse_a_clip_that_is_not_whole_blocks():
    with pytest.raises(ValueError, match="multiple of the temporal block size"):
        cube_cell_masks(2, 7, 8)  # the reference's shipped configs: K=7, block 8
    with pytest.raises(ValueError, match="grid"):
        apply_cube_masks(torch.zeros(1, 4, 3, 84, 84), cube_cell_masks(1, 4, 4))  # 84 px do not split into 10


def test_mlr_loss_bounds():
    torch.manual_seed(0)
    x = torch.randn(64, 16, 50)
    assert mlr_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert mlr_loss(x, -x).item() == pytest.approx(4.0, abs=1e-6)
    assert mlr_loss(x, torch.randn(64, 16, 50)).item() == pytest.approx(2.0, abs=0.05)  # independent features


def test_loss_is_zero_for_identical_paths_with_no_mask_and_identity_heads():
    torch.manual_seed(0)
    head = LatentReconstruction(8, 3, 4, MLRConfig(n_layer=0))
    for mlp in (head.projection, head.prediction, head.target_projection):  # identity heads
        for layer in (mlp[0], mlp[2]):
            torch.nn.init.zeros_(layer.bias)
        mlp[0].weight.data = torch.cat([torch.eye(8), -torch.eye(8)])
        mlp[2].weight.data = torch.cat([torch.eye(8), -torch.eye(8)], dim=1)  # relu(x) - relu(-x) = x
    latents = torch.randn(5, 4, 8)
    time = head.time_embed[:4]
    # With no blocks the state outputs are latents + time embedding: compare against the same target path.
    assert head.loss(latents, torch.randn(5, 4, 3), latents + time).item() == pytest.approx(0.0, abs=1e-6)


def test_momentum_projection_moves_tau_of_the_difference_and_gets_no_gradient():
    torch.manual_seed(0)
    head = LatentReconstruction(8, 3, 4, MLRConfig(tau=0.1))
    with torch.no_grad():
        for p in head.projection.parameters():
            p.add_(1.0)
    before = [p.clone() for p in head.target_projection.parameters()]
    online = [p.clone() for p in head.projection.parameters()]
    head.loss(torch.randn(2, 4, 8), torch.randn(2, 4, 3), torch.randn(2, 4, 8)).backward()
    assert all(p.grad is None and not p.requires_grad for p in head.target_projection.parameters())
    assert all(p.grad is not None for p in head.projection.parameters())
    head.update_target()
    for b, o, a in zip(before, online, head.target_projection.parameters()):
        torch.testing.assert_close(a, b + 0.1 * (o - b))


def test_curl_encoder_shapes_shared_convs_and_detach():
    from control_pretrain.models.curl_encoder import CurlEncoder

    critic, actor = CurlEncoder(9, 50, filters=8), CurlEncoder(9, 50, filters=8)
    actor.share_convs_with(critic)
    assert actor.convs is critic.convs and actor.fc is not critic.fc
    frames = torch.randint(0, 256, (3, 9, 84, 84), dtype=torch.uint8)
    assert critic.fc.in_features == 8 * 35 * 35  # 84 -> 41 -> 39 -> 37 -> 35
    actor(frames, detach=True).sum().backward()
    assert all(p.grad is None for p in critic.convs.parameters()) and actor.fc.weight.grad is not None
    critic(frames).sum().backward()
    assert all(p.grad is not None for p in critic.convs.parameters())
    with pytest.raises(ValueError, match="crop first"):
        critic(torch.zeros(1, 9, 100, 100, dtype=torch.uint8))


def test_random_crops_cover_every_offset_and_copy_the_window():
    from control_pretrain.models.curl_encoder import center_crop, random_crop, random_crop_clips

    frames = torch.arange(100 * 100, dtype=torch.int32).view(1, 1, 100, 100).expand(4000, 1, 100, 100)
    crops = random_crop(frames, generator=torch.Generator().manual_seed(0))
    ys, xs = crops[:, 0, 0, 0] // 100, crops[:, 0, 0, 0] % 100  # the top-left pixel's coordinates
    assert set(ys.tolist()) == set(range(17)) and set(xs.tolist()) == set(range(17))  # 0..16, 16 included
    for i in range(5):
        assert torch.equal(crops[i, 0], frames[0, 0, ys[i] : ys[i] + 84, xs[i] : xs[i] + 84])
    clips = frames[:24].reshape(3, 8, 1, 100, 100)
    same = random_crop_clips(clips, per_frame=False, generator=torch.Generator().manual_seed(1))
    assert (same[:, :, 0, 0, 0] == same[:, :1, 0, 0, 0]).all()  # one offset per clip
    apart = random_crop_clips(clips, per_frame=True, generator=torch.Generator().manual_seed(1))
    assert not (apart[:, :, 0, 0, 0] == apart[:, :1, 0, 0, 0]).all()  # an offset per frame (the reference)
    assert torch.equal(center_crop(frames[:1])[0, 0, 0, 0], torch.tensor(8 * 100 + 8, dtype=torch.int32))


def test_mlr_update_steps_encoder_and_head_on_the_reference_schedule_and_moves_targets_by_tau():
    import copy

    from control_pretrain.agents.mlr_update import MLRUpdateConfig, MLRUpdater, lr_factor
    from control_pretrain.models.curl_encoder import CurlEncoder

    assert lr_factor(0, 6000) == pytest.approx(5e-4) and lr_factor(6000, 6000) == pytest.approx(1.0)
    assert lr_factor(24000, 6000) == pytest.approx(0.5)  # x sqrt(6000 / step) after the warm-up
    torch.manual_seed(0)
    encoder = CurlEncoder(3, 16, filters=4)
    updater = MLRUpdater(encoder, copy.deepcopy(encoder), 2, MLRUpdateConfig(clip_len=4, block=2, warmup=10))
    clips = torch.randint(0, 256, (3, 4, 3, 100, 100), dtype=torch.uint8)
    actions = torch.rand(3, 4, 2) * 2 - 1
    conv_before = encoder.convs[0].weight.clone()
    momentum_before = updater.momentum.convs[0].weight.clone()
    info = updater.update(clips, actions, torch.Generator().manual_seed(0))
    assert 0.0 <= info["mlr_loss"] <= 4.0 and info["mlr_lr"] == pytest.approx(5e-4 * lr_factor(1, 10))
    assert not torch.equal(encoder.convs[0].weight, conv_before)  # MLR trains the (critic's) encoder
    assert torch.equal(updater.momentum.convs[0].weight, momentum_before)  # the momentum encoder only by EMA
    assert all(not p.requires_grad for p in updater.momentum.parameters())
    updater.update_targets()
    expected = momentum_before + 0.05 * (encoder.convs[0].weight - momentum_before)
    torch.testing.assert_close(updater.momentum.convs[0].weight, expected)
