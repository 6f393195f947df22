"""DreamerV2's recurrent state-space model with discrete latents (Hafner et al. 2021, "Mastering Atari with
Discrete World Models"), the dynamics of MWM's world model (mlr_mwm.md §B.3). Written from the paper's design in
PyTorch, not translated from the TF code.

A state is a deterministic GRU state ``deter`` (B, D) and a stochastic state ``stoch`` (B, S, C): S categorical
variables of C classes each, one-hot, sampled with straight-through gradients (DreamerV2's form: one-hot sample +
probs - stop_grad(probs), no uniform mix). The feature the heads read is [stoch flattened, deter] (B, S*C + D).

- ``img_step`` (prior): h' = GRU(ELU(Linear([z, a])), h); prior logits = Linear(ELU(Linear(h'))).
- ``obs_step`` (posterior): the prior step from the previous state, then logits = Linear(ELU(Linear([h', e]))) on
  the frame's embedding e; at an episode start (``is_first``) the previous state and action are reset to zero
  (the initial state is all zeros).
- the GRU cell is DreamerV2's LayerNorm GRU: one Linear (no bias) over [x, h] to 3D, LayerNorm, then
  reset r = sigmoid, candidate c = tanh(r * c), update u = sigmoid(u - 1), h' = u * c + (1 - u) * h.
- ``kl_loss``: KL balancing with balance 0.8: 0.8 * KL(sg(post) || prior) + 0.2 * KL(post || sg(prior)), each
  summed over the S variables and averaged over batch and time; the balanced KL is multiplied by ``scale`` and
  clipped to [``min_loss``, ``max_loss``] = [0.01, 100] (MWM's ``wmkl_minloss`` clip of the scaled KL, which acts as
  free bits on the batch mean: no gradient below 0.01 nats).

Deviations: the actions are not zero-padded to 50 dims (APV's legacy pad, §B.3; it breaks for wider action
spaces, §B.8 #7); one prior head (DreamerV2's ``ensemble`` is 1 in MWM's configs); the σ settings of continuous
latents are not implemented (MWM uses discrete latents only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RSSMState(NamedTuple):
    """One state (B, ...) or a sequence of them (B, T, ...) / (T, B, ...)."""

    deter: Tensor  # (..., D)
    logits: Tensor  # (..., S, C)
    stoch: Tensor  # (..., S, C) one-hot (straight-through)

    def map(self, fn: Callable[[Tensor], Tensor]) -> RSSMState:
        return RSSMState(*(fn(x) for x in self))

    @staticmethod
    def stack(states: list[RSSMState], dim: int) -> RSSMState:
        return RSSMState(*(torch.stack(xs, dim) for xs in zip(*states, strict=True)))


class LayerNormGRUCell(nn.Module):
    """DreamerV2's GRU cell with LayerNorm on the gates and the update gate biased towards keeping the state."""

    def __init__(self, input_size: int, size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_size + size, 3 * size, bias=False)  # LayerNorm supplies the bias
        self.norm = nn.LayerNorm(3 * size)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        parts = self.norm(self.linear(torch.cat([x, h], -1)))  # (B, 3D)
        reset, cand, update = parts.chunk(3, -1)  # (B, D) each
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * h  # (B, D)


def straight_through_onehot(logits: Tensor) -> Tensor:
    """A one-hot sample of each categorical (..., S, C) whose gradient is that of the probabilities."""
    probs = logits.softmax(-1)  # (..., S, C)
    index = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).reshape(probs.shape[:-1])  # (..., S)
    onehot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)  # (..., S, C)
    return onehot + (probs - probs.detach())  # exactly one-hot forward, the gradient of probs backward


def mode_onehot(logits: Tensor) -> Tensor:
    """The most likely class of each categorical, one-hot (..., S, C) (no gradient, no randomness)."""
    return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)


def categorical_kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p || q) of S independent categoricals (..., S, C), summed over the S variables -> (...)."""
    p_log, q_log = p_logits.log_softmax(-1), q_logits.log_softmax(-1)  # (..., S, C)
    return (p_log.exp() * (p_log - q_log)).sum((-1, -2))  # (...)


def kl_balanced_loss(post_logits: Tensor, prior_logits: Tensor, balance: float = 0.8, scale: float = 1.0,
                     min_loss: float = 0.01, max_loss: float = 100.0) -> tuple[Tensor, Tensor]:
    """(the clipped, scaled, balanced KL loss, the KL value (batch mean, detached)) for logits (..., S, C).

    balance * KL(sg(post) || prior) trains the prior towards the posterior, (1 - balance) * KL(post || sg(prior))
    regularises the posterior; the scaled mean is clipped to [min_loss, max_loss] (no gradient outside)."""
    prior_side = categorical_kl(post_logits.detach(), prior_logits).mean()  # trains the prior
    post_side = categorical_kl(post_logits, prior_logits.detach()).mean()  # trains the posterior
    balanced = balance * prior_side + (1.0 - balance) * post_side
    value = categorical_kl(post_logits, prior_logits).mean().detach()
    return (scale * balanced).clamp(min_loss, max_loss), value


class RSSM(nn.Module):
    """``observe`` filters a sequence of frame embeddings into posterior (and prior) states; ``imagine`` rolls a
    policy forward on priors alone."""

    def __init__(self, embed_dim: int, action_dim: int, deter: int = 1024, hidden: int = 1024, stoch: int = 32,
                 discrete: int = 32) -> None:
        super().__init__()
        self.deter_dim, self.stoch_dim, self.discrete = deter, stoch, discrete
        self.action_dim = action_dim
        latent = stoch * discrete
        self.img_in = nn.Linear(latent + action_dim, hidden)
        self.gru = LayerNormGRUCell(hidden, deter)
        self.img_out = nn.Sequential(nn.Linear(deter, hidden), nn.ELU(), nn.Linear(hidden, latent))
        self.obs_out = nn.Sequential(nn.Linear(deter + embed_dim, hidden), nn.ELU(), nn.Linear(hidden, latent))

    @property
    def feature_dim(self) -> int:
        return self.stoch_dim * self.discrete + self.deter_dim

    def initial(self, batch: int, device: torch.device | None = None) -> RSSMState:
        device = device or self.img_in.weight.device
        deter = torch.zeros(batch, self.deter_dim, device=device)  # (B, D)
        latent = torch.zeros(batch, self.stoch_dim, self.discrete, device=device)  # (B, S, C)
        return RSSMState(deter, latent, latent)

    @staticmethod
    def feature(state: RSSMState) -> Tensor:
        return torch.cat([state.stoch.flatten(-2), state.deter], -1)  # (..., S*C + D)

    def _latent(self, logits: Tensor, sample: bool) -> Tensor:
        return straight_through_onehot(logits) if sample else mode_onehot(logits)  # (B, S, C)

    def img_step(self, prev: RSSMState, prev_action: Tensor, sample: bool = True) -> RSSMState:
        """The prior of the next state from ``prev`` (B, ...) and the action taken there (B, A)."""
        x = F.elu(self.img_in(torch.cat([prev.stoch.flatten(-2), prev_action], -1)))  # (B, H)
        deter = self.gru(x, prev.deter)  # (B, D)
        logits = self.img_out(deter).unflatten(-1, (self.stoch_dim, self.discrete))  # (B, S, C)
        return RSSMState(deter, logits, self._latent(logits, sample))

    def obs_step(self, prev: RSSMState, prev_action: Tensor, embed: Tensor, is_first: Tensor,
                 sample: bool = True) -> tuple[RSSMState, RSSMState]:
        """(posterior, prior) of the state that sees ``embed`` (B, E), reached from ``prev`` by ``prev_action``
        (B, A); rows with ``is_first`` (B,) bool start from the initial (zero) state and a zero action."""
        keep = (~is_first).to(embed.dtype)[:, None]  # (B, 1)
        prev = prev.map(lambda x: x * keep.view(-1, *[1] * (x.dim() - 1)))
        prior = self.img_step(prev, prev_action * keep, sample)
        logits = self.obs_out(torch.cat([prior.deter, embed], -1)).unflatten(-1, (self.stoch_dim, self.discrete))
        return RSSMState(prior.deter, logits, self._latent(logits, sample)), prior  # (B, ...) each

    def observe(self, embed: Tensor, prev_actions: Tensor, is_first: Tensor, state: RSSMState | None = None
                ) -> tuple[RSSMState, RSSMState]:
        """Posterior and prior states (B, T, ...) of embeddings ``embed`` (B, T, E); ``prev_actions`` (B, T, A) is
        the action that led into each step (DreamerV2's convention; ignored where ``is_first`` (B, T))."""
        B, T = embed.shape[:2]
        state = state if state is not None else self.initial(B, embed.device)
        posts, priors = [], []
        for t in range(T):
            state, prior = self.obs_step(state, prev_actions[:, t], embed[:, t], is_first[:, t])
            posts.append(state)
            priors.append(prior)
        return RSSMState.stack(posts, 1), RSSMState.stack(priors, 1)  # (B, T, ...) each

    def imagine(self, policy: Callable[[Tensor], Tensor], start: RSSMState, horizon: int
                ) -> tuple[Tensor, Tensor]:
        """Roll ``policy`` (features (N, F) -> actions (N, A), differentiable) for ``horizon`` steps from
        ``start`` (N, ...) on prior states. Returns features (H+1, N, F) (start first) and actions (H, N, A),
        action t taken in state t. Gradients flow from later states back through the actions (dynamics
        backprop)."""
        state, feats, actions = start, [self.feature(start)], []
        for _ in range(horizon):
            action = policy(feats[-1])  # (N, A)
            state = self.img_step(state, action)
            feats.append(self.feature(state))
            actions.append(action)
        return torch.stack(feats), torch.stack(actions)  # (H+1, N, F), (H, N, A)

    def kl_loss(self, post: RSSMState, prior: RSSMState, balance: float = 0.8, scale: float = 1.0,
                min_loss: float = 0.01, max_loss: float = 100.0) -> tuple[Tensor, Tensor]:
        """``kl_balanced_loss`` of the posterior and prior states of ``observe``."""
        return kl_balanced_loss(post.logits, prior.logits, balance, scale, min_loss, max_loss)
