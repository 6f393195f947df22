"""SMART multi-task pretraining (smart.md §2.6-2.7): forward dynamics + inverse dynamics + random masked hindsight
control on a reward-free control transformer, with the mask-size curriculum over epochs.

Deviations from microsoft/smart ``MultiTaskCTLitModule`` (each also noted where it lives):
- relative-position attention bias instead of absolute token positions (``position_encoding``, absolute restores
  the reference; models/positions.py);
- two transformer passes per step instead of three (``share_passes``; objectives/smart/passes.py);
- RMHC reads the masked action tokens (``original_read_positions`` restores the bug; masked_hindsight.py);
- the EMA target moves only after optimiser steps, not in validation (control_module.py);
- warmup + cosine schedule and gradient clipping (control_module.py);
- trunk sizes, objectives (class_path/init_args, each with its weight and config) and the curriculum come from
  a method preset (configs/methods/smart.yaml, ``--method``);
- representation probes each validation epoch (``val/probe_*``, lit/probes.py; ``probe_windows``);
- ``--load_model_from`` initialises the weights from a checkpoint (the original crashed, smart.md §3.1);
  ``--ckpt_path last`` resumes an interrupted run with its optimiser and epoch;
- state observations are normalised with the training split's per-dimension statistics, set in ``setup`` and
  stored in the checkpoint and in ``obs_stats.json`` (``--data.normalize_obs false``: raw, as the original).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

from ..errors import ArgumentError
from ..models.control_transformer import ControlTransformerConfig
from ..objectives import Objective, curriculum_mask_sizes
from .control_module import ControlModule
from .probes import RepresentationProbes
from .weights import load_weights

log = logging.getLogger(__name__)

# An objective configured before the sizes it depends on are known: LightningCLI/jsonargparse turns
# ``{class_path: ..., init_args: {config: ..., weight: ...}}`` into a callable that the module calls with
# (n_embd, action_dim) once the data has set action_dim (dependency injection, as LightningCLI's OptimizerCallable).
ObjectiveFactory = Callable[[int, int], Objective]

SMART_OBJECTIVES: list[dict[str, Any]] = [  # configs/methods/smart.yaml holds the same list
    {"class_path": "control_pretrain.objectives.ForwardDynamicsObjective"},
    {"class_path": "control_pretrain.objectives.InverseDynamicsObjective"},
    {"class_path": "control_pretrain.objectives.MaskedHindsightControlObjective"},
]


def objective_class(class_path: str) -> type[Objective]:
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None)
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise ArgumentError(f"model.objectives: {class_path} is not an Objective class. Expected e.g. "
                            "control_pretrain.objectives.ForwardDynamicsObjective (see configs/methods/smart.yaml).")
    return cls


def build_objective(spec: ObjectiveFactory | dict[str, Any], n_embd: int, action_dim: int) -> Objective:
    """A callable from the CLI, or a ``{class_path, init_args}`` dict (direct use, and hparams read back from a
    checkpoint), built with the trunk's width and the data's action width."""
    if callable(spec):
        return spec(n_embd, action_dim)
    from jsonargparse import ArgumentParser  # parses dict specs exactly as the CLI does

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--objective", type=ObjectiveFactory)
    factory = parser.instantiate(parser.parse_object({"objective": spec})).objective
    return factory(n_embd, action_dim)


class PretrainModule(ControlModule):
    def __init__(
        self,
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
        objectives: list[ObjectiveFactory] | None = None,
        mask_actions: int = -1,
        mask_obs: int = -1,
        lr: float = 6e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        lr_schedule: str = "cosine",
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.1,
        compile: bool = False,
        init_from: str | None = None,
        probe_windows: int = 512,
    ) -> None:
        """
        Args:
            obs_type: pixels (84x84 frames, SMART CNN) or state (proprioceptive vectors, MLP encoder).
            obs_dim: observation width (set from the data: the concatenated per-domain slot layout).
            action_dim: action width (set from the data: the concatenated per-domain slot layout).
            n_layer: transformer blocks.
            n_head: attention heads.
            n_embd: token width.
            context_length: K steps per window (2K tokens).
            dropout: embedding, attention and residual dropout.
            max_timestep: rows of the per-step timestep embedding.
            position_encoding: how tokens know their place in the window: relative_bias (a learned
                attention bias per layer, head and token offset), absolute (the reference's learned 2K-token
                table), rotary or step_type (models/positions.py).
            objectives: the objectives to train, each ``{class_path, init_args: {config, weight}}`` (the method
                preset, configs/methods/smart.yaml); an objective with weight 0 is left out. None: SMART's three.
            mask_actions: masked actions per window for RMHC; negative: the curriculum max(1, K(e+1)/E).
            mask_obs: masked observations per window; negative: the curriculum min(K/2, K(e+1)/E).
            lr: peak learning rate.
            weight_decay: AdamW weight decay on Linear/Conv weights only.
            betas: AdamW betas.
            lr_schedule: cosine (linear warmup, cosine decay) or constant (the original).
            warmup_ratio: fraction of all steps spent warming up.
            min_lr_ratio: final learning rate as a fraction of lr.
            compile: torch.compile the model (GPUs; slow to start).
            init_from: initialise matching weights from this checkpoint (the original --load_model_from).
            probe_windows: validation windows the representation probes fit and score each validation epoch
                (``val/probe_*``, lit/probes.py); 0 turns them off.
        """
        super().__init__()
        self.save_hyperparameters()
        if probe_windows < 0:
            raise ArgumentError(f"--model.probe_windows {probe_windows}: expected 0 (no probes) or a number of "
                                "validation windows, e.g. 512.")
        config = ControlTransformerConfig(obs_type=obs_type, obs_dim=obs_dim, action_dim=action_dim,
                                          n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                                          context_length=context_length, max_timestep=max_timestep, dropout=dropout,
                                          position_encoding=position_encoding)
        self.build_model(config, compile)
        for spec in SMART_OBJECTIVES if objectives is None else objectives:
            objective = build_objective(spec, n_embd, action_dim)
            if objective.weight > 0:
                self.add_objective(objective)
        if not self.objectives:
            raise ValueError("every objective weight is 0: nothing to train")
        if self.objective("masked_hindsight") is None:
            self.model.mask_token.requires_grad_(False)  # unused without masking; DDP rejects unused parameters
        if not any(o.uses_transformer for o in self.objectives.values()):
            # encoder-only objectives (MLR): the transformer and action tokens keep their initial weights
            for name, module in self.model.named_children():
                if name != "obs_encoder":
                    module.requires_grad_(False)
            for param in self.model.parameters(recurse=False):
                param.requires_grad_(False)
        if not any(o.uses_obs_encoder for o in self.objectives.values()):
            self.model.obs_encoder.requires_grad_(False)  # objectives with their own network (MAE): trunk unused
        rmhc = self.objective("masked_hindsight")
        if rmhc is not None:  # fixed sizes until the first epoch starts (the curriculum sets them per epoch)
            rmhc.mask_actions, rmhc.mask_obs = max(mask_actions, 1), max(mask_obs, 0)
        if init_from:
            load_weights(self, init_from)

    def setup(self, stage: str) -> None:
        """Observation statistics from the DataModule (its training split), before the first step."""
        dm = self.trainer.datamodule
        if not self.normalizes_obs or not hasattr(dm, "obs_stats"):
            return
        if dm.obs_stats is not None:
            source = f"the pretraining training split ({sum(dm.obs_stats.steps.values())} steps)"
        elif self.model.obs_normalizer.is_identity:
            source = "identity (--data.normalize_obs false)"
        else:
            source = f"--model.init_from {self.hparams.init_from} (--data.normalize_obs false keeps them)"
        self.use_obs_stats(dm.obs_stats, dm.obs_layout, source)

    def configure_callbacks(self) -> list:
        """The representation probes (lit/probes.py), unless ``probe_windows`` is 0."""
        windows = self.hparams.probe_windows
        return [RepresentationProbes(windows)] if windows > 0 else []

    def on_train_epoch_start(self) -> None:
        self._set_mask_sizes()

    def on_validation_epoch_start(self) -> None:
        self._set_mask_sizes()

    def _set_mask_sizes(self) -> None:
        rmhc = self.objective("masked_hindsight")
        if rmhc is None:
            return
        hp = self.hparams
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        auto_act, auto_obs = curriculum_mask_sizes(self.current_epoch, max_epochs, hp.context_length)
        rmhc.mask_actions = hp.mask_actions if hp.mask_actions >= 0 else auto_act
        rmhc.mask_obs = hp.mask_obs if hp.mask_obs >= 0 else auto_obs
        if self.trainer.training:
            self.log_dict({"train/mask_actions": float(rmhc.mask_actions), "train/mask_obs": float(rmhc.mask_obs)},
                          on_step=False, on_epoch=True, sync_dist=True)  # the same on every rank
