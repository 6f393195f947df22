"""The MLP specialists MTM is compared with (Wu et al. 2023, Table 1's "MLP" rows; mtm_maskdp.md §A.9): one small
network per capability, trained on the same windows and scored at the same positions and in the same units as
MTM's offline probes (src/control_pretrain/eval/masked_probes.py), from the last two steps of each K-step window:

| specialist | input | target |
|---|---|---|
| ``bc`` | z(s_{K-1}) | a_{K-1} |
| ``rcbc`` | z(s_{K-1}), z(R_{K-1}) | a_{K-1} |
| ``id`` | z(s_{K-2}), z(s_{K-1}) | a_{K-2} |
| ``fd`` | z(s_{K-2}), a_{K-2} | z(s_{K-1}) |

z() is the training split's statistics (observations per dimension, the average return-to-go R as one scalar),
the same numbers MTM's checkpoint keeps. bc and rcbc also act in dm_control (``SpecialistPolicy``); rcbc is given
one constant R, as MTM's rcbc policy is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

KINDS = ("bc", "rcbc", "id", "fd")


class Specialist(nn.Module):
    """A 2-hidden-layer ReLU MLP for one capability, with the input statistics as buffers."""

    def __init__(self, kind: str, obs_dim: int, action_dim: int, obs_mean: Tensor, obs_std: Tensor, rtg_mean: float,
                 rtg_std: float, hidden: int = 256):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown specialist {kind!r}; expected one of {KINDS}")
        self.kind = kind
        width = {"bc": obs_dim, "rcbc": obs_dim + 1, "id": 2 * obs_dim, "fd": obs_dim + action_dim}[kind]
        out = obs_dim if kind == "fd" else action_dim
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, out))
        self.register_buffer("obs_mean", obs_mean.float())
        self.register_buffer("obs_std", obs_std.float())
        self.register_buffer("rtg_stats", torch.tensor([rtg_mean, max(rtg_std, 1e-6)]))

    def z_obs(self, obs: Tensor) -> Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def inputs_and_target(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(B, in) inputs and (B, out) targets from the last two steps of (B, K, ...) windows."""
        obs, act = self.z_obs(batch["observations"]), batch["actions"]
        if self.kind == "bc":
            return obs[:, -1], act[:, -1]
        if self.kind == "rcbc":
            rtg = (batch["rtg_avg"][:, -1:] - self.rtg_stats[0]) / self.rtg_stats[1]  # (B, 1)
            return torch.cat([obs[:, -1], rtg], -1), act[:, -1]
        if self.kind == "id":
            return torch.cat([obs[:, -2], obs[:, -1]], -1), act[:, -2]
        return torch.cat([obs[:, -2], act[:, -2]], -1), obs[:, -1]

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out if self.kind == "fd" else torch.tanh(out)  # actions lie in [-1, 1]

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """MSE over the target dims (one domain per file here: every dim is real)."""
        x, y = self.inputs_and_target(batch)
        return (self(x) - y).square().mean()


class SpecialistPolicy:
    """A bc or rcbc specialist acting on the current observation (eval/rollout.py ``Policy``)."""

    target_return = None  # rcbc gets its constant average return-to-go here, not the rollout's return bookkeeping
    obs_type = "state"
    obs_layout = action_layout = None
    context_length = 1

    def __init__(self, specialist: Specialist, rtg_avg: float | None = None):
        if specialist.kind not in ("bc", "rcbc"):
            raise ValueError(f"only bc and rcbc specialists act, not {specialist.kind!r}")
        self.specialist, self.rtg_avg = specialist.eval(), rtg_avg
        self.device = specialist.obs_mean.device

    @torch.no_grad()
    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        obs = self.specialist.z_obs(batch["observations"])  # (B, T, D)
        if self.specialist.kind == "rcbc":
            rtg = (self.rtg_avg - self.specialist.rtg_stats[0]) / self.specialist.rtg_stats[1]
            obs = torch.cat([obs, rtg.expand(*obs.shape[:2], 1)], -1)
        return self.specialist(obs)  # (B, T, A)


def train_specialist(specialist: Specialist, loader, steps: int, lr: float = 1e-3) -> list[float]:
    """AdamW for ``steps`` batches of ``loader`` (re-iterated when it ends); the training losses."""
    opt = torch.optim.AdamW(specialist.parameters(), lr=lr, weight_decay=1e-4)
    losses, step = [], 0
    specialist.train()
    while step < steps:
        for batch in loader:
            loss = specialist.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
            step += 1
            if step >= steps:
                break
    return losses


@torch.no_grad()
def specialist_error(specialist: Specialist, loader) -> float:
    """Mean MSE over every window of ``loader`` (MTM's probe of the same name is scored on the same windows)."""
    specialist.eval()
    total, count = 0.0, 0
    for batch in loader:
        total += float(specialist.loss(batch)) * len(batch["actions"])
        count += len(batch["actions"])
    return total / max(count, 1)
