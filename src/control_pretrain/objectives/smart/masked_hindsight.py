"""Random masked hindsight control (RMHC): recover masked actions from a bidirectional pass over the window
(SMART ``rand_inverse_pred``, smart.md §2.5, curriculum §2.7).

Reference: ``rand_mask_size`` action tokens and ``mask_obs_size`` observation tokens (from steps 1..K-2) have
their input embeddings set to -1; a fully bidirectional pass follows; head Linear(C, A); MSE on the masked
actions. Mask sizes grow each epoch (``curriculum_mask_sizes``).

Deviations:
- The prediction for a masked a_j is read at its own token, position 2j+1. The original read position j
  (smart.md §2.5 bug); ``original_read_positions=True`` reproduces that.
- Masked steps are drawn per sample instead of once for the whole batch.
- Masked inputs are replaced by the model's learned ``mask_token`` instead of the constant -1.
- The MSE averages over the sample's own action dims only (see objectives/base.py).
- The pass uses the trunk's positions, by default a relative-position attention bias: with the reference's absolute
  table this objective hardly learned (models/positions.py; docs/training.md, "RMHC ablation").
  ``position_encoding='absolute'`` on the trunk reproduces the reference.

``isolate_actions=True`` forbids action->action attention across steps in this pass, as yaak-ai/rmind does
(``models/masks.action_isolation_mask``); it did not help in the ablation, so it is off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...models.blocks import init_weights
from ...models.masks import action_isolation_mask, random_step_mask
from ...models.trunk import Trunk
from ..base import Objective, action_loss
from .passes import action_tokens, observation_tokens


def curriculum_mask_sizes(epoch: int, max_epochs: int, context_length: int) -> tuple[int, int]:
    """(mask_actions, mask_obs) for 0-based ``epoch`` of ``max_epochs`` (smart.md §2.7, multitask module):
    actions max(1, floor(K(e+1)/E)) (all K in the last epoch), observations min(K//2, that)."""
    grown = max(1, min(context_length, context_length * (epoch + 1) // max_epochs))
    return grown, min(context_length // 2, grown)


@dataclass
class MaskedHindsightControlConfig:
    mask_actions: int = 1  # action tokens masked per sample (the LightningModule may set a curriculum)
    mask_obs: int = 0  # observation tokens masked per sample, drawn from steps 1..K-2
    original_read_positions: bool = False  # reproduce the original bug: read a_j's prediction at position j
    isolate_actions: bool = False  # no action token attends to another step's action (yaak-ai/rmind)


class MaskedHindsightControlObjective(Objective):
    name = "masked_hindsight"

    def __init__(self, n_embd: int, action_dim: int, config: MaskedHindsightControlConfig | None = None, weight: float = 1.0):
        super().__init__(weight)
        self.config = config or MaskedHindsightControlConfig()
        self.mask_actions = self.config.mask_actions  # set per epoch by the training loop
        self.mask_obs = self.config.mask_obs
        self.head = nn.Linear(n_embd, action_dim)
        self.apply(init_weights)

    def sample_masks(self, batch_size: int, num_steps: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """Per-sample (B, K) bool masks of the action and observation tokens to hide."""
        act_replace = random_step_mask(batch_size, num_steps, self.mask_actions, device=device)
        # The first and last observations stay visible, as in the original.
        obs_replace = random_step_mask(batch_size, num_steps, self.mask_obs, 1, num_steps - 1, device=device)
        return act_replace, obs_replace

    def predict(
        self, model: Trunk, batch: dict[str, Tensor], cache: dict, act_replace: Tensor, obs_replace: Tensor
    ) -> Tensor:
        """Action predictions (B, K, A) for every step from one bidirectional pass with the given input masks."""
        obs, act = observation_tokens(model, batch, cache), action_tokens(model, batch, cache)
        K = act.shape[1]
        attn_mask = action_isolation_mask(K, act.device) if self.config.isolate_actions else None  # None: full
        hidden = model.forward_tokens(obs, act, batch["timesteps"], attn_mask, obs_replace, act_replace)  # (B, 2K, C)
        read = hidden[:, :K] if self.config.original_read_positions else hidden[:, 1::2]  # (B, K, C)
        return self.head(read)  # (B, K, A)

    def compute(self, model: Trunk, batch: dict[str, Tensor], cache: dict) -> dict[str, Tensor]:
        actions = batch["actions"]  # (B, K, A)
        act_replace, obs_replace = self.sample_masks(actions.shape[0], actions.shape[1], actions.device)
        pred = self.predict(model, batch, cache, act_replace, obs_replace)  # (B, K, A)
        return {"loss": action_loss(pred, actions, batch.get("action_mask"), act_replace)}
