"""Offline capabilities of a masked trajectory model on held-out windows, each one choice of visible tokens
(MTM's inference masks, mtm_maskdp.md §A.7; the patterns of models/token_masks.py at a fixed query step):

| probe | visible | scored |
|---|---|---|
| ``bc`` | s_0..s_{K-1}, a_0..a_{K-2} | a_{K-1} |
| ``rcbc`` | as bc, plus every return token | a_{K-1} |
| ``id`` | every state | a_{K-2} |
| ``fd`` | s_0..s_{K-2}, a_0..a_{K-2} | s_{K-1} |
| ``goal`` | s_0 and s_{K-1} | a_0 (MaskDP's closed-loop goal query, §B.6) |

Actions are scored by MSE in raw units over the domain's action dims, observations in z-units (the training
split's statistics) over the domain's observation dims, as the MLP specialists are (the same positions and
units, so the numbers compare). Logged as ``val/probe_<name>_mse`` every pretraining validation and reported by
``dmc_downstream.py --mode id|fd|probes``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.token_masks import pattern
from ..objectives.base import action_loss
from ..objectives.mtm import dim_weights

# probe -> (mask pattern, query step, scored modality, scored step), steps as Python indices into the window
PROBES: dict[str, tuple[str, int, str, int]] = {
    "bc": ("bc", -1, "act", -1),
    "rcbc": ("rcbc", -1, "act", -1),
    "id": ("id", -2, "act", -2),
    "fd": ("fd", -2, "obs", -1),
    "goal": ("goal", -1, "act", 0),
}


def probe_names(modalities: tuple[str, ...]) -> list[str]:
    """The probes a model with these modalities can answer (rcbc needs the return token)."""
    return [name for name in PROBES if name != "rcbc" or "rtg" in modalities]


@torch.no_grad()
def probe_errors(model, batch: dict[str, Tensor], names: list[str] | None = None) -> dict[str, Tensor]:
    """Scalar MSE of each probe on this batch (the model must be in eval mode)."""
    B, K = batch["actions"].shape[:2]
    device = batch["actions"].device
    targets = model.targets(batch)
    out = {}
    for name in names or probe_names(model.modalities):
        mask, query, modality, scored = PROBES[name]
        visible = pattern(mask, B, K, model.modalities, query=query % K, device=device)
        pred = model(batch, visible)[modality][:, scored]  # (B, F)
        target = targets[modality][:, scored]  # (B, F)
        if modality == "act":
            out[name] = action_loss(pred[:, None], target[:, None], batch.get("action_mask"))
        else:
            dims = dim_weights(model, batch, modality)  # (B, D)
            out[name] = ((pred - target).square() * dims).sum() / dims.sum().clamp_min(1.0)
    return out


@torch.no_grad()
def mean_probe_errors(model, batches, names: list[str], prepare=lambda batch: batch) -> dict[str, float]:
    """Each probe's MSE over every window of ``batches`` (weighted by batch size), ``prepare`` applied to each
    batch first (the finetuning module's slot placement). The model must be in eval mode."""
    sums, count = dict.fromkeys(names, 0.0), 0
    for batch in batches:
        batch = prepare(batch)
        n = len(batch["actions"])
        for name, value in probe_errors(model, batch, names).items():
            sums[name] += float(value) * n
        count += n
    return {name: total / max(count, 1) for name, total in sums.items()}
