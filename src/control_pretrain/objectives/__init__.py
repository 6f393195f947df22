"""One class per training objective: SMART's pretraining objectives (objectives/smart/), BC and return-conditioned
control (policy.py)."""

from .base import Objective, action_loss, combine_losses
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
    "MaskedHindsightControlConfig",
    "MaskedHindsightControlObjective",
    "Objective",
    "ReturnConditionedConfig",
    "ReturnConditionedObjective",
    "action_loss",
    "combine_losses",
    "curriculum_mask_sizes",
    "pass_hidden",
]
