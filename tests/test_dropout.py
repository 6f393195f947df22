"""The CPU dropout of models/dropout.py and the attention that uses it (issue 16): same statistics and gradients
as torch's dropout, same attention as SDPA."""

import pytest
import torch
import torch.nn.functional as F

from control_pretrain.models.blocks import attention_with_dropout
from control_pretrain.models.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_mean_match_the_drop_probability(p):
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, p)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.004  # ~4 standard errors at n = 4e5
    assert abs(y.mean().item() - 1.0) < 0.01  # survivors scaled so E[y] = x
    assert torch.allclose(y[kept], y[kept][0])  # one scale for all survivors


def test_draws_are_independent_of_position():
    # Four elements share one 64-bit draw: their keep decisions must still be independent.
    torch.manual_seed(0)
    keep = (dropout(torch.ones(4 * 100_000), 0.5) != 0).view(-1, 4).float()
    corr = torch.corrcoef(keep.T)
    assert (corr - torch.eye(4)).abs().max() < 0.02


def test_identity_in_eval_and_at_zero_and_gradient_is_the_mask():
    x = torch.randn(8, 16, requires_grad=True)
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    torch.manual_seed(1)
    y = Dropout(0.3).train()(x)
    y.sum().backward()
    scale = y[y != 0][0] / x[y != 0][0]
    assert torch.allclose(x.grad, (y != 0).float() * scale)
    with pytest.raises(ValueError, match="probability"):
        Dropout(1.5)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_attention_without_dropout_equals_sdpa(mask_kind):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 10, 8) for _ in range(3))
    mask = {"none": None, "bool": torch.ones(10, 10, dtype=torch.bool).tril(),
            "float": torch.randn(4, 10, 10).masked_fill(~torch.ones(10, 10, dtype=torch.bool).tril(), -torch.inf)}
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[mask_kind])
    assert torch.allclose(attention_with_dropout(q, k, v, mask[mask_kind], 0.0), expected, atol=1e-6)


def test_attention_dropout_is_unbiased():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    expected = F.scaled_dot_product_attention(q, k, v)
    mean = torch.stack([attention_with_dropout(q, k, v, None, 0.2) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, expected, atol=0.03)
