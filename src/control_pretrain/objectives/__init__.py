"""One class per training objective (SMART pretraining objectives, BC and return-conditioned control)."""

from .base import Objective, action_loss, combine_losses, pass_hidden
from .forward_dynamics import ForwardDynamicsConfig, ForwardDynamicsObjective
from .inverse_dynamics import InverseDynamicsConfig, InverseDynamicsObjective
from .masked_hindsight import MaskedHindsightControlConfig, MaskedHindsightControlObjective, curriculum_mask_sizes
from .policy import BehaviorCloningConfig, BehaviorCloningObjective, ReturnConditionedConfig, ReturnConditionedObjective

__all__ = [
    "BehaviorCloningConfig",
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
