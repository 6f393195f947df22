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


# -- MLR as an offline objective on the trunk's CNN (objectives/mlr_objective.py) ---------------------------------

def mlr_module(obs_type="pixels", with_smart=False):
    from conftest import ACTION_DIM, OBS_DIM, C, K

    from control_pretrain.lit.pretrain_module import PretrainModule

    mlr = {"class_path": "control_pretrain.objectives.MaskedLatentReconstructionObjective",
           "init_args": {"config": {"clip_len": K, "block": 2, "tau": 0.25}}}
    smart = [{"class_path": "control_pretrain.objectives.InverseDynamicsObjective"}] if with_smart else []
    return PretrainModule(obs_type=obs_type, obs_dim=OBS_DIM, action_dim=ACTION_DIM, n_layer=1, n_head=2, n_embd=C,
                          context_length=K, max_timestep=64, lr=1e-3, lr_schedule="constant",
                          objectives=[*smart, mlr])


def test_mlr_objective_trains_the_cnn_and_head_and_moves_its_momentum_every_second_step(tmp_path):
    from conftest import make_batch
    from conftest import optimizer_step as step

    torch.manual_seed(0)
    module = mlr_module().train()
    optimizer = module.configure_optimizers()
    batch = make_batch("pixels")
    objective = module.objective("mlr")
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    step(module, optimizer, batch)  # the first step copies the CNN into the momentum encoder
    cnn = dict(module.model.obs_encoder.named_parameters())
    for n, p in module.named_parameters():
        learns = n.startswith("model.obs_encoder.") or (n.startswith("objectives.mlr_objective.head.")
                                                         and ".target_projection." not in n)
        assert (p.grad is not None and not torch.equal(p, before[n])) == learns, n
    momentum = {n: p.detach().clone() for n, p in objective.momentum.named_parameters()}
    for n, p in momentum.items():  # no EMA yet (step 1 of 2): the momentum is the CNN before the step
        assert torch.equal(p, before[f"model.obs_encoder.{n}"]), n
    step(module, optimizer, batch)
    for n, p in objective.momentum.named_parameters():
        torch.testing.assert_close(p, 0.75 * momentum[n] + 0.25 * cnn[n].detach(), rtol=0, atol=1e-6)
        assert not p.requires_grad
    # save -> load through weights_only gives the same loss under the same masks
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "m.pt")
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    fresh = type(module)(**saved["hyper_parameters"])
    fresh.load_state_dict(saved["state_dict"])
    losses = []
    for m in (module.eval(), fresh.eval()):
        torch.manual_seed(3)
        losses.append(m.compute_losses(batch)["mlr_loss"])
    assert torch.equal(*losses) and 0.0 <= losses[0].item() <= 4.0


def test_mlr_objective_beside_smart_objectives_and_refusals():
    from conftest import make_batch

    torch.manual_seed(0)
    module = mlr_module(with_smart=True)
    losses = module.compute_losses(make_batch("pixels"))
    assert {"inverse_loss", "mlr_loss", "mlr_feature_std"} <= set(losses) and losses["mlr_feature_std"] > 0
    torch.testing.assert_close(losses["loss"], (losses["inverse_loss"] + losses["mlr_loss"]) / 2)
    with pytest.raises(ValueError, match="obs_type pixels"):
        mlr_module("state").compute_losses(make_batch("state"))
    with pytest.raises(ValueError, match="multiple of the temporal block size"):
        from control_pretrain.objectives import MaskedLatentReconstructionObjective, MLRObjectiveConfig
        MaskedLatentReconstructionObjective(32, 4, MLRObjectiveConfig(clip_len=6, block=4))



@pytest.mark.parametrize("center", [True, False])
def test_offline_mlr_keeps_the_cnn_informative_on_real_frames_and_collapses_without_centred_targets(pixel_dir, center):
    """On real cartpole frames the reference's uncentred targets let the CNN collapse to one constant vector within
    20 steps (docs/results.md, offline MLR); centred targets keep its features varying across frames."""
    import h5py
    from conftest import optimizer_step as step

    from control_pretrain.lit.pretrain_module import PretrainModule

    with h5py.File(next(pixel_dir.glob("randcollect_cartpole_swingup/*.h5"))) as f:
        frames, actions = torch.from_numpy(f["pixels"][:]), torch.from_numpy(f["actions"][:])
    train, held_out = frames[:250], frames[250::2]  # episode 1 trains, episode 2 is scored
    K, B = 8, 8
    torch.manual_seed(0)
    mlr = {"class_path": "control_pretrain.objectives.MaskedLatentReconstructionObjective",
           "init_args": {"config": {"clip_len": K, "block": 4, "center_targets": center}}}
    module = PretrainModule(obs_type="pixels", obs_dim=5, action_dim=1, n_layer=1, n_head=2, n_embd=32,
                            context_length=K, max_timestep=1000, lr=1e-3, lr_schedule="constant", weight_decay=0.0,
                            objectives=[mlr]).train()
    optimizer, g = module.configure_optimizers(), torch.Generator().manual_seed(1)
    for _ in range(60):
        idx = torch.randint(0, len(train) - K, (B,), generator=g)[:, None] + torch.arange(K)  # (B, K)
        step(module, optimizer, {"pixels": train[idx], "actions": actions[idx], "action_mask": torch.ones(B, 1),
                                 "domain_id": torch.zeros(B, dtype=torch.long)})
    with torch.no_grad():
        spread = module.model.obs_encoder(held_out).std(0).mean().item()  # across frames, per feature
    if center:
        assert spread > 0.01, spread
    else:
        assert spread < 1e-3, spread  # collapsed: the test can tell


@pytest.fixture(scope="module")
def mlr_pretrained(pixel_dir, tmp_path_factory):
    """``dmc_pretrain.py --method mlr`` on real (fast-rendered) pixel windows, tiny."""
    from conftest import TINY_ARGS, run_in_process

    import dmc_pretrain

    out = tmp_path_factory.mktemp("mlr_pretrain")
    cli = run_in_process(dmc_pretrain.main, [
        "--method", "mlr", "--multi_config", "configs/pretrain_configs/multipretrain_source_test.json",
        "--source_data_type", "rand", "--train_replay_id", "1", "--epochs", "1", "--num_steps", "1000",
        "--output_dir", str(out), "--data_dir_prefix", str(pixel_dir), "--obs_type", "pixels", *TINY_ARGS,
        "--context_length", "16"])
    assert [o.name for o in cli.model.objectives.values()] == ["mlr"]
    return out / "checkpoints" / "last.ckpt"


def test_method_mlr_pretrains_the_cnn_and_bc_finetuning_loads_it(mlr_pretrained):
    from control_pretrain.lit.downstream_module import DownstreamModule

    state = torch.load(mlr_pretrained, map_location="cpu", weights_only=True)["state_dict"]
    assert bool(state["objectives.mlr_objective.synced"])  # the momentum encoder started as the CNN ...
    momentum = state["objectives.mlr_objective.momentum.net.0.weight"]
    assert not torch.equal(state["model.obs_encoder.net.0.weight"], momentum)  # ... which trained ahead of it
    finetune = DownstreamModule(domain="cartpole", task="swingup", obs_type="pixels", model_type="naive",
                                n_layer=1, n_embd=32, n_head=2, context_length=16, load_model_from=str(mlr_pretrained))
    for name, p in finetune.model.obs_encoder.state_dict().items():
        assert torch.equal(p, state[f"model.obs_encoder.{name}"]), name


def test_pixel_sac_starts_from_a_pretrained_cnn_and_keeps_it_frozen(mlr_pretrained, tmp_path):
    """``dmc_online.py --agent sac --obs_type pixels --encoder_from CKPT --freeze_encoder``: the pipeline's CNN on
    each stacked frame, loaded from the checkpoint and never stepped; the encoder heads still learn."""
    from conftest import run_script

    base = ["--agent", "sac", "--obs_type", "pixels", "--domain", "cartpole", "--task", "swingup", "--num_steps",
            "100", "--eval_every", "0"]  # one episode of 125 steps, learning from step 119
    res = run_script("dmc_online.py", *base, "--output_dir", str(tmp_path / "run"), "--encoder_from",
                     str(mlr_pretrained), "--freeze_encoder", "--sac.batch_size", "4", "--sac.hidden_dim", "16",
                     "--sac.init_steps", "119")
    assert res.returncode == 0, res.stderr
    assert "encoder smart (paper curl)" in res.stderr and "freeze_encoder True (paper False)" in res.stderr
    cnn = torch.load(mlr_pretrained, map_location="cpu", weights_only=True)["state_dict"]
    agent = torch.load(tmp_path / "run" / "agent.pt", weights_only=True)
    assert agent["config"]["frame_embd"] == 32 and agent["num_updates"] == 7
    for name in ("encoder", "actor_encoder", "target_encoder"):
        for k, v in cnn.items():
            if k.startswith("model.obs_encoder."):
                assert torch.equal(agent[name]["convs." + k[len("model.obs_encoder."):]], v), (name, k)
    res = run_script("dmc_online.py", *base, "--output_dir", str(tmp_path / "bad"), "--encoder_from",
                     str(tmp_path / "missing.ckpt"))
    assert res.returncode == 2 and "no such file" in res.stderr
