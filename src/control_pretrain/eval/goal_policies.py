"""A masked trajectory model as a goal reacher and prompt follower (MaskDP, Liu et al. 2022; mtm_maskdp.md
§B.6), the ``GoalPolicy`` of eval/goal_reaching.py.

One query, three uses. The window holds the history (the current state last, at index c), then the steps to the
furthest goal that fits the model's K steps; visible are the history's states and actions and each goal state at
its step, hidden everything else; the actions from index c on are read off as the plan:
- single goal (history 1): s_0 and g visible, 2 of 2(h+1) tokens (why high mask ratios must be in training);
- several goals: every pending goal within the window at its step (later ones come into view as time passes);
- prompting (no goal): the history's states and actions, the current action read off (closed loop).

Rows whose plans have different lengths are run as separate model calls, one per window length, so a row's plan
does not depend on which other pairs share its batch. Deviations from MaskDP_public ``MDPGoalAgent``: history
beyond s_0 is allowed (``history_length``); windows longer than K are refused instead of interpolating the
position table (our sinusoid and step-offset bias take any length, but the bias saturates beyond K - 1 steps).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data.slots import SlotLayout


class MaskedGoalPolicy:
    """``model``: a ``MaskedTrajectoryModel`` in eval mode; ``domain`` and the layouts place env-width vectors
    into the model's slots (None: the env's own width)."""

    def __init__(self, model: nn.Module, domain: str, obs_dim: int, action_dim: int, history_length: int = 1,
                 obs_layout: SlotLayout | None = None, action_layout: SlotLayout | None = None) -> None:
        if model.config.obs_type != "state":
            raise ValueError("goal reaching compares state observations; this model reads pixels")
        self.model, self.domain, self.history_length = model, domain, int(history_length)
        self.context_length = int(model.config.context_length)
        if not 1 <= self.history_length < self.context_length:
            raise ValueError(f"history_length {history_length} must lie in [1, K-1 = {self.context_length - 1}]")
        self.obs_layout = obs_layout or SlotLayout.single(domain, obs_dim)
        self.action_layout = action_layout or SlotLayout.single(domain, action_dim)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def plan(self, history: dict[str, Tensor], goals: Tensor, goal_steps: Tensor) -> Tensor:
        if self.model.training:
            raise RuntimeError("call .eval() on the model first: dropout makes the policy random")
        obs, acts = history["observations"], history["actions"]  # (n, T, D), (n, T-1, A)
        n, T = obs.shape[:2]
        c, K = T - 1, self.context_length
        if goals.shape[1] == 0:  # prompting: the current action only
            return self.action_layout.take(self.domain, self._query(obs, acts, goals, goal_steps, c, 1))
        if int(goal_steps[:, 0].max()) > K - 1 - c:
            raise ValueError(f"a goal {int(goal_steps[:, 0].max())} steps ahead does not fit the model's K = {K} "
                             f"steps after {T} history steps; train with a longer --context_length")
        fits = goal_steps <= K - 1 - c  # (n, G) goals inside the window
        reach = torch.where(fits, goal_steps, 0).amax(1)  # (n,) the furthest goal in view
        out = obs.new_zeros(n, int(reach.max()), self.action_layout.size)  # (n, H, A)
        for h in reach.unique().tolist():  # one call per window length
            rows = (reach == h).nonzero()[:, 0]
            out[rows, :h] = self._query(obs[rows], acts[rows], goals[rows], goal_steps[rows], c, h)
        return self.action_layout.take(self.domain, out)  # (n, H, A env)

    def _query(self, obs: Tensor, acts: Tensor, goals: Tensor, goal_steps: Tensor, c: int, H: int) -> Tensor:
        """The model's H actions at window indices c..c+H-1, given the history at 0..c and the goals at
        c + goal_steps that fall inside the window (goals: up to c + H; prompting, no goal: c + 1 steps).
        (n, H, A) in the model's layout."""
        n, M = len(obs), len(self.model.modalities)
        L = c + H + 1 if goals.shape[1] else c + 1
        idx = {m: i for i, m in enumerate(self.model.modalities)}
        place_obs = self.obs_layout.place
        window = obs.new_zeros(n, L, self.obs_layout.size)  # (n, L, D)
        window[:, : c + 1] = place_obs(self.domain, obs)
        visible = torch.zeros(n, L, M, dtype=torch.bool, device=obs.device)
        visible[:, : c + 1, idx["obs"]] = True
        rows = torch.arange(n, device=obs.device)
        for g in range(goals.shape[1]):  # duplicated goals land on the same slot with the same value
            at = c + goal_steps[:, g]  # (n,)
            ok = at < L
            window[rows[ok], at[ok]] = place_obs(self.domain, goals[ok, g])
            visible[rows[ok], at[ok], idx["obs"]] = True
        actions = obs.new_zeros(n, L, self.action_layout.size)  # (n, L, A)
        actions[:, :c] = self.action_layout.place(self.domain, acts)
        visible[:, :c, idx["act"]] = True
        batch = {"observations": window, "actions": actions, "rtg_avg": obs.new_zeros(n, L),
                 "domain_id": torch.full((n,), self.obs_layout.number(self.domain), device=obs.device)}
        pred = self.model(batch, visible)["act"]  # (n, L, A); rtg tokens (MTM models) stay hidden
        return pred[:, c : c + H].clamp(-1.0, 1.0)
