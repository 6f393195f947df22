"""MWM's masked autoencoder as an offline pretraining objective on the pipeline's pixel windows (issue 18,
mlr_mwm.md §D.3): ``--method mae`` (configs/methods/mae.yaml) trains a ``ConvMaskedAutoencoder`` (models/mae.py,
which lists what is kept from the reference and every deviation) on every frame of each window, with the step's
reward as the reward token's target. The objective owns its MAE; SMART's trunk, built by the module as for every
method, is neither read nor trained (``uses_transformer`` and ``uses_obs_encoder`` are False, so the module
freezes it). The trained MAE is read back with ``models.mae.load_mae_from_checkpoint``.

Deviation forced by the data: a window of T frames gives T - 1 MAE samples. Our files store with each step the
reward that *followed* its action (docs DESIGN, dataset table); MWM's replay (DreamerV2's) stores with a frame the
reward received on *arriving* at it, which a single frame can show (dm_control rewards are functions of the state
reached). So frame t + 1 is paired with ``rewards[t]`` and the window's first frame is left out.
"""

from __future__ import annotations

from torch import Tensor

from ..models.mae import ConvMaskedAutoencoder, MAEConfig
from ..models.trunk import Trunk
from .base import Objective


class MaskedAutoencoderObjective(Objective):
    name = "mae"
    uses_transformer = False
    uses_obs_encoder = False

    def __init__(self, n_embd: int, action_dim: int, config: MAEConfig | None = None, weight: float = 1.0):
        """n_embd, action_dim: the trunk's sizes (unused: the MAE has its own width and reads no actions)."""
        super().__init__(weight)
        self.config = config or MAEConfig()
        self.mae = ConvMaskedAutoencoder(self.config)

    def compute(self, model: Trunk, batch: dict[str, Tensor], cache: dict) -> dict[str, Tensor]:
        if "pixels" not in batch:
            raise ValueError("the MAE objective reconstructs frames: it needs --model.obs_type pixels")
        frames = batch["pixels"][:, 1:]  # (B, T - 1, 3, H, W): frame t + 1 is where rewards[t] arrived
        if frames.shape[1] == 0:
            raise ValueError("the MAE pairs frame t + 1 with rewards[t]: it needs windows of at least 2 steps "
                             "(--model.context_length)")
        rewards = batch["rewards"][:, :-1] if self.config.reward_token else None  # (B, T - 1)
        out = self.mae.loss(frames.flatten(0, 1), None if rewards is None else rewards.flatten(0, 1))
        return {"loss": out["loss"], "metrics": {k: out[k] for k in ("pixel_loss", "reward_loss", "masked_psnr")}}
