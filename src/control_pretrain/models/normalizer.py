"""Per-dimension observation normalisation inside the model: ``(o - mean) / std`` in each sample's own domain slot,
before both the online and the EMA-target state encoder (models/control_transformer.py ``_encode``).

Inside the model, so that training, validation, rollouts (eval/rollout.py feeds raw observations) and every DDP
rank use the same statistics, and so that they travel in the checkpoint (persistent buffers). The statistics are
computed by data/obs_stats.py and handed over by the LightningModule before the first step.

A multi-domain observation vector is one domain's values in its slot and zeros elsewhere (data/slots.py).
Normalising the zeros with another domain's statistics would turn the padding into a per-domain constant, so only
the sample's own slot is normalised: ``slot`` numbers the slot of every dimension and the batch's ``domain_id``
says which slot is the sample's. Without ``domain_id`` the normaliser must have a single slot (a single-domain
model), and then every dimension is the sample's.

Identity (mean 0, std 1, one slot) until statistics are set: ``--data.normalize_obs false`` and checkpoints
written before this module existed (their missing buffers load as identity) behave exactly as before.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

STAT_KEYS = ("mean", "std", "slot")


class ObservationNormalizer(nn.Module):
    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(obs_dim))  # (D,)
        self.register_buffer("std", torch.ones(obs_dim))  # (D,)
        self.register_buffer("slot", torch.zeros(obs_dim, dtype=torch.long))  # (D,) slot number of each dim
        self.num_slots = 1  # kept in step with ``slot`` (set_stats, loading): no device sync per forward

    @torch.no_grad()
    def set_stats(self, mean: np.ndarray | Tensor, std: np.ndarray | Tensor, slot: np.ndarray | Tensor) -> None:
        """Copy statistics (D,) into the buffers, on their device."""
        for name, value in zip(STAT_KEYS, (mean, std, slot)):
            buffer = getattr(self, name)
            value = torch.as_tensor(value)
            if value.shape != buffer.shape:
                raise ValueError(f"observation {name} has shape {tuple(value.shape)}, the model {tuple(buffer.shape)}")
            buffer.copy_(value)
        self.num_slots = int(self.slot.max()) + 1

    @property
    def is_identity(self) -> bool:
        return bool(torch.all(self.mean == 0) and torch.all(self.std == 1))

    def forward(self, obs: Tensor, domain_id: Tensor | None = None) -> Tensor:
        """obs (B, ..., D) raw, domain_id (B,) slot numbers -> (B, ..., D) normalised in each sample's slot."""
        normalised = (obs - self.mean) / self.std  # (B, ..., D)
        if domain_id is None:
            if self.num_slots > 1:
                raise ValueError(f"observation statistics of {self.num_slots} domain slots need the batch's "
                                 "'domain_id' (each sample's slot number)")
            return normalised
        own = self.slot == domain_id.reshape(-1, *(1,) * (obs.dim() - 1))  # (B, 1.., D): the sample's own slot
        return torch.where(own, normalised, obs)  # padding (other slots, zeros) unchanged

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # A checkpoint from before normalisation existed has none of the buffers: its model saw raw observations,
        # so they load as identity (as BatchNorm fills in num_batches_tracked for its old checkpoints).
        if not any(prefix + k in state_dict for k in STAT_KEYS):
            for name in STAT_KEYS:
                buffer = getattr(self, name)
                state_dict[prefix + name] = (torch.zeros_like(buffer) if name != "std" else torch.ones_like(buffer))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        self.num_slots = int(self.slot.max()) + 1

    def extra_repr(self) -> str:
        return f"{len(self.mean)} dims, {self.num_slots} slot(s)"
