"""Attention masks and random step masks (smart.md §2.4)."""

import torch

from control_pretrain.models.masks import causal_mask, inverse_mask, random_step_mask


def test_causal_mask_is_lower_triangular():
    mask = causal_mask(5)
    assert mask.dtype == torch.bool and mask.shape == (5, 5)
    for i in range(5):
        for j in range(5):
            assert mask[i, j].item() == (j <= i)


def test_inverse_mask_hides_only_the_previous_action_from_each_observation():
    K = 4
    mask = inverse_mask(K)
    expected = causal_mask(2 * K)
    for t in range(K - 1):
        expected[2 * t + 2, 2 * t + 1] = False  # o_{t+1} may not attend to a_t
    assert torch.equal(mask, expected)
    assert mask.diagonal().all()  # every row attends to itself, so SDPA never sees an all-False row
    assert mask[2 * K - 1, 2 * K - 3]  # actions still attend to earlier actions


def test_masks_are_prefix_consistent():
    assert torch.equal(causal_mask(7), causal_mask(10)[:7, :7])
    assert torch.equal(inverse_mask(3), inverse_mask(5)[:6, :6])
    assert torch.equal(inverse_mask(5)[:7, :7], inverse_mask(4)[:7, :7])  # a 2T-1 token slice


def test_random_step_mask_counts_range_and_per_sample_draws():
    gen = torch.Generator().manual_seed(0)
    mask = random_step_mask(64, 10, 3, low=1, high=9, generator=gen)
    assert mask.shape == (64, 10)
    assert (mask.sum(1) == 3).all()
    assert not mask[:, 0].any() and not mask[:, 9].any()
    assert len({tuple(row.tolist()) for row in mask}) > 1  # not one mask shared by the whole batch


def test_random_step_mask_clips_count():
    assert (random_step_mask(4, 5, 99).sum(1) == 5).all()
    assert (random_step_mask(4, 5, 3, low=1, high=4).sum(1) == 3).all()
    assert not random_step_mask(4, 5, 0).any()
    assert not random_step_mask(4, 2, 1, low=1, high=1).any()  # K=2: no observation can be masked
