"""MWM's masked autoencoder (issue 18, mlr_mwm.md §B.2, §D.4): masking, the unmasked path, the reward wiring,
learning on synthetic frames, ``--method mae`` through the real CLI and the checkpoint loader."""

import math

import pytest
import torch
import yaml

from control_pretrain.errors import CheckpointError
from control_pretrain.models.mae import (
    ConvMaskedAutoencoder,
    MAEConfig,
    load_mae_from_checkpoint,
    patchify,
    random_masking,
    symlog,
)

# The smallest MAE that still has every part: 32 px frames -> a 4 x 4 token grid.
MICRO = {"image_size": 32, "embed_dim": 32, "decoder_dim": 32, "encoder_depth": 1, "decoder_depth": 1, "n_head": 2}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: a second thread only contends with the other jobs on the 2-core machine (30x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frames(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_random_masking_keeps_a_quarter_per_sample_and_the_unshuffle_restores_order():
    tokens = torch.arange(64, dtype=torch.float32).view(1, 64, 1).expand(5, 64, 3)  # (B, N, D) value = index
    kept, mask, ids_restore = ConvMaskedAutoencoder.random_masking(tokens, 0.75, torch.Generator().manual_seed(0))
    assert kept.shape == (5, 16, 3) and mask.shape == (5, 64)
    assert (mask.sum(1) == 48).all()  # exactly 16 of 64 kept in every sample (mask: 1 = dropped)
    for b in range(5):  # the kept tokens are exactly the unmasked positions
        assert sorted(kept[b, :, 0].long().tolist()) == (mask[b] == 0).nonzero().flatten().tolist()
    assert len({tuple(m.tolist()) for m in mask}) == 5  # an independent mask per frame
    placeholder = torch.full((5, 48, 3), -1.0)  # what the decoder puts at dropped positions
    restored = torch.cat([kept, placeholder], 1).gather(1, ids_restore[:, :, None].expand(5, 64, 3))  # (B, N, D)
    visible = mask == 0
    assert torch.equal(restored[visible], tokens[visible])  # each kept token back at its own position
    assert (restored[~visible] == -1).all()


def test_ratio_zero_is_the_identity_and_encode_equals_the_explicit_unmasked_path():
    tokens = torch.randn(3, 64, 8)
    kept, mask, ids_restore = random_masking(tokens, 0.0)
    assert torch.equal(kept, tokens) and not mask.any() and torch.equal(ids_restore, torch.arange(64).expand(3, 64))
    torch.manual_seed(0)
    mae = ConvMaskedAutoencoder(MAEConfig.tiny()).eval()
    x = frames(2)
    with torch.no_grad():
        images = (x.float() / 255 - mae.pixel_mean) / mae.pixel_std  # (B, 3, 64, 64) ImageNet-standardised
        h = mae.patch_embed(images).flatten(2).transpose(1, 2) + mae.pos_embed  # (B, 64, D), no masking step
        h = torch.cat([mae.cls_token.expand(2, 1, -1), h], 1)
        for block in mae.encoder_blocks:
            h = block(h)
        expected = mae.encoder_norm(h)  # (B, 65, D)
        assert torch.equal(mae.encode(x, 0.0), expected) and torch.equal(mae.features(x), expected)
        assert mae.encode(x, 0.75).shape == (2, 17, 128)  # CLS + 16 kept tokens


def test_84px_frames_reach_the_64px_grid_by_area_resize_or_centre_crop():
    torch.manual_seed(0)
    x = frames(2, size=84)
    area = ConvMaskedAutoencoder(MAEConfig.tiny())
    crop = ConvMaskedAutoencoder(MAEConfig.tiny(resize="center_crop"))
    torch.testing.assert_close(area.pixels01(x), torch.nn.functional.interpolate(x.float() / 255, 64, mode="area"))
    assert torch.equal(crop.pixels01(x), x[..., 10:74, 10:74].float() / 255)
    assert area.encode(x).shape == crop.encode(x).shape == (2, 65, 128)
    assert area.loss(x, torch.rand(2))["loss"].isfinite()
    with pytest.raises(TypeError, match="uint8"):
        area.encode(x.float())


@pytest.mark.parametrize("wiring", ["token", "patch"])
def test_reward_wiring_reads_the_reward_token_or_the_reference_last_patch(wiring):
    """Perturb one row of the decoder's final hidden states: the fixed head moves only with the reward token's
    row, the reference's (B.8 #2) only with the last (bottom-right) patch's."""
    torch.manual_seed(0)
    mae = ConvMaskedAutoencoder(MAEConfig(**MICRO, reward_wiring=wiring)).eval()
    latent, _, ids_restore = mae.forward_encoder(frames(2, 32), 0.75, torch.Generator().manual_seed(0))
    row = {"reward token": -1, "last patch": -2}  # decoder tokens: [CLS], 16 patches, reward token

    def reward_after_perturbing(index: int | None) -> torch.Tensor:
        def hook(module, inputs, out):
            if index is not None:
                out = out.clone()
                out[:, index] += 1.0
            return out
        handle = mae.decoder_norm.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return mae.forward_decoder(latent, ids_restore)[1]  # (B,)
        finally:
            handle.remove()

    base = reward_after_perturbing(None)
    moved = {name: not torch.allclose(reward_after_perturbing(i), base) for name, i in row.items()}
    reads = "reward token" if wiring == "token" else "last patch"
    assert moved == {name: name == reads for name in row}


def synthetic(n: int, generator: torch.Generator, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames of a uniform grey level with a red 12 px square at a random place; reward = 2 x the grey level,
    visible in any unmasked token."""
    level = torch.rand(n, generator=generator)
    x = level.view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    corner = torch.randint(0, size - 12, (n, 2), generator=generator)
    for i, (y, c) in enumerate(corner.tolist()):
        x[i, :, y : y + 12, c : c + 12] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    return (x * 255).round().to(torch.uint8), 2 * level


def test_a_tiny_mae_learns_pixels_and_reward_on_synthetic_frames():
    torch.manual_seed(0)
    mae = ConvMaskedAutoencoder(MAEConfig.tiny(image_size=32))
    optimizer = torch.optim.Adam(mae.parameters(), 1e-3)
    val_frames, val_rewards = synthetic(128, torch.Generator().manual_seed(1))

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            out = mae.loss(val_frames, val_rewards, torch.Generator().manual_seed(2))  # the same masks each time
        return {k: v.item() for k, v in out.items()}

    before = evaluate()
    train = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = mae.loss(*synthetic(32, train))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    predict_zero = symlog(val_rewards).square().mean().item()
    predict_mean = symlog(val_rewards).var().item()  # the best constant
    assert after["pixel_loss"] < 0.5 * before["pixel_loss"]
    assert after["masked_psnr"] > before["masked_psnr"] + 3.0
    assert after["reward_loss"] < 0.25 * predict_mean < predict_zero  # it reads the frames, not just the mean


def test_masked_loss_only_scores_the_dropped_patches():
    torch.manual_seed(0)
    mae = ConvMaskedAutoencoder(MAEConfig(**MICRO, masked_loss_only=True)).eval()
    x = frames(3, 32)
    with torch.no_grad():
        out = mae.loss(x, None, torch.Generator().manual_seed(5))
        latent, mask, ids_restore = mae.forward_encoder(x, 0.75, torch.Generator().manual_seed(5))
        pred, _ = mae.forward_decoder(latent, ids_restore)
        per_patch = (pred - patchify(mae.normalize(mae.pixels01(x)))).square().mean(-1)  # (B, N)
    torch.testing.assert_close(out["pixel_loss"], per_patch[mask.bool()].mean())
    assert out["reward_loss"] == 0  # no rewards given: no reward term


def test_loader_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_mae_from_checkpoint(str(tmp_path / "missing.ckpt"), freeze=True)
    torch.save({"state_dict": {"model.weight": torch.zeros(2)}}, tmp_path / "smart.ckpt")
    with pytest.raises(CheckpointError, match="holds no MAE"):
        load_mae_from_checkpoint(str(tmp_path / "smart.ckpt"), freeze=True)
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_mae_from_checkpoint(str(tmp_path / "text.ckpt"), freeze=False)
    other = ConvMaskedAutoencoder(MAEConfig(**MICRO))
    with pytest.raises(CheckpointError, match="embed_dim: checkpoint 32, this model 128"):
        ConvMaskedAutoencoder(MAEConfig.tiny(image_size=32)).load_state_dict(other.state_dict())


@pytest.fixture(scope="module")
def mae_run(pixel_dir, tmp_path_factory):
    """``dmc_pretrain.py --method mae`` on real (fast-rendered) 84 px pixel windows, micro MAE, 3 steps."""
    from conftest import TINY_ARGS, run_in_process

    import dmc_pretrain

    out = tmp_path_factory.mktemp("mae_pretrain")
    micro = out / "micro.yaml"
    micro.write_text(yaml.safe_dump({"model": {"objectives": [{
        "class_path": "control_pretrain.objectives.MaskedAutoencoderObjective",
        "init_args": {"config": MICRO}}]}}))
    cli = run_in_process(dmc_pretrain.main, [
        "--method", "mae", "--obs_type", "pixels", "--config", str(micro),
        "--multi_config", "configs/pretrain_configs/multipretrain_source_test.json", "--epochs", "1",
        "--num_steps", "1000", "--output_dir", str(out), "--data_dir_prefix", str(pixel_dir), *TINY_ARGS])
    return cli, out


def test_method_mae_trains_its_own_network_logs_its_metrics_and_loads_back(mae_run, pixel_dir):
    from conftest import scalars

    cli, out = mae_run
    module = cli.model
    assert [o.name for o in module.objectives.values()] == ["mae"]
    assert not any(p.requires_grad for p in module.model.parameters())  # SMART's trunk: frozen, untouched
    assert cli.trainer.gradient_clip_val == 100.0 and module.hparams.probe_windows == 0  # from the preset
    logged = scalars(out)
    for key in ("train/mae_loss", "train/mae_pixel_loss", "train/mae_reward_loss", "train/mae_masked_psnr"):
        assert len(logged[key]) == 3 and all(math.isfinite(v) for v in logged[key]), key  # every step
    ckpt = out / "checkpoints" / "last.ckpt"
    loaded = load_mae_from_checkpoint(str(ckpt), freeze=True)
    assert loaded.config == MAEConfig(**MICRO) and not any(p.requires_grad for p in loaded.parameters())
    trained = module.objective("mae").mae.eval()
    batch = next(iter(cli.datamodule.val_dataloader()))
    x = batch["pixels"].flatten(0, 1)  # (B * T, 3, 84, 84) real frames
    with torch.no_grad():
        assert torch.equal(loaded.features(x), trained.features(x))
    assert loaded.encode(x[:2], 0.75).shape == (2, 5, 32)  # 4 of 16 tokens kept at 32 px
