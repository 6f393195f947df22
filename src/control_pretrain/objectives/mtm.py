"""MTM's objective: reconstruct a trajectory window from a random subset of its tokens (mtm_maskdp.md §A.4-A.5).

Each step draws a visible mask (models/token_masks.py; ``masks``: MTM's random-autoregressive ``mtm_auto`` by
default, or specialised patterns for S-MTM; several = a uniform choice per sample), runs the masked trajectory
model (models/masked_trajectory.py) and scores every modality's reconstruction by MSE in the model's target
space (z-scored observations and returns, raw actions). The loss is sum_m w_m L_m, with L_m averaged over all
tokens (MTM) or the hidden ones only (``loss_on='masked'``), over the dims that belong to the sample's domain,
and only where the data has the modality: windows without action labels (``batch['has_action']`` False,
heteromodal training) never show an action and are never scored on one.

Deviations from facebookresearch/mtm ``MTM.forward_loss``: masks per sample (§A.11 #1); the masked-only loss is a
real option (the reference's switch is dead code, §A.11 #3); padding dims of other domains are not scored;
full, masked and visible losses are returned for every modality (``recon_{all,masked,visible}_<m>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..models import token_masks
from ..models.ema import ema_update
from .base import Objective

MASKS = ("mtm_auto", "maskdp", *token_masks.PATTERNS)
OBS_TARGETS = ("zscore", "l2")


@dataclass
class MaskedReconstructionConfig:
    masks: list[str] = field(default_factory=lambda: ["mtm_auto"])  # samplers; several: one per sample, uniformly
    keep_ratios: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0])  # VISIBLE
    mode_weights: dict[str, float] = field(default_factory=lambda: {"obs": 0.2, "rtg": 0.1, "act": 0.7})  # cut
    mask_ratios: list[float] = field(default_factory=lambda: [0.15, 0.35, 0.55, 0.75, 0.95])  # maskdp: HIDDEN
    per_sample: bool = True  # false: one mask for the whole batch, as the reference (§A.11 #1)
    loss_on: str = "all"  # all (MTM) or masked (hidden tokens only)
    modality_weights: dict[str, float] = field(default_factory=lambda: {"obs": 1.0, "rtg": 1.0, "act": 1.0})
    obs_target: str = "zscore"  # state targets: zscore (MTM), or l2: the z-scored state divided by its norm (MaskDP)
    ema_tau: float = 0.005  # pixels: the target CNN's EMA rate per optimiser step

    def __post_init__(self) -> None:
        unknown = [m for m in self.masks if m not in MASKS]
        if unknown or not self.masks:
            raise ValueError(f"masks {list(self.masks)}: expected a non-empty list of {MASKS}")
        if self.loss_on not in ("all", "masked"):
            raise ValueError(f"loss_on must be 'all' or 'masked', got {self.loss_on!r}")
        if self.obs_target not in OBS_TARGETS:
            raise ValueError(f"obs_target must be one of {OBS_TARGETS}, got {self.obs_target!r}")


class MaskedReconstructionObjective(Objective):
    name = "mtm"

    def __init__(self, n_embd: int = 0, action_dim: int = 0, config: MaskedReconstructionConfig | None = None,
                 weight: float = 1.0):
        """n_embd, action_dim: unused (the heads live in the model; every objective gets the same two sizes)."""
        super().__init__(weight)
        self.config = config or MaskedReconstructionConfig()
        self.generator: torch.Generator | None = None  # the module's per-rank mask generator (lit/mtm_module.py)

    # ---- masks --------------------------------------------------------------------------------------------
    def sample_visible(self, batch: dict[str, Tensor], modalities: tuple[str, ...],
                       generator: torch.Generator | None = None) -> Tensor:
        """(B, K, M) visible tokens of this batch: a sampler per sample, then unavailable tokens hidden. Drawn on
        the CPU (the generator's device) and moved to the batch's."""
        cfg, gen = self.config, generator if generator is not None else self.generator
        B, K = batch["actions"].shape[:2]
        weights = [cfg.mode_weights.get(m, 0.0) for m in modalities]
        drawn = []
        for name in cfg.masks:
            if name == "mtm_auto":
                drawn.append(token_masks.mtm_auto(B, K, modalities, cfg.keep_ratios, weights, cfg.per_sample, gen))
            elif name == "maskdp":
                drawn.append(token_masks.maskdp(B, K, len(modalities), cfg.mask_ratios, cfg.per_sample, gen))
            else:
                drawn.append(token_masks.pattern(name, B, K, modalities, keep_ratios=cfg.keep_ratios, generator=gen))
        visible = drawn[0]
        if len(drawn) > 1:  # one sampler per sample
            choice = torch.randint(len(drawn), (B,), generator=gen)
            visible = torch.stack(drawn)[choice, torch.arange(B)]  # (B, K, M)
        visible = visible.to(batch["actions"].device)
        return token_masks.restrict_to_available(visible, availability(batch, modalities))

    # ---- loss ---------------------------------------------------------------------------------------------
    def compute(self, model, batch: dict[str, Tensor], cache: dict) -> dict[str, Tensor]:
        visible = cache.get("visible")
        if visible is None:
            visible = self.sample_visible(batch, model.modalities, cache.get("generator"))
        self.last_visible = visible  # what this step showed (tests, tests/ddp_probe.py)
        cfg = self.config
        preds = model(batch, visible)  # (B, K, F_m) per modality
        targets = model.targets(batch)
        if cfg.obs_target == "l2":
            targets["obs"] = unit_norm(targets["obs"], dim_weights(model, batch, "obs"), model.config.obs_type)
        available = availability(batch, model.modalities)  # (B, 1, M) or None
        out, total = {}, 0.0
        for i, m in enumerate(model.modalities):
            dims = dim_weights(model, batch, m)  # (B, F_m) which dims count
            err = ((preds[m] - targets[m]).square() * dims[:, None]).sum(-1) / dims.sum(-1, keepdim=True)  # (B, K)
            have = (torch.ones_like(err, dtype=torch.bool) if available is None
                    else available[..., i].expand_as(err))  # (B, K)
            seen = visible[..., i]  # (B, K)
            parts = {"all": have, "masked": have & ~seen, "visible": have & seen}
            for part, where in parts.items():
                out[f"recon_{part}_{m}"] = masked_mean(err, where)
            total = total + cfg.modality_weights.get(m, 1.0) * out[f"recon_{cfg.loss_on}_{m}"]
        out["loss"] = total
        return out

    def after_optimizer_step(self, model) -> None:
        if model.config.obs_type == "pixels":  # state targets are the inputs themselves
            ema_update(model.target_obs_encoder, model.obs_encoder, self.config.ema_tau)


def availability(batch: dict[str, Tensor], modalities: tuple[str, ...]) -> Tensor | None:
    """(B, 1, M) True where the data has the modality (actions: ``has_action``), or None when all are there."""
    has_action = batch.get("has_action")
    if has_action is None:
        return None
    have = torch.ones(len(has_action), 1, len(modalities), dtype=torch.bool, device=has_action.device)
    have[:, 0, modalities.index("act")] = has_action.bool()
    return have


def dim_weights(model, batch: dict[str, Tensor], modality: str) -> Tensor:
    """(B, F) 1 for the target dims that belong to each sample (its domain's action or observation slot)."""
    B = len(batch["actions"])
    if modality == "act" and "action_mask" in batch:
        return batch["action_mask"].float()  # (B, A)
    if modality == "obs" and model.config.obs_type == "state" and "domain_id" in batch \
            and model.obs_normalizer.num_slots > 1:  # the slots are known once statistics are set
        return (model.obs_normalizer.slot[None, :] == batch["domain_id"][:, None]).float()  # (B, D)
    width = {"act": model.config.action_dim, "rtg": 1}.get(modality)
    if width is None:
        width = model.config.obs_dim if model.config.obs_type == "state" else model.config.n_embd
    return torch.ones(B, width, device=batch["actions"].device)


def unit_norm(obs: Tensor, dims: Tensor, obs_type: str) -> Tensor:
    """MaskDP's state target (``norm: l2``, §B.4): each (B, K, D) state divided by its L2 norm over its domain's
    dims ``dims`` (B, D). Deviation: of the z-scored state; the reference normalises raw states (§B.8 #4)."""
    if obs_type != "state":
        raise ValueError("obs_target l2 applies to state observations; pixel targets are the EMA encoder's latents")
    norm = (obs.square() * dims[:, None]).sum(-1, keepdim=True).sqrt()  # (B, K, 1)
    return obs / norm.clamp_min(1e-6)


def masked_mean(values: Tensor, where: Tensor) -> Tensor:
    """Mean of ``values`` over ``where`` (0 when nothing is selected)."""
    w = where.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)
