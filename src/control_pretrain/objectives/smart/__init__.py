"""SMART's three pretraining objectives and the pass cache they share (smart.md §2.5)."""

from .forward_dynamics import ForwardDynamicsConfig, ForwardDynamicsObjective
from .inverse_dynamics import InverseDynamicsConfig, InverseDynamicsObjective
from .masked_hindsight import MaskedHindsightControlConfig, MaskedHindsightControlObjective, curriculum_mask_sizes
from .passes import action_tokens, observation_tokens, pass_hidden, target_tokens

__all__ = [
    "ForwardDynamicsConfig",
    "ForwardDynamicsObjective",
    "InverseDynamicsConfig",
    "InverseDynamicsObjective",
    "MaskedHindsightControlConfig",
    "MaskedHindsightControlObjective",
    "action_tokens",
    "curriculum_mask_sizes",
    "observation_tokens",
    "pass_hidden",
    "target_tokens",
]
