"""DreamerV2's actor-critic trained in imagination (Hafner et al. 2021), MWM's behaviour learning (mlr_mwm.md
§B.4). Written from the paper's design in PyTorch, not translated from the TF code.

From every posterior state of a world-model batch the actor is rolled ``horizon`` (15) steps through the RSSM's
prior. Rewards come from the world model's reward head (symlog space, mapped back with symexp), values from a slow
copy of the critic, and λ-returns (λ 0.95, γ 0.99) bootstrap from the last imagined value:
R_H = v(s_H), R_t = r_t + γ ((1 - λ) v(s_{t+1}) + λ R_{t+1}).
- actor: ELU MLP -> truncated normal on [-1, 1] (mean tanh(m), std 2 sigmoid(s / 2) + 0.1); gradient ``dynamics``:
  the λ-return is backpropagated through the imagined states into the actions (reparameterised samples); loss
  -mean_t w_t (R_t + η H_t) with entropy scale η = 1e-4 and w_t = γ^t (DreamerV2's cumulative discount weight;
  there is no discount head on DMC). The actor reads stop-gradient features.
- critic: ELU MLP regressing R_t (MSE, the same weights w_t) on stop-gradient features; the slow critic is a copy
  made every ``slow_every`` (100) updates (fraction 1).
- Adam lr 1e-4, eps 1e-5, global gradient clip 100 (the optimisers live in agent.py).

Deviations:
- rewards are aligned with the transition that earns them: r_t is the reward head on s_{t+1}, the state the action
  a_t leads to (the reward head is trained on the state a reward arrives with, world_model.py). DreamerV2 adds the
  head's output on s_t itself to R_t, so the start state's reward enters every return and a_t's own reward only
  one step later; DreamerV3 made the same correction.
- the truncated normal is sampled by its inverse CDF (exact, reparameterised) and its entropy is the closed form;
  the reference (tfp) does the same up to its extra straight-through clip just inside the bounds.
- the slow critic is copied after the update that brings the counter to a multiple of ``slow_every`` (the
  reference copies before it; the slow critic starts as a copy of the critic either way).
- no reward normalisation: MWM's DMC setting (StreamNorm with momentum 1.0) leaves rewards unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.special import ndtr, ndtri

from ...models.mae import symexp

# Keep inverse-CDF draws strictly inside (0, 1) (ndtri(0) = -inf); |z| <= 4.75 sigma at the edges.
CDF_EPS = 1e-6
LOG_SQRT_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


def mlp(in_dim: int, out_dim: int, units: int, layers: int) -> nn.Sequential:
    """``layers`` ELU hidden layers of ``units`` (DreamerV2's heads, norm none), then a linear output."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(in_dim if i == 0 else units, units), nn.ELU()]
    mods.append(nn.Linear(units if layers else in_dim, out_dim))
    return nn.Sequential(*mods)


class TruncatedNormal:
    """N(mean, std) truncated to [low, high], per dimension; a batch of diagonal distributions (..., A)."""

    def __init__(self, mean: Tensor, std: Tensor, low: float = -1.0, high: float = 1.0) -> None:
        self.mean, self.std, self.low, self.high = mean, std, low, high
        self.alpha, self.beta = (low - mean) / std, (high - mean) / std  # (..., A) standardised bounds
        self.cdf_low, self.cdf_high = ndtr(self.alpha), ndtr(self.beta)  # (..., A)
        self.mass = self.cdf_high - self.cdf_low  # (..., A) probability of [low, high] under N(mean, std)

    def rsample(self) -> Tensor:
        """A sample (..., A) whose gradient w.r.t. mean and std is the pathwise one."""
        u = torch.rand_like(self.mean)  # (..., A)
        p = (self.cdf_low + u * self.mass).clamp(CDF_EPS, 1.0 - CDF_EPS)  # (..., A)
        return (self.mean + self.std * ndtri(p)).clamp(self.low, self.high)  # (..., A)

    @property
    def mode(self) -> Tensor:
        return self.mean.clamp(self.low, self.high)  # (..., A)

    def entropy(self) -> Tensor:
        """Closed-form entropy summed over the action dimensions (...)."""
        def pdf(z: Tensor) -> Tensor:
            return torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi)

        tails = (self.alpha * pdf(self.alpha) - self.beta * pdf(self.beta)) / (2 * self.mass)  # (..., A)
        return (LOG_SQRT_2PI_E + self.std.log() + self.mass.log() + tails).sum(-1)  # (...)


class Actor(nn.Module):
    """Features (..., F) -> truncated-normal action distribution on [-1, 1]^A."""

    def __init__(self, feature_dim: int, action_dim: int, units: int, layers: int, min_std: float = 0.1) -> None:
        super().__init__()
        self.net = mlp(feature_dim, 2 * action_dim, units, layers)
        self.min_std = min_std

    def forward(self, feat: Tensor) -> TruncatedNormal:
        mean, std = self.net(feat).chunk(2, -1)  # (..., A) each
        return TruncatedNormal(torch.tanh(mean), 2 * torch.sigmoid(std / 2) + self.min_std)


def lambda_returns(rewards: Tensor, values: Tensor, discount: float, lambda_: float) -> Tensor:
    """λ-returns (H, N) of rewards (H, N) (r_t earned by the step t -> t+1) and values (H+1, N) of states
    0..H: R_H = v_H, R_t = r_t + γ ((1 - λ) v_{t+1} + λ R_{t+1})."""
    ret, out = values[-1], []
    for t in reversed(range(len(rewards))):
        ret = rewards[t] + discount * ((1.0 - lambda_) * values[t + 1] + lambda_ * ret)  # (N,)
        out.append(ret)
    return torch.stack(out[::-1])  # (H, N)


@contextmanager
def no_param_grads(*modules: nn.Module) -> Iterator[None]:
    """Run without accumulating gradients into ``modules``' parameters (gradients still flow through their
    activations): the actor's loss backpropagates through the world model and the slow critic without training
    them."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


class ActorCritic(nn.Module):
    """Actor, critic and slow critic; ``losses`` computes both losses on one imagined rollout."""

    def __init__(self, feature_dim: int, action_dim: int, units: int, layers: int, min_std: float = 0.1,
                 horizon: int = 15, discount: float = 0.99, lambda_: float = 0.95, entropy_scale: float = 1e-4,
                 slow_every: int = 100, slow_fraction: float = 1.0) -> None:
        super().__init__()
        self.actor = Actor(feature_dim, action_dim, units, layers, min_std)
        self.critic = mlp(feature_dim, 1, units, layers)
        self.slow_critic = mlp(feature_dim, 1, units, layers)
        self.slow_critic.load_state_dict(self.critic.state_dict())
        self.slow_critic.requires_grad_(False)
        self.horizon, self.discount, self.lambda_ = horizon, discount, lambda_
        self.entropy_scale, self.slow_every, self.slow_fraction = entropy_scale, slow_every, slow_fraction

    def losses(self, world_model: nn.Module, start) -> tuple[Tensor, Tensor, dict[str, float]]:
        """(actor loss, critic loss, metrics) of one imagined rollout from ``start`` (an RSSMState (N, ...),
        detached posteriors). ``world_model`` has ``rssm`` and ``reward_head``; no gradient reaches its
        parameters, but the actor's gradient passes through its dynamics and reward head."""
        entropies = []

        def policy(feat: Tensor) -> Tensor:
            dist = self.actor(feat.detach())  # DreamerV2: the actor reads stop-gradient features
            entropies.append(dist.entropy())  # (N,)
            return dist.rsample()  # (N, A)

        with no_param_grads(world_model):
            feats, _ = world_model.rssm.imagine(policy, start, self.horizon)  # (H+1, N, F), (H, N, A)
            rewards = symexp(world_model.reward_head(feats[1:]).squeeze(-1))  # (H, N): r_t arrives with s_{t+1}
            values = self.slow_critic(feats).squeeze(-1)  # (H+1, N); gradient reaches feats, not the slow critic
        targets = lambda_returns(rewards, values, self.discount, self.lambda_)  # (H, N)
        weights = self.discount ** torch.arange(self.horizon, device=feats.device, dtype=feats.dtype)[:, None]  # (H, 1)
        entropy = torch.stack(entropies)  # (H, N)
        actor_loss = -(weights * (targets + self.entropy_scale * entropy)).mean()
        critic_pred = self.critic(feats[:-1].detach()).squeeze(-1)  # (H, N)
        critic_loss = (weights * (critic_pred - targets.detach()).square()).mean()
        metrics = {"imag_reward": rewards.mean().item(), "imag_return": targets.mean().item(),
                   "actor_entropy": entropy.mean().item(), "critic_value": critic_pred.mean().item()}
        return actor_loss, critic_loss, metrics

    @torch.no_grad()
    def update_slow_critic(self, num_updates: int) -> None:
        """After update number ``num_updates``: move the slow critic to the critic every ``slow_every``."""
        if num_updates % self.slow_every == 0:
            for slow, online in zip(self.slow_critic.parameters(), self.critic.parameters(), strict=True):
                slow.lerp_(online, self.slow_fraction)
