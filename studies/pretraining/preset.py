"""The typed preset of the pretraining study: one YAML file per scale under studies/pretraining/presets/.

``load_preset("cpu")`` reads ``presets/cpu.yaml`` (or any path ending in .yaml) and checks every key against
``Preset``'s fields and types, so a typo is an ``ArgumentError`` naming the file and key, not a silent default.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass

import yaml

from control_pretrain.errors import ArgumentError

SCORES = ("return", "demonstrator")
DATA_KINDS = ("rand", "full", "mix")
PRESET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


@dataclass(frozen=True)
class Preset:
    """Everything that defines one scale of the study (the name is the YAML file's stem)."""

    name: str
    obs_type: str  # state or pixels
    model: dict[str, int]  # n_layer, n_head, n_embd
    context_length: int
    batch_size: int
    pretrain_tasks: str  # task-set JSON
    pretrain_random_steps: int  # random-policy steps per pretraining task
    pretrain_sac_steps: int  # SAC replay steps per pretraining task
    pretrain_epochs: int
    pretrain_batches_per_epoch: int  # 0: the whole data each epoch
    downstream_sac_steps: int  # SAC training steps per downstream task (its replay is the RTG data)
    demo_train_steps: int  # demonstration steps (whole 250-step episodes) for training, per task
    demo_val_steps: int  # demonstration steps for validation (another seed)
    demo_action_noise: float
    tasks: dict[str, list[str]]  # group -> ["domain-task", ...]
    episodes: tuple[int, ...]  # few-shot episode counts
    seeds: tuple[int, ...]
    methods: tuple[str, ...]  # bc, rtg
    finetune_steps: int
    val_every: int  # optimiser steps between selection evaluations
    eval_episodes: int
    num_workers: int = 0
    target_returns: dict[str, float] = dataclasses.field(default_factory=dict)  # RTG targets outside SMART's table
    extra_collect: tuple[str, ...] = ()  # e.g. ["--pixels"]
    extra_train: tuple[str, ...] = ()  # e.g. ["--trainer.precision", "bf16-mixed"]
    sac_flags: tuple[str, ...] = ()
    # How a run's test return becomes a score: "return" = return / 10 (dm_control returns lie in [0, 1000]);
    # "demonstrator" = return / the demonstrator's mean return x 100 (Premier-TACO's expert-normalised score)
    score: str = "return"
    # Pretrained inits beside scratch: name -> [pretraining data kind, extra dmc_pretrain.py flags]; the kind is
    # rand (random policy), full (SAC replay) or mix (both files of every task, all their steps)
    inits: dict[str, list[str]] = dataclasses.field(
        default_factory=lambda: {"pretrained-random": ["rand"], "pretrained-sac": ["full"]})
    # Extra dmc_downstream.py flags of an init's finetuning cells (e.g. the reference's raw observations)
    finetune_flags: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    data_dir: str = ""  # "": data/study_{name} (data/study for cpu); another preset's folder shares its data
    notes: str = ""

    def task_group(self, task: str) -> str:
        return next(g for g, ts in self.tasks.items() if task in ts)

    @property
    def init_names(self) -> tuple[str, ...]:
        return ("scratch", *self.inits)

    def pretrain_run(self, init: str) -> str:
        """The pretraining run an init starts from: its data kind (``rand``, ``full``) when it adds no flags, so
        inits of the same data share one run, else the init's own name."""
        kind, *flags = self.inits[init]
        return init if flags else kind

    def pretrain_runs(self) -> dict[str, list[str]]:
        """{run name: [data kind, *flags]} of every pretraining run the inits need."""
        return {self.pretrain_run(i): spec for i, spec in self.inits.items()}


def preset_names() -> list[str]:
    """The presets shipped in studies/pretraining/presets/."""
    return sorted(f[: -len(".yaml")] for f in os.listdir(PRESET_DIR) if f.endswith(".yaml"))


def _conform(value, hint, where: str):
    """``value`` checked against the type hint (lists become tuples where the field is a tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is None:
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise ArgumentError(f"{where}: expected {hint.__name__}, found {value!r} ({type(value).__name__}).")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ArgumentError(f"{where}: expected a list, found {value!r}.")
        items = [_conform(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ArgumentError(f"{where}: expected a mapping, found {value!r}.")
        return {_conform(k, args[0], f"{where} key"): _conform(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin is types.UnionType:  # pragma: no cover - no union fields today
        raise TypeError(hint)
    raise TypeError(f"unsupported preset field type {hint}")


def load_preset(name_or_path: str) -> Preset:
    """The preset of a shipped name (``cpu``, ``paper``) or of a YAML file path; ``ArgumentError`` for an unknown
    name, an unknown or missing key, or a value of the wrong type."""
    path = name_or_path if name_or_path.endswith((".yaml", ".yml")) else os.path.join(PRESET_DIR,
                                                                                     f"{name_or_path}.yaml")
    if not os.path.exists(path):
        raise ArgumentError(f"--preset {name_or_path}: no preset file {path}. Use one of {', '.join(preset_names())} "
                            "or the path of a YAML file with the keys of studies/pretraining/preset.py's Preset.")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ArgumentError(f"{path}: expected a mapping of preset keys, found {type(raw).__name__}.")
    hints = typing.get_type_hints(Preset)
    fields = {f.name: f for f in dataclasses.fields(Preset) if f.name != "name"}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ArgumentError(f"{path}: unknown key(s) {', '.join(unknown)}. Known keys: {', '.join(fields)}. "
                            "Fix the spelling or remove them.")
    required = [k for k, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in raw]
    if missing:
        raise ArgumentError(f"{path}: missing key(s) {', '.join(missing)}; every preset sets them.")
    values = {k: _conform(v, hints[k], f"{path}: {k}") for k, v in raw.items()}
    for init, spec in values.get("inits", {}).items():
        if not spec or spec[0] not in DATA_KINDS or init == "scratch":
            raise ArgumentError(f"{path}: inits.{init}: expected a name other than scratch and [rand, full or mix, "
                                f"flags...], found {spec!r}.")

    if values.get("score", "return") not in SCORES:
        raise ArgumentError(f"{path}: score: expected one of {', '.join(SCORES)}, found {values['score']!r}.")
    preset = Preset(name=os.path.splitext(os.path.basename(path))[0], **values)
    unknown_inits = sorted(set(preset.finetune_flags) - set(preset.init_names))
    if unknown_inits:
        raise ArgumentError(f"{path}: finetune_flags names {', '.join(unknown_inits)}, which are not inits "
                            f"({', '.join(preset.init_names)}).")
    return preset
