"""Loading weights from a checkpoint into a (possibly different) module by explicit rules.

A pretraining checkpoint is never re-instantiated as the finetuning module (STYLE.md, LightningCLI note): its
``state_dict`` is read, and each parameter of the new module is either *loaded* (same name, same shape, not
excluded) or *re-initialised*; both lists are logged. This replaces the reference's ``load_my_checkpoint``
whose ``no_strict`` option did nothing (smart.md §3.3).

A finetuning run reads its pretraining checkpoint once (``read_pretrained``): the CLI takes the model sizes from
it, the module the observation layout and the state dict, from the same ``Pretrained``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from torch import nn

from ..data.slots import SlotLayout
from ..errors import CheckpointError
from ..models.control_transformer import stored_model_config
from ..safe_load import load_checkpoint, trusted

log = logging.getLogger(__name__)

# Must match between checkpoint and module for any trunk weight to make sense.
ARCHITECTURE_KEYS = ("obs_type", "n_embd", "n_layer", "n_head", "context_length", "position_encoding")
# Between two trunks of different kinds (the control transformer, "gpt", and the masked trajectory model, "mtm")
# only the token width and the observation kind must agree: their encoders and blocks load by name and shape,
# and the rest is re-initialised (both lists are logged).
SHARED_KEYS = ("obs_type", "n_embd", "n_head")
MTM_KEYS = ("obs_type", "n_embd", "n_head", "n_enc_layer", "n_dec_layer", "modalities", "step_bias")


def trunk_kind(config: dict) -> str:
    """'gpt' (the control transformer; its configs name no trunk) or the config's ``trunk``."""
    return config.get("trunk", "gpt")


# Settings a finetuning module takes from a checkpoint of its own trunk kind only, beyond the architecture keys.
SAME_TRUNK_DEFAULTS = {"gpt": ("max_timestep",), "mtm": ("context_length", "mae_split")}


def checkpoint_defaults(config: dict, module_trunk: str) -> dict:
    """The settings of a checkpoint's trunk that a finetuning module of kind ``module_trunk`` takes as defaults."""
    keys = architecture_keys(config, {"trunk": module_trunk})
    if trunk_kind(config) == module_trunk:
        keys += SAME_TRUNK_DEFAULTS[module_trunk]
    defaults = {k: _plain(config[k]) for k in keys if k in config}
    if module_trunk == "gpt" and trunk_kind(config) == "mtm" and "n_enc_layer" in config:
        defaults["n_layer"] = config["n_enc_layer"]  # causal finetuning of a masked checkpoint: its encoder blocks
    return defaults


def architecture_keys(theirs: dict, ours: dict) -> tuple[str, ...]:
    """The keys in which a checkpoint's config and ours must agree."""
    if trunk_kind(theirs) != trunk_kind(ours):
        return SHARED_KEYS
    return MTM_KEYS if trunk_kind(ours) == "mtm" else ARCHITECTURE_KEYS


def read_checkpoint(path: str) -> dict:
    """A Lightning checkpoint of this project, read without running code unless ``--trust_checkpoint`` was given
    (safe_load.py)."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint. Pass the path of a .ckpt written by a run.")
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: has no 'state_dict'; it is not a Lightning checkpoint of this project.")
    return ckpt


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reads (``--ckpt_path`` resume, ``trainer.test(ckpt_path=...)`` in the report) through
    ``load_checkpoint``: refused without ``--trust_checkpoint`` if unpickling could run code. Writing is
    Lightning's own."""

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        # map_location: the CPU (Lightning moves the states to the module's device); weights_only: the process's
        # --trust_checkpoint decides, not the caller.
        return load_checkpoint(str(path))


@dataclass(frozen=True)
class Pretrained:
    """What finetuning needs from a checkpoint: its sizes, its data's observation layout and its weights."""

    path: str
    model_config: dict
    state_dict: dict[str, torch.Tensor]
    obs_layout: SlotLayout | None  # None: not a multi-domain pretraining checkpoint
    action_layout: SlotLayout | None = None

    @classmethod
    def from_checkpoint(cls, path: str, ckpt: dict) -> Pretrained:
        # The pretraining DataModule stores its layouts in its own state (data/datamodules/pretrain.py).
        states = [s for s in ckpt.values() if isinstance(s, dict) and "obs_layout" in s]
        config = ckpt.get("model_config", {})
        return cls(path, stored_model_config(config) if trunk_kind(config) == "gpt" else config, ckpt["state_dict"],
                   SlotLayout.from_dict(states[0]["obs_layout"]) if states else None,
                   SlotLayout.from_dict(states[0]["action_layout"]) if states and "action_layout" in states[0]
                   else None)


_last_read: tuple[tuple, Pretrained] | None = None  # one entry: the CLI's read and the module's are the same file


def read_pretrained(path: str) -> Pretrained:
    """``read_checkpoint`` once per file version: a second call for the same unchanged file returns the same
    object (the CLI reads the sizes, then the module the weights). ``forget_pretrained`` drops it."""
    global _last_read
    if not os.path.exists(path):
        read_checkpoint(path)  # raises the clear error
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size, trusted())  # a refused file stays refused
    if _last_read is None or _last_read[0] != key:
        _last_read = (key, Pretrained.from_checkpoint(path, read_checkpoint(path)))
    return _last_read[1]


def forget_pretrained() -> None:
    """Release the cached checkpoint once its weights are loaded (they would otherwise stay in memory twice)."""
    global _last_read
    _last_read = None


def check_architecture(path: str, ckpt: dict, config: dict, what_to_do: str | None = None) -> None:
    """CheckpointError naming every ``ARCHITECTURE_KEYS`` value in which ``ckpt``'s model and ``config`` differ
    (a checkpoint older than a key counts with the value it was trained with, ``stored_model_config``)."""
    theirs = ckpt.get("model_config", {})
    if trunk_kind(theirs) == "gpt":
        theirs = stored_model_config(theirs)
    diffs = [f"{k}: checkpoint {theirs[k]!r}, this run {config[k]!r}" for k in architecture_keys(theirs, config)
             if k in theirs and k in config and _plain(theirs[k]) != _plain(config[k])]
    if diffs:
        raise CheckpointError(
            f"{path} does not fit this model ({'; '.join(diffs)}). " + (what_to_do or
            "Use the same --model.* sizes, --model.position_encoding and --obs_type as the pretraining run (they "
            "are in its config.yaml; older checkpoints used --model.position_encoding absolute), or train from "
            "scratch without --load_model_from.")
        )


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def load_weights(module: nn.Module, pretrained: Pretrained | str, exclude: Iterable[str] = (),
                 model_config: dict | None = None) -> tuple[list[str], list[str]]:
    """Copy every parameter/buffer of ``module`` whose name and shape match the checkpoint and which starts with
    none of the ``exclude`` prefixes. Returns (loaded, reinitialised) name lists, also logged."""
    if isinstance(pretrained, str):
        pretrained = read_pretrained(pretrained)
    path = pretrained.path
    if model_config is not None:
        check_architecture(path, {"model_config": pretrained.model_config}, model_config)
    source = pretrained.state_dict
    exclude = tuple(exclude)
    own = module.state_dict()
    loaded, reinit = [], []
    for name, value in own.items():
        if not isinstance(value, torch.Tensor):  # a module's extra state (the MAE's config): its own, never copied
            continue
        src = source.get(name)
        if name.startswith(exclude) or src is None or src.shape != value.shape:
            reinit.append(name)
        else:
            own[name] = src.to(value.dtype)
            loaded.append(name)
    module.load_state_dict(own)
    log.info("loaded %d tensors from %s: %s", len(loaded), path, ", ".join(_groups(loaded)))
    log.info("re-initialised %d tensors: %s", len(reinit), ", ".join(_groups(reinit)) or "none")
    return loaded, reinit


def _groups(names: list[str]) -> list[str]:
    """Compact listing: 'model.blocks.*' instead of every block parameter."""
    out: list[str] = []
    for n in names:
        parts = n.split(".")
        key = ".".join(parts[:2]) + ".*" if len(parts) > 2 else n
        if key not in out:
            out.append(key)
    return out
