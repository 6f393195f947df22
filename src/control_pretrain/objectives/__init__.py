"""One class per training objective: SMART's pretraining objectives (objectives/smart/), MLR's masked latent
reconstruction (mlr_objective.py), MWM's masked autoencoder (mae_objective.py), BC and return-conditioned control (policy.py)."""

from .base import Objective, action_loss, combine_losses
from .mae_objective import MaskedAutoencoderObjective
from .mlr_objective import MaskedLatentReconstructionObjective, MLRObjectiveConfig
from .policy import BehaviorCloningObjective, ReturnConditionedConfig, ReturnConditionedObjective
from .smart import (
    ForwardDynamicsConfig,
    ForwardDynamicsObjective,
    InverseDynamicsConfig,
    InverseDynamicsObjective,
    MaskedHindsightControlConfig,
    MaskedHindsightControlObjective,
    curriculum_mask_sizes,
    pass_hidden,
)

__all__ = [
    "BehaviorCloningObjective",
    "ForwardDynamicsConfig",
    "ForwardDynamicsObjective",
    "InverseDynamicsConfig",
    "InverseDynamicsObjective",
    "MLRObjectiveConfig",
    "MaskedAutoencoderObjective",
    "MaskedHindsightControlConfig",
    "MaskedHindsightControlObjective",
    "MaskedLatentReconstructionObjective",
    "Objective",
    "ReturnConditionedConfig",
    "ReturnConditionedObjective",
    "action_loss",
    "combine_losses",
    "curriculum_mask_sizes",
    "pass_hidden",
]
