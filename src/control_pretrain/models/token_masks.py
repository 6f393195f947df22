"""Which trajectory tokens a masked model sees: MTM's mask samplers (mtm_maskdp.md §A.4, §A.7).

One convention everywhere: a boolean ``visible`` tensor (B, K, M), True = the token is given to the model, False =
it is hidden and predicted. K steps, M modalities in their within-step order ``(obs, rtg, act)`` (MTM's state ->
return -> action). MTM's own code calls its keep ratios ``mask_ratios`` and MaskDP's ``mask_ratio`` is the
opposite (a hidden fraction); both are converted at the config boundary, never here (§A.11 #2).

Every sampler is a pure function of a ``torch.Generator``: the LightningModule owns one generator per rank, seeded
from ``--seed_everything`` and the rank (never the global RNG, which the references share across DDP ranks), and
keeps its state in checkpoints.

Deviation from MTM: masks are drawn **per sample** (``per_sample=True``); ``per_sample=False`` reproduces the
reference, whose one mask is shared by the whole batch (§A.11 #1). MaskDP's sampler (``maskdp``, §B.4) hides a
fraction of the joint token sequence; its ratios are the fraction HIDDEN, as in the paper, converted here only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

MODALITIES: tuple[str, ...] = ("obs", "rtg", "act")  # the within-step order of MTM's autoregressive cut
PATTERNS: tuple[str, ...] = ("bc", "rcbc", "id", "fd", "goal", "random")  # the specialised masks (S-MTM, probes)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device)


def random_keep(batch_size: int, num_steps: int, num_modalities: int, keep_ratios: Sequence[float],
                per_sample: bool = True, generator: torch.Generator | None = None, device=None) -> Tensor:
    """(B, K, M) visible: per modality a keep ratio rho drawn from ``keep_ratios`` and exactly floor(rho K) visible
    steps at random (MTM's RANDOM pattern, time-level; §A.4 step 1)."""
    rows = batch_size if per_sample else 1
    ratios = torch.as_tensor(list(keep_ratios), dtype=torch.float32, device=device)
    pick = torch.randint(len(ratios), (rows, num_modalities), generator=generator, device=device)  # (b, M)
    counts = (ratios[pick] * num_steps).floor().long()  # (b, M) visible steps per modality
    rank = _uniform((rows, num_modalities, num_steps), generator, device).argsort(-1).argsort(-1)  # (b, M, K)
    visible = (rank < counts[..., None]).transpose(1, 2)  # (b, K, M)
    return visible.expand(batch_size, -1, -1).contiguous()  # (B, K, M)


def autoregressive_cut(batch_size: int, num_steps: int, modalities: Sequence[str], mode_weights: Sequence[float],
                       per_sample: bool = True, generator: torch.Generator | None = None, device=None) -> Tensor:
    """(B, K, M) bool, True = hidden by the cut: a cut step c ~ U[0, K) and a cut modality m* ~ ``mode_weights``;
    with the within-step order of ``modalities``, m* and the modalities after it are hidden from step c on, the
    ones before it after step c (§A.4 steps 2-4). So (c, m*) and every token after it in (step, order) is hidden."""
    rows = batch_size if per_sample else 1
    M = len(modalities)
    cut_step = torch.randint(num_steps, (rows, 1, 1), generator=generator, device=device)  # (b, 1, 1)
    weights = torch.as_tensor(list(mode_weights), dtype=torch.float32, device=device)
    cut_mod = torch.multinomial(weights.expand(rows, M), 1, generator=generator)[:, :, None]  # (b, 1, 1)
    steps = torch.arange(num_steps, device=device)[None, :, None]  # (1, K, 1)
    order = torch.arange(M, device=device)[None, None, :]  # (1, 1, M)
    hidden = (steps > cut_step) | ((steps == cut_step) & (order >= cut_mod))  # (b, K, M)
    return hidden.expand(batch_size, -1, -1).contiguous()


def mtm_auto(batch_size: int, num_steps: int, modalities: Sequence[str] = MODALITIES,
             keep_ratios: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0),
             mode_weights: Sequence[float] = (0.2, 0.1, 0.7), per_sample: bool = True,
             generator: torch.Generator | None = None, device=None) -> Tensor:
    """MTM's random-autoregressive mask (AUTO_MASK, §A.4): a random keep pattern per modality, then everything
    from a random (step, modality) cut on hidden. With m* = act this is the BC/RCBC query, with m* = obs forward
    prediction, with m* = rtg value prediction. (B, K, M) visible."""
    if len(mode_weights) != len(modalities):
        raise ValueError(f"mode_weights {list(mode_weights)} needs one weight per modality {list(modalities)}")
    keep = random_keep(batch_size, num_steps, len(modalities), keep_ratios, per_sample, generator, device)
    return keep & ~autoregressive_cut(batch_size, num_steps, modalities, mode_weights, per_sample, generator, device)


def maskdp(batch_size: int, num_steps: int, num_modalities: int,
           mask_ratios: Sequence[float] = (0.15, 0.35, 0.55, 0.75, 0.95), per_sample: bool = True,
           generator: torch.Generator | None = None, device=None) -> Tensor:
    """MaskDP's mask (Liu et al. 2022, §B.4): a hidden fraction r drawn from ``mask_ratios`` and exactly
    floor(K M (1 - r)) visible tokens chosen uniformly over the joint K M sequence, so states and actions are hidden
    independently. The tokens are drawn per sample; ``per_sample`` draws r per sample too (the reference draws
    one r per update: ``per_sample=False``). High ratios matter: a goal query shows 2 of 2(T+1) tokens. (B, K, M)."""
    L = num_steps * num_modalities
    ratios = torch.as_tensor(list(mask_ratios), dtype=torch.float64, device=device)
    if ((ratios < 0) | (ratios > 1)).any():
        raise ValueError(f"mask_ratios {list(mask_ratios)} are hidden fractions: each must lie in [0, 1]")
    pick = torch.randint(len(ratios), (batch_size if per_sample else 1,), generator=generator, device=device)
    counts = (L * (1 - ratios[pick]) + 1e-9).floor().long().expand(batch_size)  # (B,); 1e-9: 64 * 0.75 is 48
    rank = _uniform((batch_size, L), generator, device).argsort(-1).argsort(-1)  # (B, L) a random permutation
    return (rank < counts[:, None]).reshape(batch_size, num_steps, num_modalities)  # (B, K, M)


def pattern(name: str, batch_size: int, num_steps: int, modalities: Sequence[str] = MODALITIES,
            query: Tensor | int | None = None, keep_ratios: Sequence[float] = (0.5, 0.75, 1.0),
            generator: torch.Generator | None = None, device=None) -> Tensor:
    """(B, K, M) visible of a specialised mask around a query step q (per sample; drawn uniformly where None):

    - bc: s_0..s_q and a_0..a_{q-1} (predict a_q); rcbc: the same plus every return token;
    - id: every state, no action, no return (predict the actions);
    - fd: s_0..s_q and a_0..a_q (predict s_{q+1}; q < K-1);
    - goal: s_0 and the goal s_q only (predict a_0..a_{q-1}; q >= 1): MaskDP's goal query (§B.6);
    - random: random_keep with ``keep_ratios``.

    The probes read the same patterns at a fixed q, and S-MTM trains on them with a random q, so a specialist is
    scored on the mask it was trained with (fixes MTM's off-distribution S-MTM forward dynamics, §A.11 #8).
    Deviation: MTM's fd mask shows all actions and its eval one; here both show the actions up to a_q.
    """
    if name not in PATTERNS:
        raise ValueError(f"unknown mask pattern {name!r}; expected one of {PATTERNS}")
    M = len(modalities)
    if name == "random":
        return random_keep(batch_size, num_steps, M, keep_ratios, True, generator, device)
    idx = {m: i for i, m in enumerate(modalities)}
    visible = torch.zeros(batch_size, num_steps, M, dtype=torch.bool, device=device)
    if name == "id":
        visible[..., idx["obs"]] = True
        return visible
    high = num_steps - 1 if name == "fd" else num_steps  # fd needs a next state to predict
    low = 1 if name == "goal" else 0  # a goal lies ahead
    if query is None:
        query = torch.randint(low, high, (batch_size,), generator=generator, device=device)
    q = torch.as_tensor(query, device=device).expand(batch_size)[:, None]  # (B, 1)
    steps = torch.arange(num_steps, device=device)[None, :]  # (1, K)
    if name == "goal":
        visible[..., idx["obs"]] = (steps == 0) | (steps == q)
        return visible
    visible[..., idx["obs"]] = steps <= q
    visible[..., idx["act"]] = steps <= q if name == "fd" else steps < q
    if name == "rcbc":
        visible[..., idx["rtg"]] = True
    return visible


def restrict_to_available(visible: Tensor, available: Tensor | None) -> Tensor:
    """``visible`` (B, K, M) with every unavailable token hidden (``available`` (B, K, M) or (B, 1, M), True =
    the data has it): heteromodal windows without action labels never show an action."""
    return visible if available is None else visible & available
