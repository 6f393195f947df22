"""Convert a replay buffer in the original SMART release layout into one dataset file (DESIGN.md ``import-smart``).

Reference behaviour (smart.md §1.1-1.5): a buffer lives in
``{rand,full}collect_{domain}_{task}/{domain}_{task}_s{id}/{domain}_{task}_s{id}/buffer/`` as chunks
``{start}_{end}.pt``, each a ``torch.save`` of a list of 7 numpy arrays (obs, next_obs, actions, rewards,
not_dones, physics states, pixels) covering buffer rows [start, end). The reference loader unpickles them with
full pickle (arbitrary code execution on a hostile file), pre-allocates every array at full capacity, and splits
episodes with a hard-coded length of 250 because ``not_dones`` is 1 almost everywhere.

What this importer does instead:

- Chunks are loaded with ``torch.load(weights_only=True)`` and an allowlist of exactly the numpy globals needed to
  rebuild plain arrays (numpy 1.x and 2.x pickle names). Anything else is refused unless ``trust_pickle=True``.
- Chunks are streamed one at a time; the unfinished episode at a chunk's end is carried over to the next one.
- Episode boundaries come from the data: an episode ends at row i when ``next_obs[i] != obs[i + 1]`` (the
  environment was reset) or ``not_dones[i] == 0``. Only when ``next_obs`` carries no information (all zeros) or
  shows no reset within several episode lengths does it fall back to fixed episodes of ``episode_len`` steps
  (default ``1000 // action_repeat``), with a logged warning.
- DMC episodes end by time limit only, so every episode end is a timeout, except where ``not_dones == 0`` ends
  an episode shorter than the typical length: that is a true termination (``terminals`` true there).
- A final segment is kept only if its length equals the most common episode length; otherwise it is dropped
  with a logged warning, so the file holds whole episodes only. Likewise a buffer whose first chunk does not
  start at row 0 loses its first segment unless that has the typical length.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from ...envs.dmc import CAMERA_BY_DOMAIN, available_tasks, check_task, make_env
from ...errors import DatasetError, EnvSpecError
from ..schema import DatasetInfo, validate
from ..writer import TrajectoryWriter

logger = logging.getLogger(__name__)

FIELDS = ("obs", "next_obs", "actions", "rewards", "not_dones", "physics", "pixels")
POLICY_BY_PREFIX = {"rand": "random", "full": "sac"}
_CHUNK_RE = re.compile(r"^(\d+)_(\d+)\.pt$")
_RUN_RE = re.compile(r"^(.+)_s(\d+)$")
_KIND_RE = re.compile(r"^(rand|full)collect_(.+)$")
# Resets are looked for over this many typical episode lengths before falling back to fixed-length episodes;
# the same bound caps the unfinished tail that is carried between chunks.
_LONGEST = 8
# dtypes a plain SMART chunk may contain; each needs its dtype class allowlisted for the unpickler.
_PLAIN_DTYPES = (np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
                 np.float16, np.float32, np.float64)


# ----------------------------------------------------------------------------------------------------- paths
@dataclass(frozen=True)
class SmartPath:
    """What the folder names say about a buffer; ``None`` where they say nothing."""

    domain: str | None
    task: str | None
    replay_id: int | None
    policy: str  # "random" (randcollect), "sac" (fullcollect) or "unknown"


def split_domain_task(name: str, tasks: dict[str, list[str]] | None = None) -> tuple[str, str] | None:
    """``'ball_in_cup_catch'`` -> ``('ball_in_cup', 'catch')``, matched against the known dm_control tasks, so
    underscores inside domain or task names split correctly. ``None`` if no known task matches."""
    tasks = available_tasks() if tasks is None else tasks
    for domain in sorted(tasks, key=len, reverse=True):
        for task in tasks[domain]:
            if name == f"{domain}_{task}":
                return domain, task
    return None


def parse_smart_path(path: str, tasks: dict[str, list[str]] | None = None) -> SmartPath:
    """Domain, task, replay id and policy from a path in the SMART layout (``..._s{id}`` and
    ``{rand,full}collect_...`` folders, searched from the deepest one up)."""
    parts = [p for p in os.path.normpath(os.path.abspath(path)).split(os.sep) if p]
    domain = task = replay_id = None
    policy = "unknown"
    for part in reversed(parts):
        run = _RUN_RE.match(part)
        if run and replay_id is None:
            replay_id = int(run.group(2))
            pair = split_domain_task(run.group(1), tasks)
            if pair is None:  # unknown names: split at the first underscore so check_task can say what exists
                head, _, tail = run.group(1).partition("_")
                pair = (head, tail)
            domain, task = pair
        kind = _KIND_RE.match(part)
        if kind and policy == "unknown":
            policy = POLICY_BY_PREFIX[kind.group(1)]
            if domain is None:
                pair = split_domain_task(kind.group(2), tasks)
                if pair is not None:
                    domain, task = pair
    return SmartPath(domain, task, replay_id, policy)


def find_buffer(src: str) -> str:
    """The folder holding the ``{start}_{end}.pt`` chunks: ``src`` itself, or the one ``buffer/`` folder below."""
    if not os.path.isdir(src):
        raise DatasetError(
            f"{src}: no such folder. Pass --src the buffer folder of a SMART release "
            "(.../{rand,full}collect_{domain}_{task}/{domain}_{task}_s{id}/{domain}_{task}_s{id}/buffer/) "
            "or a folder above it."
        )
    if any(_CHUNK_RE.match(f) for f in os.listdir(src)):
        return src
    found = sorted(root for root, _, files in os.walk(src)
                   if os.path.basename(root) == "buffer" and any(f.endswith(".pt") for f in files))
    if not found:
        raise DatasetError(
            f"{src}: no buffer folder with {{start}}_{{end}}.pt chunks in it or below it. Point --src at the "
            "buffer/ folder of a SMART release or at a folder above exactly one such buffer."
        )
    if len(found) > 1:
        shown = "; ".join(found[:5]) + ("; ..." if len(found) > 5 else "")
        raise DatasetError(
            f"{src}: {len(found)} buffer folders below it ({shown}). One import converts one buffer: "
            "point --src at the one you want."
        )
    return found[0]


def list_chunks(buffer: str) -> list[tuple[int, int, str]]:
    """``(start, end, path)`` of every chunk, sorted and checked to cover contiguous rows."""
    chunks = []
    for name in os.listdir(buffer):
        match = _CHUNK_RE.match(name)
        if match:
            chunks.append((int(match.group(1)), int(match.group(2)), os.path.join(buffer, name)))
        elif name.endswith(".pt"):
            raise DatasetError(
                f"{os.path.join(buffer, name)}: not a chunk name of the SMART layout ({{start}}_{{end}}.pt). "
                "Move it out of the buffer folder."
            )
    if not chunks:
        raise DatasetError(f"{buffer}: no {{start}}_{{end}}.pt chunks in this folder; nothing to import.")
    chunks.sort()
    for (_, e0, p0), (s1, _, p1) in pairwise(chunks):
        if s1 != e0:
            what = f"rows {e0}..{s1 - 1} are missing" if s1 > e0 else f"rows {s1}..{e0 - 1} appear twice"
            raise DatasetError(
                f"{buffer}: chunks are not contiguous: {what} between {os.path.basename(p0)} and "
                f"{os.path.basename(p1)}. Restore the missing chunk (or remove the duplicate) and import again."
            )
    for start, end, path in chunks:
        if end <= start:
            raise DatasetError(f"{path}: the name says rows [{start}, {end}), which is empty; remove the file.")
    return chunks


# ----------------------------------------------------------------------------------------------------- loading
def _numpy_safe_globals() -> list:
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy's _reconstruct, whatever module this numpy keeps it in
    return [
        (reconstruct, "numpy._core.multiarray._reconstruct"),  # pickled by numpy >= 2
        (reconstruct, "numpy.core.multiarray._reconstruct"),  # pickled by numpy 1.x
        np.ndarray,
        np.dtype,
        bytes,  # the (empty) data of a zero-row array
        *{type(np.dtype(t)) for t in _PLAIN_DTYPES},
    ]


def load_chunk(path: str, trust_pickle: bool = False):
    """Unpickle one chunk. Without ``trust_pickle`` nothing but plain numpy arrays can be rebuilt, so a hostile
    file cannot run code; anything else is refused with a DatasetError."""
    import pickle

    import torch

    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # The weights-only unpickler names the refused global ("... GLOBAL module.name ...") or type to build.
        msg = str(err)
        if not trust_pickle and re.search(r"\bGLOBAL\b|Can only build", msg):
            refused = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"but got (<[^>]*>)", msg)
            name = f" ({refused.group(1)})" if refused else ""
            raise DatasetError(
                f"{path}: the file contains objects beyond plain numpy arrays{name}, so it was not loaded. "
                "Loading it with --trust-pickle would execute code stored in the file: do that only for files "
                "from a source you trust."
            ) from None
        raise DatasetError(_corrupt(path, err)) from None
    except DatasetError:
        raise
    except Exception as err:  # noqa: BLE001 - any other failure to read a chunk means a damaged chunk
        raise DatasetError(_corrupt(path, err)) from None


def _corrupt(path: str, err: Exception) -> str:
    detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    return (f"{path}: the chunk cannot be read ({detail}); it is damaged or not a torch.save file. "
            "Download or copy it again (chunks must stay contiguous, so it cannot simply be left out).")


@dataclass(frozen=True)
class _Dims:
    obs: int
    action: int
    state: int
    label: str  # "domain/task", for messages


def check_chunk(content, path: str, start: int, end: int, dims: _Dims,
                pixel_shape: tuple[int, ...] | None) -> dict[str, np.ndarray]:
    """The 7 arrays of a chunk by name, float fields as float32; DatasetError on anything unexpected."""
    if not isinstance(content, (list, tuple)) or len(content) != len(FIELDS):
        what = f"a {type(content).__name__}" + (f" of {len(content)} items" if isinstance(content, (list, tuple))
                                               else "")
        raise DatasetError(
            f"{path}: holds {what}, expected a list of 7 numpy arrays ({', '.join(FIELDS)}); "
            "it is not a chunk of a SMART buffer."
        )
    n = end - start
    expected = {"obs": (n, dims.obs), "next_obs": (n, dims.obs), "actions": (n, dims.action),
                "rewards": (n, 1), "not_dones": (n, 1), "physics": (n, dims.state),
                "pixels": f"({n}, {', '.join(map(str, pixel_shape))})" if pixel_shape else f"({n}, 3, H, W)"}
    out = {}
    for field, value in zip(FIELDS, content, strict=True):
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            kind = f"an array of dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
            raise DatasetError(
                f"{path}: item '{field}' is {kind}, expected a numeric numpy array; "
                "it is not a chunk of a SMART buffer."
            )
        shape = value.shape
        if field in ("rewards", "not_dones") and shape == (n,):
            value = value.reshape(n, 1)
        elif field == "pixels":
            ok = len(shape) == 4 and shape[0] == n and shape[1] == 3 and value.dtype == np.uint8
            if not ok or (pixel_shape is not None and shape[1:] != tuple(pixel_shape)):
                raise DatasetError(
                    f"{path}: 'pixels' is {value.dtype} of shape {shape}, expected uint8 {expected['pixels']} "
                    "(rows [start, end) of the file name, RGB channels first, same size in every chunk)."
                )
        elif shape != expected[field]:
            raise DatasetError(
                f"{path}: '{field}' has shape {shape}, expected {expected[field]} for {dims.label} "
                f"(rows [{start}, {end}) from the file name). The buffer belongs to another task (pass the right "
                "--domain/--task) or the chunk is damaged."
            )
        out[field] = value if field == "pixels" else np.asarray(value, dtype=np.float32)
    actions = out["actions"]
    if not np.all(np.isfinite(actions)) or (actions.size and np.abs(actions).max() > 1.0 + 1e-6):
        raise DatasetError(f"{path}: 'actions' must be finite and within [-1, 1]; this is not a SMART buffer chunk.")
    return out


# ----------------------------------------------------------------------------------------------------- episodes
class _EpisodeSplitter:
    """Turns a stream of chunks into whole episodes, carrying the unfinished tail from one chunk to the next."""

    def __init__(self, source: str, length: int, check_length: bool, first_row: int = 0) -> None:
        self.source = source
        self.length = length  # typical episode length: episode_len or 1000 // action_repeat
        self.check_length = check_length
        self.mode: str | None = None  # "continuity" or "fixed", decided from the data
        self.tail: dict[str, np.ndarray] | None = None  # rows since the last episode end
        self.row = first_row  # buffer row of the tail's first row
        self.partial_start = first_row > 0  # the buffer may begin inside an episode
        self.lengths: list[int] = []  # of the time-limit episodes written so far

    def _fallback(self, why: str) -> None:
        self.mode = "fixed"
        logger.warning("%s: %s; splitting it into fixed episodes of %d steps (pass episode_len if the data used "
                       "another length).", self.source, why, self.length)

    def feed(self, chunk: dict[str, np.ndarray], path: str) -> list[dict[str, np.ndarray]]:
        informative = bool(chunk["next_obs"].any())
        if self.mode is None and not informative:
            self._fallback("next_obs is all zeros, so resets cannot be seen")
        elif self.mode == "continuity" and not informative:
            raise DatasetError(
                f"{path}: next_obs is all zeros here while earlier chunks had it, so episode ends cannot be "
                "found; the chunk is damaged."
            )
        data = chunk if self.tail is None else {k: np.concatenate([self.tail[k], v]) for k, v in chunk.items()}
        ends = self._ends(data)
        if self.mode is None:
            if ends:
                self.mode = "continuity"
            elif len(data["obs"]) > _LONGEST * self.length:
                self._fallback(f"next_obs shows no environment reset in its first {len(data['obs'])} rows")
                ends = self._ends(data)
        episodes = self._emit(data, ends)
        if self.mode == "continuity" and self.tail is not None and len(self.tail["obs"]) > _LONGEST * self.length:
            raise DatasetError(
                f"{self.source}: no episode end in rows {self.row}..{self.row + len(self.tail['obs']) - 1} "
                f"(typical length {self.length}); next_obs and obs do not show resets there. The buffer is damaged "
                "or was collected with a different episode length (pass --episode_len)."
            )
        return episodes

    def finish(self) -> list[dict[str, np.ndarray]]:
        if self.tail is None:
            return []
        episodes = []
        if self.mode is None:
            self._fallback("next_obs shows no environment reset in the whole buffer")
            episodes = self._emit(self.tail, self._ends(self.tail))
            if self.tail is None:
                return episodes
        m = len(self.tail["obs"])
        # the most common length of time-limit episodes (the longer one on a tie)
        counts = Counter(self.lengths)
        typical = max(counts, key=lambda k: (counts[k], k)) if counts else self.length
        if m == typical:
            episodes.append(self._episode(self.tail, 0, m))
        else:
            logger.warning("%s: dropped the final %d rows (buffer rows %d..%d): an unfinished episode (the "
                           "typical length is %d steps).", self.source, m, self.row, self.row + m - 1, typical)
        self.tail = None
        return episodes

    def _ends(self, data: dict[str, np.ndarray]) -> list[int]:
        """Exclusive ends of the complete episodes in ``data`` (which starts at an episode start)."""
        term = data["not_dones"].reshape(-1) == 0
        n = len(term)
        if self.mode == "fixed":
            ends, s = [], 0
            while s < n:
                hits = np.flatnonzero(term[s:s + self.length])
                if not len(hits) and s + self.length > n:
                    break
                s += int(hits[0]) + 1 if len(hits) else self.length
                ends.append(s)
            return ends
        reset = np.zeros(n, dtype=bool)
        reset[:-1] = np.any(data["next_obs"][:-1] != data["obs"][1:], axis=1)
        return (np.flatnonzero(reset | term) + 1).tolist()

    def _emit(self, data: dict[str, np.ndarray], ends: list[int]) -> list[dict[str, np.ndarray]]:
        episodes, s = [], 0
        for e in ends:
            if self.partial_start and e - s != self.length:
                logger.warning("%s: dropped the first %d rows (buffer rows %d..%d): the buffer does not start at "
                               "row 0 and they are not a whole episode.", self.source, e - s, self.row + s,
                               self.row + e - 1)
            else:
                episodes.append(self._episode(data, s, e))
            self.partial_start = False
            s = e
        n = len(data["obs"])
        self.tail = {k: v[s:].copy() for k, v in data.items()} if s < n else None
        self.row += s
        return episodes

    def _episode(self, data: dict[str, np.ndarray], s: int, e: int) -> dict[str, np.ndarray]:
        n = e - s
        terminal = bool(data["not_dones"][e - 1, 0] == 0) and n < self.length
        if self.check_length and not terminal and n != self.length:
            raise DatasetError(
                f"{self.source}: the episode at buffer rows {self.row + s}..{self.row + e - 1} has {n} steps, "
                f"but episode_len is {self.length}. Pass the right --episode_len, or leave it out to take episode "
                "ends from the data."
            )
        flags = np.zeros(n, dtype=bool)
        flags[-1] = True
        if not terminal:
            self.lengths.append(n)
        return {
            "observations": data["obs"][s:e],
            "actions": data["actions"][s:e],
            "rewards": data["rewards"][s:e].reshape(-1),
            "terminals": flags if terminal else np.zeros(n, dtype=bool),
            "timeouts": np.zeros(n, dtype=bool) if terminal else flags,
            "physics": data["physics"][s:e],
            "pixels": data["pixels"][s:e],
        }


# ----------------------------------------------------------------------------------------------------- import
def import_smart(src: str, out: str, domain: str | None = None, task: str | None = None,
                 replay_id: int | None = None, trust_pickle: bool = False, episode_len: int | None = None,
                 action_repeat: int = 4, progress: Callable[[int, int], None] | None = None) -> DatasetInfo:
    """Convert the SMART buffer at or below ``src`` into the dataset file ``out``; return its validated summary.

    Domain, task and replay id are parsed from the folder names unless given. ``progress(done, total)`` is called
    after each chunk. On any error (or interruption) nothing is left at ``out``.
    """
    buffer = find_buffer(src)
    parsed = parse_smart_path(buffer)
    domain = domain or parsed.domain
    task = task or parsed.task
    replay_id = parsed.replay_id if replay_id is None else replay_id
    if domain is None or task is None or replay_id is None:
        raise DatasetError(
            f"{buffer}: the folder names do not follow the SMART layout ({{domain}}_{{task}}_s{{id}}), so domain, "
            "task or replay id are unknown. Pass --domain, --task and --replay_id."
        )
    try:
        check_task(domain, task)
    except EnvSpecError as err:
        raise DatasetError(f"{buffer}: {err} Pass --domain and --task if the folder names are wrong.") from None
    if episode_len is not None and episode_len < 1:
        raise DatasetError(f"{buffer}: episode_len must be a positive number of steps, got {episode_len}.")

    env = make_env(domain, task)
    try:
        dims = _Dims(env.obs_dim, env.action_dim, env.state_dim, f"{domain}/{task}")
        obs_keys = list(env.obs_keys)
    finally:
        env.close()

    chunks = list_chunks(buffer)
    start, end, path = chunks[0]
    first = check_chunk(load_chunk(path, trust_pickle), path, start, end, dims, None)
    pixel_shape = tuple(first["pixels"].shape[1:])
    attrs = {
        "domain": domain, "task": task, "policy": parsed.policy, "seed": replay_id, "replay_id": replay_id,
        "action_repeat": action_repeat, "obs_keys": obs_keys, "source": "smart-import",
        "source_path": os.path.abspath(buffer), "render_height": pixel_shape[1], "render_width": pixel_shape[2],
        "render_camera": CAMERA_BY_DOMAIN.get(domain, 0), "render_fast": False,
    }
    splitter = _EpisodeSplitter(buffer, episode_len or 1000 // action_repeat, check_length=episode_len is not None,
                                first_row=start)
    logger.info("importing %d chunks (%d rows) from %s into %s", len(chunks), chunks[-1][1] - start, buffer, out)
    with TrajectoryWriter(out, attrs, dims.obs, dims.action, dims.state, pixel_shape=pixel_shape) as writer:
        for i, (start, end, path) in enumerate(chunks):
            chunk = first if i == 0 else check_chunk(load_chunk(path, trust_pickle), path, start, end, dims,
                                                     pixel_shape)
            first = None
            for episode in splitter.feed(chunk, path):
                writer.append_episode(episode)
            del chunk
            if progress is not None:
                progress(i + 1, len(chunks))
        for episode in splitter.finish():
            writer.append_episode(episode)
        if writer.num_steps == 0:
            raise DatasetError(
                f"{buffer}: no complete episode in the buffer ({chunks[-1][1] - chunks[0][0]} rows), so there is "
                "nothing to write."
            )
    return validate(out)
