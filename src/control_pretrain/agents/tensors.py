"""Saving agents and snapshots portably: every tensor on the CPU, so a GPU run's files load anywhere."""

from __future__ import annotations

import numpy as np
import torch


def to_cpu(obj):
    """``obj`` (nested dicts/lists/tuples of tensors and plain values) with every tensor on the CPU."""
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def rng_state_to_torch(state: dict) -> dict:
    """A numpy bit generator's state (``Generator.bit_generator.state``, ``RandomState.get_state(legacy=False)``)
    with its arrays as int64 tensors, so ``torch.load(weights_only=True)`` reads it back."""
    inner = {k: torch.from_numpy(v.astype(np.int64)) if isinstance(v, np.ndarray) else v
             for k, v in state["state"].items()}
    return {**state, "state": inner}


def rng_state_from_torch(state: dict) -> dict:
    """Inverse of ``rng_state_to_torch`` (MT19937 keys are uint32; PCG64 states hold plain ints)."""
    inner = {k: v.numpy().astype(np.uint32) if torch.is_tensor(v) else v for k, v in state["state"].items()}
    return {**state, "state": inner}
