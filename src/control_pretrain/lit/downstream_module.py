"""Finetuning a (pretrained or fresh) control transformer on one task: behaviour cloning (``model_type=naive``) or
return-conditioned control (``reward_conditioned``), evaluated by rollouts in dm_control (smart.md §3.2-3.5).

Deviations from microsoft/smart ``CTLitModule``:
- pretrained weights are loaded by explicit rules (lit/weights.py): pretraining heads are never loaded,
  ``no_load_action`` also re-initialises the action encoder, shape mismatches are re-initialised, and both lists
  are logged; sizes default to the checkpoint's (dmc_downstream.py), and a checkpoint that does not fit is a clear
  error;
- for state observations, a domain seen in pretraining keeps its slot of the pretraining observation layout, so
  the whole state encoder transfers, and the checkpoint's observation statistics; an unseen domain (and a model
  trained from scratch) is normalised with its finetuning data's statistics (``setup``, logged);
- ``freeze_encoder`` freezes the observation encoder (the original trained only the BC head, and the wrong head in
  return-conditioned mode, smart.md §2.9);
- rollouts are batched, aligned with training, reset once, and seeded separately for checkpoint selection
  (``eval_seed``) and for the final report (``test_seed``) (smart.md §3.5); they run in the ``RolloutEvaluation``
  callback (eval/callback.py) this module configures, on the policy ``make_policy`` builds (eval/policies.py);
- no evaluation during the sanity check; the model is seeded before its heads are initialised (smart.md §3.2).
"""

from __future__ import annotations

import logging

import torch

from ..data.slots import SlotLayout
from ..eval.callback import RolloutEvaluation, seed_range
from ..eval.policies import BehaviorCloningPolicy, ReturnConditionedPolicy, TrunkPolicy
from ..eval.stats import target_return_for
from ..models.control_transformer import ControlTransformerConfig
from ..objectives import BehaviorCloningObjective, ReturnConditionedConfig, ReturnConditionedObjective
from .control_module import NORMALIZER_PREFIX, ControlModule
from .weights import forget_pretrained, load_weights, read_pretrained

log = logging.getLogger(__name__)

MODEL_TYPES = ("naive", "reward_conditioned")


class DownstreamModule(ControlModule):
    checkpoint_monitor = ("eval/return_mean", "max")

    def __init__(
        self,
        domain: str = "cheetah",
        task: str = "run",
        obs_type: str = "pixels",
        obs_dim: int = 0,
        action_dim: int = 0,
        n_layer: int = 8,
        n_head: int = 8,
        n_embd: int = 256,
        context_length: int = 30,
        dropout: float = 0.1,
        max_timestep: int = 1024,
        position_encoding: str = "relative_bias",
        model_type: str = "naive",
        load_model_from: str | None = None,
        no_load_action: bool = False,
        freeze_encoder: bool = False,
        rtg_scale: float = 1000.0,
        target_return: float | None = None,
        eval_episodes: int = 50,
        eval_seed: int = 1000,
        test_seed: int = 2000,
        video: bool = False,
        lr: float = 6e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        lr_schedule: str = "cosine",
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
    ) -> None:
        """
        Args:
            domain: dm_control domain (set from --data.domain).
            task: dm_control task (set from --data.task).
            obs_type: pixels or state.
            obs_dim: the task's observation width (set from the data).
            action_dim: the task's action width (set from the data).
            n_layer: transformer blocks (default: the checkpoint's, else 8).
            n_head: attention heads (default: the checkpoint's, else 8).
            n_embd: token width (default: the checkpoint's, else 256).
            context_length: K steps per window (default: the checkpoint's, else 30).
            dropout: embedding, attention and residual dropout.
            max_timestep: rows of the per-step timestep embedding.
            position_encoding: how tokens know their place in the window (default: the checkpoint's, else relative_bias): relative_bias (a learned
                attention bias per layer, head and token offset), absolute (the reference's learned 2K-token
                table), rotary or step_type (models/positions.py).
            model_type: naive (behaviour cloning) or reward_conditioned (return-to-go conditioned control).
            load_model_from: a checkpoint (usually pretraining's last.ckpt); without it the model trains from scratch.
            no_load_action: also re-initialise the action encoder (pretraining heads are never loaded).
            freeze_encoder: keep the observation encoder fixed (and in eval mode).
            rtg_scale: return-to-go is divided by this before the policy head (the original fed raw values).
            target_return: initial return-to-go in evaluation (default: the reference table for the task).
            eval_episodes: rollouts per evaluation (selection after each validation, and the final report).
            eval_seed: first environment seed of the rollouts that pick the best checkpoint.
            test_seed: first environment seed of the final report's rollouts (disjoint from selection).
            video: write an mp4 of the first final-report episode (pixels rendered for it).
            lr: peak learning rate.
            weight_decay: AdamW weight decay on Linear/Conv weights only.
            betas: AdamW betas.
            lr_schedule: cosine (linear warmup, cosine decay) or constant (the original).
            warmup_ratio: fraction of all steps spent warming up.
            min_lr_ratio: final learning rate as a fraction of lr.
            compile: torch.compile the model (GPUs; slow to start).
        """
        super().__init__()
        self.save_hyperparameters()
        if model_type not in MODEL_TYPES:
            raise ValueError(f"--model_type must be one of {MODEL_TYPES}, not '{model_type}'")
        pretrained = read_pretrained(load_model_from) if load_model_from else None
        # A state domain seen in pretraining keeps its slot of the pretraining layout (if the sizes agree).
        layout = pretrained.obs_layout if pretrained is not None and obs_type == "state" else None
        self.obs_layout: SlotLayout | None = layout if layout is not None and layout.fits(domain, obs_dim) else None
        model_obs_dim = self.obs_layout.size if self.obs_layout else obs_dim
        config = ControlTransformerConfig(obs_type=obs_type, obs_dim=model_obs_dim, action_dim=action_dim,
                                          n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                                          context_length=context_length, max_timestep=max_timestep, dropout=dropout,
                                          position_encoding=position_encoding)
        self.build_model(config, compile)
        if model_type == "naive":
            self.add_objective(BehaviorCloningObjective(n_embd, action_dim))
        else:
            self.add_objective(ReturnConditionedObjective(n_embd, action_dim, ReturnConditionedConfig(rtg_scale)))
        self.loaded: list[str] = []
        self.reinitialised: list[str] = []
        if pretrained is not None:
            exclude = ["objectives."] + (["model.action_encoder."] if no_load_action else [])
            if self.obs_layout is None:  # an unseen domain gets statistics of its own data (``setup``)
                exclude.append(NORMALIZER_PREFIX)
            self.loaded, self.reinitialised = load_weights(self, pretrained, exclude, self.model.to_config())
            forget_pretrained()
        self.model.mask_token.requires_grad_(False)  # finetuning masks nothing; DDP rejects unused parameters
        if freeze_encoder:
            self.model.obs_encoder.requires_grad_(False)

    @property
    def policy(self):
        """The policy objective (BC or RTG head)."""
        return next(iter(self.objectives.values()))

    def setup(self, stage: str) -> None:
        """Observation statistics, once, before the first step: a domain seen in pretraining keeps the
        checkpoint's (the encoder was trained on them); an unseen domain, or a model trained from scratch, takes
        those of its finetuning training episodes (DataModule ``obs_stats``; none with normalize_obs false)."""
        dm = self.trainer.datamodule
        if not self.normalizes_obs or not hasattr(dm, "obs_stats"):  # no DataModule of ours: nothing to decide
            return
        hp = self.hparams
        data_stats = dm.obs_stats
        if self.obs_layout is not None:
            identity = " (identity: it has none)" if self.model.obs_normalizer.is_identity else ""
            self.use_obs_stats(None, self.obs_layout, f"checkpoint {hp.load_model_from}, a seen domain{identity}")
            return
        layout = SlotLayout.single(hp.domain, hp.obs_dim)
        origin = f"a domain {hp.load_model_from} has not seen" if hp.load_model_from else "training from scratch"
        if data_stats is not None:
            source = f"the finetuning training episodes ({data_stats.steps[hp.domain]} steps), {origin}"
        else:
            source = f"identity (--data.normalize_obs false), {origin}"
        self.use_obs_stats(data_stats, layout, source)

    def prepare(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Place state observations into the domain's slot of the pretraining layout, if it has one (with that
        slot's number as ``domain_id``, which the observation normaliser reads)."""
        if self.obs_layout is None or "observations" not in batch:
            return batch
        domain = self.hparams.domain
        obs = batch["observations"]  # (B, T, own obs_dim)
        domain_id = torch.full((len(obs),), self.obs_layout.number(domain), dtype=torch.long, device=obs.device)
        return {**batch, "observations": self.obs_layout.place(domain, obs), "domain_id": domain_id}  # (B, T, D)

    def compute_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return super().compute_losses(self.prepare(batch))

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        losses = self.compute_losses(batch)
        self.log_dict({f"test/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True,
                      batch_size=len(batch["actions"]), sync_dist=True, prog_bar=False)

    # ---- evaluation in dm_control --------------------------------------------------------------------------
    @property
    def target_return(self) -> float | None:
        hp = self.hparams
        return target_return_for(hp.domain, hp.task, hp.target_return) if hp.model_type != "naive" else None

    def make_policy(self) -> TrunkPolicy:
        """The policy the rollouts call; the rollout engine places observations into ``obs_layout`` itself."""
        if self.hparams.model_type == "naive":
            return BehaviorCloningPolicy(self.model, self.policy, obs_layout=self.obs_layout)
        return ReturnConditionedPolicy(self.model, self.policy, self.target_return, obs_layout=self.obs_layout)

    def selection_seeds(self) -> list[int]:
        return seed_range(self.hparams.eval_seed, self.hparams.eval_episodes)

    def test_seeds(self) -> list[int]:
        return seed_range(self.hparams.test_seed, self.hparams.eval_episodes)

    def configure_callbacks(self) -> list:
        return [RolloutEvaluation(self.selection_seeds(), self.test_seeds())]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.freeze_encoder:
            self.model.obs_encoder.eval()  # a frozen encoder also keeps its dropout/normalisation fixed
        return self
