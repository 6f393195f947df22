"""Space-time cube masks of MLR (Yu et al. 2022; mlr_mwm.md §A.4): a clip of K frames is cut into K / block
temporal blocks and each frame into a grid x grid raster of cells; per block a fresh set of exactly
round(ratio * grid²) cells is hidden in every frame of the block and in every channel (frame stacks included).

Reference behaviour kept: 10 x 10 grid, ratio 0.5, nearest-neighbour upsampling of the cell grid to the frame,
the mask applied before augmentation (so cell borders move with a later random crop). Fixes:
- ``K % block != 0`` is a clear error; the reference built ``K // block`` blocks and crashed with its shipped
  configs (K = 7, block 8: no block at all; mlr_mwm.md §A.7.1).
- ``per_sample=True`` draws a mask per clip; the reference drew one per batch (§A.7.5), which stays the default
  for fidelity.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cube_cell_masks(batch_size: int, clip_len: int, block: int, grid: int = 10, ratio: float = 0.5,
                    per_sample: bool = False, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> Tensor:
    """Boolean (B, K, grid, grid) cell masks, True = hidden; constant within each temporal block of ``block``
    frames, exactly ``round(ratio * grid**2)`` hidden cells per frame. With ``per_sample=False`` every clip of the
    batch gets the same mask (the reference)."""
    if block <= 0 or clip_len % block:
        raise ValueError(f"the clip length K={clip_len} must be a multiple of the temporal block size {block} "
                         f"(MLR uses K=16 with blocks of 8, or 4 for cartpole and reacher)")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the mask ratio must be in [0, 1], got {ratio}")
    cells, blocks = grid * grid, clip_len // block
    hidden = round(ratio * cells)
    draws = batch_size if per_sample else 1
    scores = torch.rand(draws, blocks, cells, generator=generator, device=device)  # (D, nb, g²)
    order = scores.argsort(dim=-1)
    mask = torch.zeros(draws, blocks, cells, dtype=torch.bool, device=device)
    mask.scatter_(-1, order[..., :hidden], True)  # exactly `hidden` cells per block
    mask = mask.view(draws, blocks, 1, grid, grid).expand(draws, blocks, block, grid, grid)
    return mask.reshape(draws, clip_len, grid, grid).expand(batch_size, clip_len, grid, grid)


def apply_cube_masks(frames: Tensor, cell_masks: Tensor) -> Tensor:
    """Zero the hidden cells of ``frames`` (B, K, C, H, W) (any dtype, every channel) given ``cell_masks``
    (B, K, g, g); H and W must be multiples of g. Returns a new tensor."""
    H, W = frames.shape[-2:]
    g = cell_masks.shape[-1]
    if H % g or W % g:
        raise ValueError(f"frames of {H}x{W} pixels do not split into a {g}x{g} grid of equal cells")
    keep = ~cell_masks.repeat_interleave(H // g, dim=-2).repeat_interleave(W // g, dim=-1)  # (B, K, H, W)
    return frames * keep.unsqueeze(2).to(frames.dtype)  # (B, K, C, H, W)
