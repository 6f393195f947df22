"""Reading checkpoints without running code stored in them (DESIGN.md: checkpoints from elsewhere never run code
unless the user says they trust them).

A ``.ckpt``/``.pt`` file is a pickle: unpickling it can call any function the file names. ``load_checkpoint``
reads with ``torch.load(weights_only=True)``, which rebuilds tensors, containers and primitives only, plus the
types in ``allowlist()``. Everything this project writes loads that way: Lightning checkpoints (weights, optimiser
and scheduler states, loop and callback states, hyperparameters as the CLI's plain dicts, ``model_config`` and the
DataModule's layouts as dicts), saved agents and snapshots (agents/tensors.py). A file that names anything else is
refused with a ``CheckpointError`` naming the file and what it holds; ``--trust_checkpoint`` (``trust=True``)
loads it with the full unpickler, for files from a source the user trusts.

The entry scripts set the process-wide default once from their command line (``trusting``); every read in between
(the CLI's read of the model sizes, the module's weights, Lightning's ``--ckpt_path`` resume and the report's
reload of the best checkpoint, lit/weights.py ``SafeCheckpointIO``) follows it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
from collections.abc import Iterator

from .errors import CheckpointError

log = logging.getLogger(__name__)

TRUST_FLAG = "--trust_checkpoint"
TRUST_HELP = ("load checkpoints (--load_model_from, --ckpt_path, --encoder_from) even if unpickling them can run "
              "code stored in the file; only for files from a source you trust. Without it such files are refused.")

_trust = False  # the process's default for load_checkpoint(trust=None); set by the entry scripts (``trusting``)


def allowlist() -> list[type]:
    """The non-tensor types a checkpoint may hold beyond what ``weights_only`` rebuilds by default. Each is a plain
    dataclass: rebuilding one sets its fields and calls nothing else.

    - ``MaskedReconstructionConfig``: the ``objective`` hyperparameter of an MTM or MaskDP module built in Python
      with a config object (benchmarks, tests) and saved by a Trainer before its hyperparameters were stored as a
      dict (lit/mtm_module.py); the CLI always stored a dict.
    """
    from .objectives.mtm import MaskedReconstructionConfig

    return [MaskedReconstructionConfig]


def trusted() -> bool:
    """The process's default: whether the command line said ``--trust_checkpoint``."""
    return _trust


def set_trust(enabled: bool) -> None:
    global _trust
    _trust = bool(enabled)


@contextlib.contextmanager
def trusting(enabled: bool) -> Iterator[None]:
    """``load_checkpoint(trust=None)`` trusts files inside this block iff ``enabled``; the previous default comes
    back afterwards (in-process runs, tests)."""
    saved = _trust
    set_trust(enabled)
    try:
        yield
    finally:
        set_trust(saved)


def load_checkpoint(path: str, trust: bool | None = None, *, refused_hint: str | None = None):
    """``torch.load(path)`` onto the CPU without running code: the weights-only unpickler with ``allowlist()``.

    trust: a file the weights-only unpickler refuses is loaded with the full unpickler instead (a warning names
        what it holds); None: the process's default (``trusting``). Files that need no trust never use it.
    refused_hint: what to do with a refused file, for files only this project writes (snapshots, saved agents),
        which no flag loads; None: pass ``--trust_checkpoint``.

    Raises ``CheckpointError`` for a missing, unreadable or refused file."""
    import torch

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file. Pass the path of a checkpoint written by a run.")
    try:
        with torch.serialization.safe_globals(allowlist()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = unsafe_globals(path, err)
        if not refused:
            raise CheckpointError(_unreadable(path, err)) from None
        if _trust if trust is None else trust:
            log.warning("%s holds %s: loading it with the full unpickler (%s), which runs any code stored in the "
                        "file", path, ", ".join(refused), TRUST_FLAG)
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
                raise CheckpointError(_unreadable(path, err)) from None
        what_to_do = refused_hint or (
            f"If the file comes from a source you trust (for example your own run of an older version), pass "
            f"{TRUST_FLAG} to load it anyway.")
        raise CheckpointError(
            f"{path}: not loaded, because the file holds {', '.join(refused)}, beyond the weights, settings and "
            "states this project's checkpoints contain, and unpickling that can run code stored in the file. "
            + what_to_do) from None
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise CheckpointError(_unreadable(path, err)) from None


def unsafe_globals(path: str, err: Exception | None = None) -> list[str]:
    """The functions and classes the file's pickle names beyond the weights-only defaults and ``allowlist()``, read
    without unpickling (or, for files torch cannot scan, the one ``err`` names)."""
    import torch

    allowed = {f"{t.__module__}.{t.__qualname__}" for t in allowlist()}
    try:
        found = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)) - allowed)
    except Exception:  # noqa: BLE001 - not a zip checkpoint: fall back to the unpickler's message
        found = []
    if not found and err is not None:
        named = re.search(r"GLOBAL ([\w.]+)", str(err)) or re.search(r"but got (<[^>]*>)", str(err))
        found = [named.group(1)] if named else []
    return found


def _unreadable(path: str, err: Exception) -> str:
    text = " ".join(str(err).split())
    named = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    reason = (named.group(1) if named else text)[:300]
    return (f"{path}: not a readable checkpoint ({type(err).__name__}: {reason}). Expected a file written by "
            "torch.save (a run's .ckpt, an agent's .pt); pass such a file instead.")
