"""A small state-based Soft Actor-Critic agent, the data collector of SMART's ``fullcollect`` sets.

Reproduces the SAC of SAC-AE (Yarats et al. 2019, denisyarats/pytorch_sac_ae) with ``encoder_type=identity``, which
ycsun2017/data_collect_dmc ran to make SMART's exploratory data (smart.md §1.1): twin Q critics with target copies,
a tanh-squashed Gaussian actor whose log-std is squashed into [-10, 2], a learned temperature aiming at entropy
-|A|, Adam everywhere, actor and target updates every 2 critic updates.

Deliberate deviations (for a 2-core CPU):
- hidden 256x2 instead of 1024x2 (SAC-AE's state setting): an update is compute-bound on a CPU core and 1024x2
  costs about 10x more (measured: 22 vs 250 updates/s at batch 128, one thread); 256x2 is the usual state-SAC
  size (Haarnoja et al. 2018).
- ``updates_per_step`` (default 1.0, the reference's ratio) may be lowered to trade sample efficiency for speed.
- runs on CPU or GPU (``device``); the replay buffer (agents/replay.py) and the online loop (agents/loop.py) live
  in their own files.
Batch 128 is SAC-AE's; 256 (pytorch_sac's) costs about 1.6x more per update on a CPU.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.ema import ema_update
from .tensors import to_cpu


@dataclass
class SACConfig:
    """Hyperparameters; defaults follow SAC-AE's state setting except the width (module docstring)."""

    hidden_dim: int = 256  # width of every hidden layer (SAC-AE state: 1024)
    hidden_layers: int = 2  # hidden layers of actor and critics
    batch_size: int = 128  # transitions per update (SAC-AE's value)
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    alpha_lr: float = 1e-4
    actor_beta: float = 0.9  # Adam beta1 of the actor (SAC-AE)
    critic_beta: float = 0.9  # Adam beta1 of the critics (SAC-AE)
    alpha_beta: float = 0.5  # Adam beta1 of the temperature (SAC-AE)
    init_temperature: float = 0.1
    discount: float = 0.99
    tau: float = 0.01  # soft target update rate (SAC-AE critic_tau)
    actor_update_every: int = 2  # critic updates per actor + temperature update
    target_update_every: int = 2  # critic updates per soft target update
    log_std_min: float = -10.0
    log_std_max: float = 2.0
    init_steps: int = 1000  # uniformly random actions first (SAC-AE init_steps); updates start after them
    updates_per_step: float = 1.0  # gradient updates per agent step once init_steps have passed
    catch_up: bool = True  # SAC-AE: init_steps updates at once when learning starts (CURL and MLR: none)

    @classmethod
    def from_dict(cls, values: dict | None) -> SACConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(values or {}) - names
        if unknown:
            raise ValueError(f"unknown SAC option(s) {sorted(unknown)}; known: {sorted(names)}")
        return cls(**(values or {}))


def mlp(in_dim: int, out_dim: int, hidden: int, layers: int) -> nn.Sequential:
    dims = [in_dim] + [hidden] * layers + [out_dim]
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        mods.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


class Actor(nn.Module):
    """Tanh-squashed diagonal Gaussian policy."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: SACConfig) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 2 * action_dim, cfg.hidden_dim, cfg.hidden_layers)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(obs).chunk(2, dim=-1)  # (B, A) each
        # SAC-AE: squash log_std into [min, max] smoothly instead of clamping
        log_std = torch.tanh(log_std)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (log_std + 1)
        return mu, log_std

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action in (-1, 1) and its log-probability (B, 1)."""
        mu, log_std = self(obs)
        std = log_std.exp()
        noise = torch.randn_like(mu)
        pre_tanh = mu + noise * std  # (B, A)
        action = torch.tanh(pre_tanh)
        log_prob = (-0.5 * noise.pow(2) - log_std).sum(-1, keepdim=True) - 0.5 * math.log(2 * math.pi) * mu.shape[-1]
        # change of variables for tanh, in the numerically stable form log(1 - tanh(x)^2) = 2(log2 - x - softplus(-2x))
        log_prob = log_prob - (2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1, keepdim=True)
        return action, log_prob


class Critic(nn.Module):
    """Two Q functions evaluated together: returns (2, B, 1)."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: SACConfig) -> None:
        super().__init__()
        self.q1 = mlp(obs_dim + action_dim, 1, cfg.hidden_dim, cfg.hidden_layers)
        self.q2 = mlp(obs_dim + action_dim, 1, cfg.hidden_dim, cfg.hidden_layers)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)  # (B, O+A)
        return torch.stack([self.q1(x), self.q2(x)])  # (2, B, 1)


class SACAgent:
    """Actor, twin critics, target critics and temperature, with their optimisers, float32 on ``device`` (CPU or
    GPU). Follows the agent protocol of agents/loop.py (act, train_step, state_dict, load_state_dict)."""

    config_class = SACConfig

    def __init__(self, obs_dim: int, action_dim: int, cfg: SACConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.cfg = cfg = cfg or SACConfig()
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.device = torch.device(device)
        feature_dim = self.make_encoders()
        self.actor = Actor(feature_dim, action_dim, cfg).to(self.device)
        self.critic = Critic(feature_dim, action_dim, cfg).to(self.device)
        self.critic_target = Critic(feature_dim, action_dim, cfg).to(self.device)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(cfg.init_temperature), device=self.device))
        self.target_entropy = -float(action_dim)
        self.actor_opt = torch.optim.Adam([*self.actor.parameters(), *self.encoder_parameters("actor")],
                                          lr=cfg.actor_lr, betas=(cfg.actor_beta, 0.999))
        self.critic_opt = torch.optim.Adam([*self.critic.parameters(), *self.encoder_parameters("critic")],
                                           lr=cfg.critic_lr, betas=(cfg.critic_beta, 0.999))
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr, betas=(cfg.alpha_beta, 0.999))
        self.num_updates = 0

    def make_encoders(self) -> int:
        """Build the observation encoders (none for state SAC); returns the feature width the MLPs read."""
        return self.obs_dim

    def encoder_parameters(self, role: str) -> list[nn.Parameter]:
        """Encoder weights the ``role`` ("actor" or "critic") optimiser steps besides its MLP (none here)."""
        return []

    @property
    def batch_size(self) -> int:
        return self.cfg.batch_size

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """One action in [-1, 1] for one observation (the mean action if ``deterministic``)."""
        features = self.actor_features(self.observation_batch(obs))  # (1, F)
        if deterministic:
            action = torch.tanh(self.actor(features)[0])
        else:
            action = self.actor.sample(features)[0]
        return action[0].cpu().numpy()

    def observation_batch(self, obs: np.ndarray) -> torch.Tensor:
        """One environment observation as the batch of one that the actor reads."""
        return torch.as_tensor(obs, dtype=torch.float32, device=self.device).unsqueeze(0)  # (1, O)

    def train_step(self, replay) -> dict[str, float]:
        """One update on a batch sampled from ``replay`` (what the online loop calls)."""
        return self.update(*replay.sample(self.batch_size))

    def update(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
               not_done: torch.Tensor) -> dict[str, float]:
        """One critic update (and, every few, an actor/temperature and target update) on a batch on the agent's
        device. Shapes: obs/next_obs (B, O), action (B, A), reward/not_done (B, 1)."""
        info = self.update_critic(obs, action, reward, next_obs, not_done)
        if self.num_updates % self.cfg.actor_update_every == 0:
            info.update(self.update_actor(obs))
        if self.num_updates % self.cfg.target_update_every == 0:
            self.update_targets()
        return info

    # The features each network reads. State SAC reads observations as they are; pixel agents (agents/pixel_sac.py)
    # put their encoders here, so the losses below are the same code for both.
    def critic_features(self, obs: torch.Tensor) -> torch.Tensor:
        return obs

    def actor_features(self, obs: torch.Tensor) -> torch.Tensor:
        return obs

    def target_features(self, obs: torch.Tensor) -> torch.Tensor:
        return obs

    def update_critic(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_obs: torch.Tensor,
                      not_done: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        with torch.no_grad():
            next_action, next_log_prob = self.actor.sample(self.actor_features(next_obs))
            target_q = self.critic_target(self.target_features(next_obs), next_action).min(0).values  # (B, 1)
            target = reward + cfg.discount * not_done * (target_q - self.alpha * next_log_prob)  # (B, 1)
        q = self.critic(self.critic_features(obs), action)  # (2, B, 1)
        critic_loss = F.mse_loss(q, target.unsqueeze(0).expand_as(q), reduction="none").mean(dim=(1, 2)).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()
        self.num_updates += 1
        return {"critic_loss": critic_loss.item()}

    def update_actor(self, obs: torch.Tensor) -> dict[str, float]:
        """Actor and temperature. The critic (and its encoder) only scores the actions: no gradient reaches it."""
        with torch.no_grad():
            critic_obs = self.critic_features(obs)
        self.critic.requires_grad_(False)  # the actor loss must not write critic gradients
        pi, log_prob = self.actor.sample(self.actor_features(obs))  # (B, A), (B, 1)
        actor_q = self.critic(critic_obs, pi).min(0).values  # (B, 1)
        actor_loss = (self.alpha.detach() * log_prob - actor_q).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.critic.requires_grad_(True)
        alpha_loss = (self.alpha * (-log_prob.detach() - self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        return {"actor_loss": actor_loss.item(), "alpha": self.alpha.item(), "entropy": -log_prob.mean().item()}

    def update_targets(self) -> None:
        ema_update(self.critic_target, self.critic, self.cfg.tau)  # SAC-AE's soft_update_params(critic_tau)

    def networks(self) -> dict[str, nn.Module]:
        """The modules a snapshot holds, by name (pixel agents add their encoders)."""
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"actor": self.actor_opt, "critic": self.critic_opt, "alpha": self.alpha_opt}

    def state_dict(self, with_optimizers: bool = True) -> dict:
        """Config, sizes and weights (and optimiser states): everything ``from_state_dict`` needs. The layout of
        the saved ``.agent.pt`` files (collect --save_agent); tensors stay on the agent's device until saved."""
        state = {
            "config": asdict(self.cfg),
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            **{name: net.state_dict() for name, net in self.networks().items()},
            "log_alpha": self.log_alpha.detach().clone(),
            "num_updates": self.num_updates,
        }
        if with_optimizers:
            state["optimizers"] = {name: opt.state_dict() for name, opt in self.optimizers().items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        """Load weights, temperature, counter (and optimisers, if saved) of the same sizes, from any device."""
        saved_obs = tuple(state["obs_dim"]) if isinstance(state["obs_dim"], list | tuple) else state["obs_dim"]
        if (saved_obs, state["action_dim"]) != (self.obs_dim, self.action_dim):
            raise ValueError(f"saved agent has obs {state['obs_dim']} / actions {state['action_dim']}, this one "
                             f"{self.obs_dim} / {self.action_dim}")
        for name, net in self.networks().items():
            net.load_state_dict(state[name])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.num_updates = int(state["num_updates"])
        if "optimizers" in state:  # Optimizer.load_state_dict moves the moments to each parameter's device
            for name, opt in self.optimizers().items():
                opt.load_state_dict(state["optimizers"][name])

    @classmethod
    def from_state_dict(cls, state: dict, device: str | torch.device = "cpu") -> SACAgent:
        agent = cls(state["obs_dim"], state["action_dim"], cls.config_class.from_dict(state["config"]), device=device)
        agent.load_state_dict(state)
        return agent

    def save(self, path: str, extra: dict | None = None) -> None:
        """Write config + weights (+ optimisers, + ``extra``) to ``path`` atomically."""
        tmp = f"{path}.tmp-{os.getpid()}"
        torch.save(to_cpu({**self.state_dict(), **(extra or {})}), tmp)  # loadable on machines without a GPU
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> tuple[SACAgent, dict]:
        """The agent saved at ``path`` (weights only: no code is unpickled, safe_load.py) and the whole saved dict
        (for any ``extra`` entries)."""
        from ..safe_load import load_checkpoint

        state = load_checkpoint(path, trust=False, refused_hint=(
            "Saved agents (collect --save_agent, dmc_online.py's agent.pt) never hold such objects: save the agent "
            "again with this version."))
        return cls.from_state_dict(state, device=device), state
