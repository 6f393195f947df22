"""MWM's masked autoencoder (Seo et al., CoRL 2022; reference: mlr_mwm.md §B.2, code ``mwm/common/mae.py``):
early-conv tokens of a frame, 75% of them dropped, a ViT encoder over the rest, a ViT decoder that reconstructs
every 8x8 pixel patch and, from one extra token, the step's reward. Written from the spec, not ported.

Used twice: as the offline objective ``--method mae`` (objectives/mae_objective.py) and, loaded with
``load_mae_from_checkpoint``, as the frozen or trained feature extractor of a world model (``features``: the
unmasked encoder tokens, CLS first).

Kept from the reference: 64 px frames scaled to [0,1] and ImageNet-standardised (``imagenet_norm``); early conv of
three 4x4 stride-2 SAME convs (embed/8, /4, /2 channels, ReLU) and a 1x1 conv to the width, i.e. an 8x8 grid of
tokens (``early_conv=False``: plain 8x8 patch embedding, the paper's pixel-masking ablation); fixed 2-D sin-cos
positions added before masking; an independent random mask per frame, exactly round((1 - ratio) N) tokens kept,
ratio 0 keeps every token in order; [CLS] first; 4 encoder and 3 decoder pre-LN blocks of width 256, 4 heads, MLP
4x, qkv bias, LayerNorm eps 1e-6, a final LayerNorm on each side; a Linear into the decoder, a learned mask token
at the dropped positions, one more token for the reward that reuses the mask token; a Linear head to an
8*8*3 patch per token; pixel MSE over **all** patches (``masked_loss_only=False``, the reference) in the
standardised input space, no norm-pix; reward MSE in symlog space with weight 1.

Deviations (each a choice of this port):
- frames of another size (our datasets store 84 px) are brought to ``image_size`` by area resizing
  (``resize="area"``, mlr_mwm.md §D.1) or a centre crop (``resize="center_crop"``); the reference renders 64 px.
- the reward is read from the reward token's hidden state (``reward_wiring="token"``). The reference reads it
  from the last reconstructed pixel patch (B.8 #2, a bug); ``reward_wiring="patch"`` reproduces that.
- the reward token gets a zero position embedding (as [CLS]); §B.2 does not say what the reference adds.
- the blocks are the project's shared pre-LN ``Block`` (models/blocks.py), GELU MLP; weights are Xavier-uniform
  (Keras' default, which the TF reference inherits), learned tokens N(0, 0.02).
- the config travels inside the state dict (``get_extra_state``), so any checkpoint that holds the weights can
  rebuild the model, and a loaded checkpoint of another architecture is refused by name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError
from .blocks import Block
from .positions import sincos_2d

PATCH = 8  # pixels per token side: three stride-2 convs, or the 8x8 patch embedding
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Fields that only change the loss; a checkpoint trained with other values loads into this model.
TRAINING_FIELDS = ("mask_ratio", "masked_loss_only", "reward_loss_scale")


@dataclass
class MAEConfig:
    """Defaults are the paper's (≈5.9M parameters); ``MAEConfig.tiny()`` is the CPU size."""

    image_size: int = 64  # the MAE's working resolution (a multiple of 8); other frames are resized to it
    resize: str = "area"  # how frames of another size reach image_size: area (interpolation) or center_crop
    early_conv: bool = True  # False: plain 8x8 patch embedding (pixel masking, the paper's ablation)
    embed_dim: int = 256
    encoder_depth: int = 4
    decoder_dim: int = 256
    decoder_depth: int = 3
    n_head: int = 4
    mlp_ratio: int = 4
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    mask_ratio: float = 0.75  # fraction of tokens dropped per frame in ``loss``
    reward_token: bool = True  # an extra decoder token predicts the step's reward
    reward_wiring: str = "token"  # token: read the reward token (fixed); patch: the last pixel patch (reference bug)
    imagenet_norm: bool = True  # standardise [0,1] pixels with ImageNet mean/std (reference); False: keep [0,1]
    masked_loss_only: bool = False  # False: pixel loss on all patches (reference); True: masked ones only (MAE)
    reward_loss_scale: float = 1.0

    @classmethod
    def tiny(cls, **overrides) -> MAEConfig:
        """Width 128, 2 encoder + 1 decoder blocks (≈0.7M parameters)."""
        return cls(**{"embed_dim": 128, "decoder_dim": 128, "encoder_depth": 2, "decoder_depth": 1, **overrides})

    def __post_init__(self) -> None:
        if self.image_size % PATCH:
            raise ValueError(f"MAE image_size {self.image_size}: must be a multiple of {PATCH}, e.g. 64")
        if self.resize not in ("area", "center_crop"):
            raise ValueError(f"MAE resize {self.resize!r}: expected 'area' or 'center_crop'")
        if self.reward_wiring not in ("token", "patch"):
            raise ValueError(f"MAE reward_wiring {self.reward_wiring!r}: expected 'token' or 'patch'")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"MAE mask_ratio {self.mask_ratio}: expected 0 <= ratio < 1")
        for width in (self.embed_dim, self.decoder_dim):
            if width % 8 or width % self.n_head:  # early conv channels width/8; 2-D sin-cos needs width % 4
                raise ValueError(f"MAE width {width}: must be divisible by 8 and by n_head={self.n_head}")


def symlog(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def patchify(images: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, N, 8*8*3) row-major patches, each (row, column, channel)."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // PATCH, PATCH, W // PATCH, PATCH)  # (B, C, h, p, w, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // PATCH) * (W // PATCH), PATCH * PATCH * C)  # (B, N, P)


def random_masking(tokens: Tensor, ratio: float, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Keep round((1 - ratio) N) random tokens of each sample (MAE's per-sample shuffle; MWM's "tube" mask with
    T = 1). tokens (B, N, D) -> kept (B, n, D), mask (B, N) with 1 = dropped, ids_restore (B, N) that un-shuffles
    [kept, dropped] back to the original order. Ratio 0 keeps every token in its order."""
    B, N, D = tokens.shape
    n_keep = round((1.0 - ratio) * N)
    if n_keep == N:  # identity, without a shuffle (the world model's unmasked path)
        ids_shuffle = torch.arange(N, device=tokens.device).expand(B, N)  # (B, N)
    else:
        noise = torch.rand(B, N, device=tokens.device, generator=generator)  # (B, N)
        ids_shuffle = noise.argsort(dim=1)  # (B, N) ascending noise: the first n_keep are kept
    ids_restore = ids_shuffle.argsort(dim=1)  # (B, N)
    kept = tokens.gather(1, ids_shuffle[:, :n_keep, None].expand(B, n_keep, D))  # (B, n, D)
    mask = torch.ones(B, N, device=tokens.device)
    mask[:, :n_keep] = 0
    return kept, mask.gather(1, ids_restore), ids_restore  # (B, n, D), (B, N), (B, N)


def _blocks(width: int, depth: int, cfg: MAEConfig) -> nn.ModuleList:
    blocks = nn.ModuleList(Block(width, cfg.n_head, 0.0, cfg.mlp_ratio, cfg.qkv_bias) for _ in range(depth))
    for block in blocks:  # the shared Block builds LayerNorms with PyTorch's eps 1e-5; the reference uses 1e-6
        block.ln_1.eps = block.ln_2.eps = cfg.ln_eps
    return blocks


class ConvMaskedAutoencoder(nn.Module):
    """MWM's MAE. Frames are uint8 (B, 3, H, W); ``encode``/``features`` give tokens (B, 1 + kept, D), CLS
    first; ``loss`` trains it."""

    random_masking = staticmethod(random_masking)

    def __init__(self, config: MAEConfig | None = None):
        super().__init__()
        self.config = cfg = config or MAEConfig()
        D, Dd = cfg.embed_dim, cfg.decoder_dim
        self.grid = cfg.image_size // PATCH
        self.num_patches = self.grid**2
        self.embed_dim = D
        if cfg.early_conv:
            self.patch_embed = nn.Sequential(
                nn.Conv2d(3, D // 8, 4, 2, 1), nn.ReLU(),  # padding 1 = TF's SAME for k4 s2 on even sizes
                nn.Conv2d(D // 8, D // 4, 4, 2, 1), nn.ReLU(),
                nn.Conv2d(D // 4, D // 2, 4, 2, 1), nn.ReLU(),
                nn.Conv2d(D // 2, D, 1),
            )
        else:
            self.patch_embed = nn.Sequential(nn.Conv2d(3, D, PATCH, PATCH))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.encoder_blocks = _blocks(D, cfg.encoder_depth, cfg)
        self.encoder_norm = nn.LayerNorm(D, eps=cfg.ln_eps)
        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.decoder_blocks = _blocks(Dd, cfg.decoder_depth, cfg)
        self.decoder_norm = nn.LayerNorm(Dd, eps=cfg.ln_eps)
        self.decoder_pred = nn.Linear(Dd, PATCH * PATCH * 3)
        if cfg.reward_token:
            self.reward_head = nn.Linear(Dd if cfg.reward_wiring == "token" else PATCH * PATCH * 3, 1)
        # Fixed positions (not stored): patches only in the encoder; [CLS] (and the reward token) get zeros.
        self.register_buffer("pos_embed", sincos_2d(self.grid, self.grid, D)[None], persistent=False)  # (1, N, D)
        self.register_buffer("decoder_pos_embed", sincos_2d(self.grid, self.grid, Dd)[None], persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.apply(_init)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    # ---- inputs ------------------------------------------------------------------------------------------------
    def pixels01(self, frames: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> float (B, 3, S, S) in [0, 1] at the working size S."""
        if frames.dtype != torch.uint8:
            raise TypeError(f"the MAE reads uint8 frames (B, 3, H, W), got {frames.dtype}")
        x = frames.float() / 255.0  # (B, 3, H, W)
        S = self.config.image_size
        if x.shape[-2:] == (S, S):
            return x
        if self.config.resize == "area":
            return F.interpolate(x, size=(S, S), mode="area")  # (B, 3, S, S)
        top, left = (x.shape[-2] - S) // 2, (x.shape[-1] - S) // 2
        if top < 0 or left < 0:
            raise ValueError(f"center_crop to {S} px needs frames at least that large, got {tuple(x.shape[-2:])}")
        return x[..., top : top + S, left : left + S]  # (B, 3, S, S)

    def normalize(self, pixels01: Tensor) -> Tensor:
        return (pixels01 - self.pixel_mean) / self.pixel_std if self.config.imagenet_norm else pixels01

    # ---- encoder -----------------------------------------------------------------------------------------------
    def embed(self, images: Tensor) -> Tensor:
        """Standardised images (B, 3, S, S) -> position-embedded tokens (B, N, D), before masking."""
        return self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)

    def forward_encoder(self, frames: Tensor, mask_ratio: float, generator: torch.Generator | None = None
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """uint8 frames (B, 3, H, W) -> latent (B, 1 + n, D), mask (B, N) (1 = dropped), ids_restore (B, N)."""
        return self._encode_images(self.normalize(self.pixels01(frames)), mask_ratio, generator)

    def _encode_images(self, images: Tensor, mask_ratio: float, generator: torch.Generator | None
                       ) -> tuple[Tensor, Tensor, Tensor]:
        tokens = self.embed(images)  # (B, N, D)
        kept, mask, ids_restore = random_masking(tokens, mask_ratio, generator)  # (B, n, D), (B, N), (B, N)
        x = torch.cat([self.cls_token.expand(len(kept), -1, -1), kept], dim=1)  # (B, 1 + n, D)
        for block in self.encoder_blocks:
            x = block(x)  # (B, 1 + n, D)
        return self.encoder_norm(x), mask, ids_restore  # (B, 1 + n, D), (B, N), (B, N)

    def encode(self, frames: Tensor, mask_ratio: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """uint8 frames (B, 3, H, W) -> encoder tokens (B, 1 + kept, D), CLS first; ratio 0: all N in order."""
        return self.forward_encoder(frames, mask_ratio, generator)[0]

    def features(self, frames: Tensor) -> Tensor:
        """The unmasked encoder tokens (B, 1 + N, D) a world model reads; detaching them is the caller's choice
        (MWM stops their gradient, §B.3)."""
        return self.encode(frames, 0.0)

    # ---- decoder -----------------------------------------------------------------------------------------------
    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> tuple[Tensor, Tensor | None]:
        """latent (B, 1 + n, D), ids_restore (B, N) -> patch predictions (B, N, 192) in the standardised space,
        and the reward prediction (B,) in symlog space (None without a reward token)."""
        cfg = self.config
        x = self.decoder_embed(latent)  # (B, 1 + n, Dd)
        B, N, Dd = len(x), ids_restore.shape[1], x.shape[-1]
        patches = torch.cat([x[:, 1:], self.mask_token.expand(B, N + 1 - x.shape[1], Dd)], dim=1)  # (B, N, Dd)
        patches = patches.gather(1, ids_restore[:, :, None].expand(B, N, Dd)) + self.decoder_pos_embed  # un-shuffle
        tokens = [x[:, :1], patches]  # [CLS], the N patches in grid order
        if cfg.reward_token:
            tokens.append(self.mask_token.expand(B, 1, Dd))  # the reward token reuses the mask token (§B.2)
        x = torch.cat(tokens, dim=1)  # (B, 1 + N (+ 1), Dd)
        for block in self.decoder_blocks:
            x = block(x)  # (B, 1 + N (+ 1), Dd)
        x = self.decoder_norm(x)  # (B, 1 + N (+ 1), Dd)
        pred = self.decoder_pred(x[:, 1 : 1 + N])  # (B, N, 192)
        if not cfg.reward_token:
            return pred, None
        # token: the reward token's hidden state; patch: the reference's read-out of the bottom-right patch's
        # reconstruction (B.8 #2), where the reward token only acts through attention.
        source = x[:, -1] if cfg.reward_wiring == "token" else pred[:, -1]  # (B, Dd) or (B, 192)
        return pred, self.reward_head(source).squeeze(-1)  # (B, N, 192), (B,)

    # ---- loss --------------------------------------------------------------------------------------------------
    def loss(self, frames: Tensor, rewards: Tensor | None = None, generator: torch.Generator | None = None,
             mask_ratio: float | None = None) -> dict[str, Tensor]:
        """One MAE loss on uint8 frames (B, 3, H, W) and their rewards (B,) (None: no reward term). Returns
        ``loss`` (pixel + scale * reward), ``pixel_loss``, ``reward_loss`` (symlog MSE) and ``masked_psnr`` (dB,
        on the dropped patches in [0, 1] pixels; all patches at ratio 0), the last one detached."""
        cfg = self.config
        pixels = self.pixels01(frames)  # (B, 3, S, S)
        images = self.normalize(pixels)  # (B, 3, S, S)
        ratio = cfg.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self._encode_images(images, ratio, generator)  # (B, 1 + n, D), (B, N), (B, N)
        pred, reward = self.forward_decoder(latent, ids_restore)  # (B, N, 192), (B,)
        target = patchify(images)  # (B, N, 192): the reference reconstructs the standardised input
        per_patch = (pred - target).square().mean(-1)  # (B, N)
        pixel_loss = (per_patch * mask).sum() / mask.sum() if cfg.masked_loss_only else per_patch.mean()
        reward_loss = pred.new_zeros(())
        if rewards is not None and reward is not None:
            reward_loss = (reward - symlog(rewards.to(reward.dtype))).square().mean()
        with torch.no_grad():
            scored = mask if mask.sum() > 0 else torch.ones_like(mask)  # (B, N)
            pixel_err = (self.denormalize_patches(pred).clamp(0, 1) - patchify(pixels)).square().mean(-1)  # (B, N)
            mse = (pixel_err * scored).sum() / scored.sum()
            psnr = -10.0 * torch.log10(mse.clamp_min(1e-10))
        return {"loss": pixel_loss + cfg.reward_loss_scale * reward_loss, "pixel_loss": pixel_loss,
                "reward_loss": reward_loss, "masked_psnr": psnr}

    def denormalize_patches(self, patches: Tensor) -> Tensor:
        """Standardised patches (B, N, 192) -> [0, 1]-scale pixels (unclamped), channel last as ``patchify``."""
        if not self.config.imagenet_norm:
            return patches
        mean, std = self.pixel_mean.view(3), self.pixel_std.view(3)
        return (patches.unflatten(-1, (PATCH * PATCH, 3)) * std + mean).flatten(-2)  # (B, N, 192)

    # ---- the config inside the state dict ----------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {"mae_config": asdict(self.config)}

    def set_extra_state(self, state: dict) -> None:
        theirs = state.get("mae_config", {}) if isinstance(state, dict) else {}
        ours = asdict(self.config)
        diffs = [f"{k}: checkpoint {theirs.get(k)!r}, this model {v!r}" for k, v in ours.items()
                 if k not in TRAINING_FIELDS and theirs.get(k) != v]
        if diffs:
            raise CheckpointError(f"the MAE weights to load were trained with another architecture ({'; '.join(diffs)}"
                                  "). Build the model from the checkpoint's config: load_mae_from_checkpoint(path).")


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight.flatten(1) if isinstance(module, nn.Conv2d) else module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def load_mae_from_checkpoint(path: str, freeze: bool = True) -> ConvMaskedAutoencoder:
    """The MAE of a ``--method mae`` Lightning checkpoint (or of any file holding an MAE's state dict, alone or
    under ``state_dict``), rebuilt from the config stored with its weights. ``freeze``: no gradients, eval mode.
    Read with ``weights_only=True``: no code is unpickled. Raises CheckpointError for a missing or unusable file."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint. Pass the .ckpt of a `dmc_pretrain.py --method mae` "
                              "run (its checkpoints/last.ckpt).") from None
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first_line}).") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    prefixes = [k[: -len("_extra_state")] for k, v in state.items()
                if k.endswith("_extra_state") and isinstance(v, dict) and "mae_config" in v]
    if len(prefixes) != 1:
        found = "no MAE" if not prefixes else f"{len(prefixes)} MAEs ({', '.join(p or '<root>' for p in prefixes)})"
        raise CheckpointError(f"{path} holds {found}; expected the checkpoint of one `dmc_pretrain.py --method mae` "
                              "run.")
    prefix = prefixes[0]
    config = state[prefix + "_extra_state"]["mae_config"]
    try:
        mae = ConvMaskedAutoencoder(MAEConfig(**{f.name: config[f.name] for f in fields(MAEConfig) if f.name in config}))
        mae.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    except (RuntimeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its MAE weights do not load ({err}).") from None
    if freeze:
        mae.requires_grad_(False).eval()
    return mae

