"""The MWM agent (Seo et al., CoRL 2022, "Masked World Models for Visual Control"; mlr_mwm.md Part B), the
``Agent`` of agents/loop.py behind ``dmc_online.py --agent mwm --obs_type pixels``.

Three learners with four optimisers (§B.1): the MAE (models/mae.py, trained on single frames and their rewards),
the world model on the MAE's stop-gradient features (world_model.py, rssm.py), and the actor and critic in
imagination (behavior.py). Every optimiser is Adam with eps 1e-5, decoupled weight decay 1e-6 on weight matrices
and a global gradient-norm clip of 100; learning rates MAE 3e-4 (linear warm-up over 2,500 updates), world model
3e-4, actor and critic 1e-4.

Cadence (§B.5), counted in policy steps by the loop (``init_steps``, ``train_every``): the first ``init_steps``
(5,000) steps act uniformly at random (prefill); the loop's first ``train_step`` call, at step ``init_steps``, runs
``mae_pretrain`` (5,000) MAE-only updates and then the first round; from then on one round every ``train_every`` (5)
policy steps: one MAE update, then one world-model update followed by one actor-critic update. No world-model or RL
update happens before prefill and MAE pretraining. With a frozen pretrained MAE (``mae_from`` + ``freeze_mae``) the
MAE is never updated.

Acting: the agent keeps the RSSM posterior and its last action between steps; the loop calls ``begin_episode`` at
every episode start (training and evaluation) to reset them. Training actions are samples of the actor and of the
latents; ``deterministic`` (evaluation) takes the actor's mode and the latents' modes, so evaluation draws no random
numbers.

Deviations (beyond those of the files it uses):
- MAE batches are frames drawn uniformly from the replay (with the reward each frame arrived with), not 32-step
  chunks: the reference's correlated frames are a weakness (§B.8 #3);
- the reward token reads its own hidden state (models/mae.py ``reward_wiring``; the reference's wiring, which reads
  the last pixel patch, is ``--mwm.mae_reward_wiring patch``);
- pretraining: ``mae_pretrain`` MAE updates then one round (the reference adds one more world-model update,
  ``pretrain: 1``);
- after prefill the first acting step of a still running episode starts the RSSM from the initial state (the
  random prefill policy does not filter frames);
- float32 (no fp16 on CPU), no XLA; DreamerV2's episode files on disk are the project's in-memory replay, snapshotted
  with the run.
MAE features for the world model are computed once per world-model batch under ``no_grad`` (the reference runs the
encoder on every batch too, §B.8 #6, but in PyTorch the stop-gradient forward keeps no activations). A feature cache
across updates would be stale after every MAE update; for a frozen MAE it would be exact but cost 65 x width x 4
bytes per replay row (66 KB at width 256, 6.6 GB per 100k rows), so it is not built.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

import numpy as np
import torch
from torch import Tensor, nn

from ...models.mae import ConvMaskedAutoencoder, MAEConfig, load_mae_from_checkpoint
from ..tensors import to_cpu
from .behavior import ActorCritic
from .config import MWMConfig
from .world_model import WorldModel

log = logging.getLogger(__name__)

PRETRAIN_LOG_EVERY = 100  # MAE pretraining updates between progress lines


def adamw(modules: list[nn.Module], lr: float, eps: float, weight_decay: float) -> torch.optim.AdamW:
    """Adam with decoupled weight decay on weight matrices and conv kernels only (DreamerV2's ``wd_pattern``)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    rest = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, eps=eps)


class MWMAgent:
    """MWM on single frames ``obs_shape`` = (3, render_size, render_size) uint8 with ``action_dim`` actions."""

    config_class = MWMConfig

    def __init__(self, obs_shape: tuple[int, ...], action_dim: int, cfg: MWMConfig | None = None,
                 device: str | torch.device = "cpu") -> None:
        obs_shape = tuple(obs_shape)
        if len(obs_shape) != 3 or obs_shape[0] != 3:
            raise ValueError(f"MWM reads single RGB frames (3, H, W), got observations of shape {obs_shape}")
        self.cfg = cfg = cfg or MWMConfig()
        self.obs_dim, self.action_dim = obs_shape, action_dim
        self.device = torch.device(device)
        if cfg.mae_from:
            self.mae = load_mae_from_checkpoint(cfg.mae_from, freeze=cfg.freeze_mae)
        else:
            self.mae = ConvMaskedAutoencoder(self.mae_config())
        self.mae.to(self.device)
        num_tokens, token_dim = 1 + self.mae.num_patches, self.mae.embed_dim
        self.world_model = WorldModel(token_dim, num_tokens, action_dim, cfg.wm_width, cfg.wm_depth, cfg.wm_heads,
                                      cfg.deter, cfg.hidden, cfg.stoch, cfg.discrete, cfg.units, cfg.layers,
                                      cfg.kl_balance, cfg.kl_scale, cfg.kl_min).to(self.device)
        self.behavior = ActorCritic(self.world_model.rssm.feature_dim, action_dim, cfg.units, cfg.layers,
                                    cfg.actor_min_std, cfg.horizon, cfg.discount, cfg.return_lambda,
                                    cfg.entropy_scale, cfg.slow_critic_every, cfg.slow_critic_fraction).to(self.device)
        self.mae_opt = adamw([self.mae], cfg.mae_lr, cfg.adam_eps, cfg.weight_decay)
        warmup = cfg.mae_warmup
        self.mae_schedule = torch.optim.lr_scheduler.LambdaLR(self.mae_opt, lambda n: min(1.0, (n + 1) / warmup))
        self.wm_opt = adamw([self.world_model], cfg.wm_lr, cfg.adam_eps, cfg.weight_decay)
        self.actor_opt = adamw([self.behavior.actor], cfg.actor_lr, cfg.adam_eps, cfg.weight_decay)
        self.critic_opt = adamw([self.behavior.critic], cfg.critic_lr, cfg.adam_eps, cfg.weight_decay)
        self.num_updates = 0  # world-model + actor-critic updates (rounds)
        self.mae_updates = 0  # MAE updates, pretraining included
        self._state, self._action = None, None  # the acting posterior and the action taken from it

    def mae_config(self) -> MAEConfig:
        cfg = self.cfg
        return MAEConfig(image_size=cfg.render_size, embed_dim=cfg.mae_width, decoder_dim=cfg.mae_width,
                         encoder_depth=cfg.mae_depth, decoder_depth=cfg.mae_decoder_depth, n_head=cfg.mae_heads,
                         mask_ratio=cfg.mask_ratio, reward_wiring=cfg.mae_reward_wiring)

    @property
    def mae_trains(self) -> bool:
        return not self.cfg.freeze_mae

    @property
    def rssm(self):
        return self.world_model.rssm

    # -- acting ----------------------------------------------------------------------------------------------------
    def begin_episode(self) -> None:
        """Forget the recurrent state: the next ``act`` starts an episode (agents/loop.py calls this)."""
        self._state, self._action = None, None

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """One action in [-1, 1] for frame ``obs`` (3, H, W) uint8, filtering it into the episode's state."""
        frame = torch.as_tensor(obs, device=self.device)[None]  # (1, 3, H, W) uint8
        embed = self.world_model.embed(self.mae.features(frame))  # (1, W)
        first = self._state is None
        state = self.rssm.initial(1) if first else self._state
        prev_action = torch.zeros(1, self.action_dim, device=self.device) if first else self._action  # (1, A)
        is_first = torch.tensor([first], device=self.device)  # (1,)
        state, _ = self.rssm.obs_step(state, prev_action, embed, is_first, sample=not deterministic)
        dist = self.behavior.actor(self.rssm.feature(state))
        action = dist.mode if deterministic else dist.rsample()  # (1, A)
        self._state, self._action = state, action
        return action[0].cpu().numpy()

    # -- learning --------------------------------------------------------------------------------------------------
    def train_step(self, replay) -> dict[str, float]:
        """One round (the first call also pretrains the MAE): an MAE update, then a world-model and an
        actor-critic update, on batches sampled from ``replay``."""
        info: dict[str, float] = {}
        if self.num_updates == 0 and self.mae_updates == 0 and self.mae_trains and self.cfg.mae_pretrain:
            info.update(self.pretrain_mae(replay))
        if self.mae_trains:
            info.update(self.update_mae(replay))
        info.update(self.update_world_model_and_behavior(replay))
        return info

    def pretrain_mae(self, replay) -> dict[str, float]:
        """``mae_pretrain`` MAE-only updates (after the prefill, before any RL)."""
        n = self.cfg.mae_pretrain
        losses = []
        for i in range(n):
            losses.append(self.update_mae(replay)["mae_loss"])
            if (i + 1) % PRETRAIN_LOG_EVERY == 0 or i + 1 == n:
                log.info("MAE pretraining: %d/%d updates, loss %.4f", i + 1, n, losses[-1])
        return {"mae_pretrain_loss_first": losses[0], "mae_pretrain_loss_last": losses[-1]}

    def update_mae(self, replay) -> dict[str, float]:
        """One MAE update on ``mae_batch`` frames, each with the reward it arrived with (row i + 1, reward i)."""
        _, _, reward, frames, _ = replay.sample(self.cfg.mae_batch)  # frames (B, 3, H, W) uint8, reward (B, 1)
        out = self.mae.loss(frames, reward[:, 0])
        self._step(self.mae_opt, out["loss"], self.mae)
        self.mae_schedule.step()
        self.mae_updates += 1
        return {"mae_loss": out["loss"].item(), "mae_pixel_loss": out["pixel_loss"].item(),
                "mae_reward_loss": out["reward_loss"].item(), "mae_psnr": out["masked_psnr"].item()}

    def update_world_model_and_behavior(self, replay) -> dict[str, float]:
        """One world-model update on ``batch_size`` clips of ``seq_len`` steps, then one actor and one critic update
        on imagined rollouts from every posterior state of the batch."""
        cfg = self.cfg
        seq = replay.sample_sequences(cfg.batch_size, cfg.seq_len)
        B, T = seq["actions"].shape[:2]
        with torch.no_grad():  # §B.3: stop-gradient MAE features, computed once per batch
            tokens = self.mae.features(seq["obs"].reshape(B * T, *seq["obs"].shape[2:]))  # (B*T, L, Dm)
        tokens = tokens.reshape(B, T, *tokens.shape[1:])  # (B, T, L, Dm)
        wm_loss, post, info = self.world_model.loss(tokens, seq["actions"], seq["rewards"], seq["is_first"])
        self._step(self.wm_opt, wm_loss, self.world_model)
        start = post.map(lambda x: x.detach().reshape(B * T, *x.shape[2:]))  # (B*T, ...) imagination starts
        actor_loss, critic_loss, ac_info = self.behavior.losses(self.world_model, start)
        self._step(self.actor_opt, actor_loss, self.behavior.actor)
        self._step(self.critic_opt, critic_loss, self.behavior.critic)
        self.num_updates += 1
        self.behavior.update_slow_critic(self.num_updates)
        return {**info, **ac_info, "actor_loss": actor_loss.item(), "critic_loss": critic_loss.item()}

    def _step(self, opt: torch.optim.Optimizer, loss: Tensor, module: nn.Module) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None], self.cfg.grad_clip)
        opt.step()

    # -- saving ----------------------------------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"mae": self.mae, "world_model": self.world_model, "actor": self.behavior.actor,
                "critic": self.behavior.critic, "slow_critic": self.behavior.slow_critic}

    def optimizers(self) -> dict:
        return {"mae": self.mae_opt, "mae_schedule": self.mae_schedule, "world_model": self.wm_opt,
                "actor": self.actor_opt, "critic": self.critic_opt}

    def parameter_counts(self) -> dict[str, int]:
        nets = self.networks()
        return {"mae": sum(p.numel() for p in nets["mae"].parameters()),
                "world_model": sum(p.numel() for p in nets["world_model"].parameters()),
                "actor_critic": sum(p.numel() for k in ("actor", "critic", "slow_critic")
                                    for p in nets[k].parameters())}

    def state_dict(self, with_optimizers: bool = True) -> dict:
        """Config, sizes, weights, counters (and the four optimisers with the MAE's warm-up schedule)."""
        state = {"config": asdict(self.cfg), "obs_dim": list(self.obs_dim), "action_dim": self.action_dim,
                 **{name: net.state_dict() for name, net in self.networks().items()},
                 "num_updates": self.num_updates, "mae_updates": self.mae_updates}
        if with_optimizers:
            state["optimizers"] = {name: opt.state_dict() for name, opt in self.optimizers().items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        if (tuple(state["obs_dim"]), state["action_dim"]) != (self.obs_dim, self.action_dim):
            raise ValueError(f"saved agent has frames {tuple(state['obs_dim'])} / actions {state['action_dim']}, this "
                             f"one {self.obs_dim} / {self.action_dim}")
        for name, net in self.networks().items():
            net.load_state_dict(state[name])
        self.num_updates, self.mae_updates = int(state["num_updates"]), int(state["mae_updates"])
        if "optimizers" in state:
            for name, opt in self.optimizers().items():
                opt.load_state_dict(state["optimizers"][name])
        self.begin_episode()

    @classmethod
    def from_state_dict(cls, state: dict, device: str | torch.device = "cpu") -> MWMAgent:
        agent = cls(tuple(state["obs_dim"]), state["action_dim"], MWMConfig.from_dict(state["config"]), device=device)
        agent.load_state_dict(state)
        return agent

    def save(self, path: str, extra: dict | None = None) -> None:
        """Write config + weights + optimisers (+ ``extra``) to ``path`` atomically."""
        tmp = f"{path}.tmp-{os.getpid()}"
        torch.save(to_cpu({**self.state_dict(), **(extra or {})}), tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> tuple[MWMAgent, dict]:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return cls.from_state_dict(state, device=device), state
