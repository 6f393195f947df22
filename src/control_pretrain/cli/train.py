"""The LightningCLI both training scripts share, plus translation of the original SMART command lines.

``python src/dmc_pretrain.py --epochs 10 --multi_config X --output_dir D ...`` (the original README's flags) is
rewritten into LightningCLI keys (``--trainer.max_epochs 10 --data.multi_config X --trainer.default_root_dir D``),
so both spellings, ``--config file.yaml`` and ``--print_config`` work side by side. Every run writes to its output
directory: ``checkpoints/`` (``last.ckpt`` and the best ones), ``config.yaml`` (rerun it with ``--config``) and
TensorBoard logs in ``tb_logs/``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..errors import ArgumentError, UserError
from ..lit.callbacks import DataWaitMonitor, FlopsPerBatchEstimate, throughput_monitor
from ..lit.weights import SafeCheckpointIO, checkpoint_defaults, read_pretrained
from ..safe_load import TRUST_FLAG, TRUST_HELP, set_trust, trusting

# Shared by both scripts; each adds its own.
COMMON_FLAGS = {
    "--epochs": "--trainer.max_epochs",
    "--output_dir": "--trainer.default_root_dir",
    "--num_steps": "--data.num_steps",
    "--data_dir_prefix": "--data.data_dir_prefix",
    "--model_type": "--model.model_type",
    "--obs_type": "--model.obs_type",
    "--batch_size": "--data.batch_size",
    "--lr": "--model.lr",
    "--seed": "--seed_everything",
    "--context_length": "--model.context_length",
}
SWITCHES = {"--quiet": ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]}

# Pretraining's flat objective flags of earlier versions -> (objective name, init_args key) in the method preset's
# ``model.objectives`` list. They are applied after parsing, on top of the preset and every --config (a weight of 0
# leaves the objective out, as before).
OBJECTIVE_ALIASES: dict[str, list[tuple[str, str]]] = {
    "--model.forward_weight": [("forward", "weight")],
    "--model.inverse_weight": [("inverse", "weight")],
    "--model.masked_hindsight_weight": [("masked_hindsight", "weight")],
    "--model.share_passes": [("forward", "config.share_passes"), ("inverse", "config.share_passes")],
    "--model.ema_tau": [("forward", "config.ema_tau")],
    "--model.original_read_positions": [("masked_hindsight", "config.original_read_positions")],
}


METHODS_DIR = Path(__file__).resolve().parents[3] / "configs" / "methods"  # repo root/configs/methods


def method_preset(name: str) -> Path:
    """The preset YAML of a pretraining method (configs/methods/<name>.yaml)."""
    path = METHODS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in METHODS_DIR.glob("*.yaml"))
        raise ArgumentError(f"--method {name}: no preset {path}. Expected one of {known}; pass one of them, or "
                            "write configs/methods/<name>.yaml.")
    return path


def expanded_method(argv: list[str]) -> str | None:
    """The method of an argv that ``expand_method`` already rewrote (``--config <preset> ...``), else None. The
    processes Lightning's DDP launcher starts re-run the script with that rewritten argv."""
    if len(argv) >= 2 and argv[0] == "--config" and Path(argv[1]).resolve().parent == METHODS_DIR:
        return Path(argv[1]).stem
    return None


def method_name(argv: list[str], default: str) -> str:
    """The ``--method NAME`` (or ``--method=NAME``) of argv, else its expanded preset's, else ``default``."""
    return argv_value(argv, "--method") or expanded_method(argv) or default


def expand_method(argv: list[str], default: str) -> list[str]:
    """Replace ``--method NAME`` (or ``--method=NAME``; default ``default``) by ``--config <its preset>`` in front of
    every other argument, so later ``--config`` files and flags override the preset (last wins). An argv already
    expanded is returned as it is."""
    if argv_value(argv, "--method") is None and expanded_method(argv) is not None:
        return list(argv)
    name, rest, i = default, [], 0
    while i < len(argv):
        if argv[i] == "--method":
            if i + 1 >= len(argv):
                raise ArgumentError("--method needs a name, e.g. --method smart.")
            name, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--method="):
            name = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    return ["--config", str(method_preset(name)), *rest]


def drop_flag(argv: list[str], names: tuple[str, ...], takes_value: bool = True) -> tuple[list[str], str | None]:
    """argv without ``name value`` / ``name=value`` for any of ``names``, and the last value dropped (or None;
    ``""`` for a bare flag when ``takes_value`` is False)."""
    out, value, i = [], None, 0
    while i < len(argv):
        name, eq, val = argv[i].partition("=")
        if name in names:
            if eq:
                value, i = val, i + 1
            elif not takes_value:
                value, i = "", i + 1
            else:
                value, i = (argv[i + 1] if i + 1 < len(argv) else ""), i + 2
            continue
        out.append(argv[i])
        i += 1
    return out, value


def translate_legacy(argv: list[str], flags: dict[str, str], switches: dict[str, list[str]]) -> list[str]:
    """Rewrite original-style flags (``--epochs 10``, ``--epochs=10``, ``--no_load_action``) into CLI keys."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in flags:
            out.append(flags[name] + (eq + value if eq else ""))
        elif arg in switches:
            out.extend(switches[arg])
        else:
            out.append(arg)
    return out


def legacy_help(flags: dict[str, str]) -> str:
    return "original SMART flags, also accepted: " + ", ".join(f"{k} (= {v})" for k, v in sorted(flags.items()))


class ControlCLI(LightningCLI):
    """LightningCLI without subcommands (``run=False``): parse, build, then ``fit`` with ``--ckpt_path``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume from this checkpoint, or 'last' for the run's last.ckpt")
        # Read from the command line before anything is parsed (``trusting`` in run_cli), kept in sys.argv for the
        # processes DDP starts; never written to config.yaml (a rerun with --config trusts nothing by itself).
        parser.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)
        parser.link_arguments("model.context_length", "data.context_length")
        parser.link_arguments("model.obs_type", "data.obs_type")
        parser.link_arguments("data.obs_dim", "model.obs_dim", apply_on="instantiate")
        parser.link_arguments("data.action_dim", "model.action_dim", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        if self.config.get("trust_checkpoint"):  # also from a --config file
            set_trust(True)

    def instantiate_trainer(self, **kwargs):
        """Default logger and checkpoints live under ``trainer.default_root_dir`` (the original --output_dir).
        Checkpoints are read without running code (``SafeCheckpointIO``)."""
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        root = trainer_cfg.get("default_root_dir") or "outputs/run"
        os.makedirs(root, exist_ok=True)
        if trainer_cfg.get("logger") is None:
            kwargs["logger"] = TensorBoardLogger(root, name="tb_logs")
        every = trainer_cfg.get("log_every_n_steps") or 50  # Lightning's default
        callbacks = [throughput_monitor(every), FlopsPerBatchEstimate(), DataWaitMonitor()]
        if trainer_cfg.get("logger") is not False:
            callbacks.append(LearningRateMonitor("step"))
        if trainer_cfg.get("enable_checkpointing", True) is not False:
            metric, mode = self.model.checkpoint_monitor
            # enable_version_counter=False: a rerun into the same folder overwrites last.ckpt instead of writing
            # last-v1.ckpt next to a stale last.ckpt that later commands would pick up.
            callbacks.append(ModelCheckpoint(
                dirpath=os.path.join(root, "checkpoints"), monitor=metric, mode=mode, save_top_k=2, save_last=True,
                auto_insert_metric_name=False, enable_version_counter=False,
                filename="best-epoch{epoch:02d}-" + metric.replace("/", "_") + "{" + metric + ":.4f}"))
        self.trainer_defaults["callbacks"] = callbacks
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default, not a user's plugin
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer

    def save_resolved_config(self) -> str:
        path = os.path.join(self.trainer.default_root_dir, "config.yaml")
        if self.trainer.is_global_zero:
            config = self.config.clone()
            config.trust_checkpoint = False
            self.parser.save(config, path, overwrite=True, skip_check=True)
        return path


class PretrainCLI(ControlCLI):
    """Applies the flat objective flags (``OBJECTIVE_ALIASES``) to ``model.objectives`` after parsing, before
    ``--print_config`` prints and before anything is built, so the printed and the saved config.yaml show them."""

    def parse_arguments(self, parser, args) -> None:
        argv = sys.argv[1:] if args is None else list(args)
        argv, print_config = drop_flag(argv, ("--print_config",), takes_value=False)
        overrides = []
        for flag in OBJECTIVE_ALIASES:
            argv, value = drop_flag(argv, (flag,))
            if value is not None:
                overrides.append((flag, value))
        self.config = parser.parse_args(argv)
        for flag, value in overrides:
            apply_objective_alias(self.config, flag, value)
        if self.config.model.get("objectives") is not None:
            self.config.model.objectives = [o for o in self.config.model.objectives if o.init_args.weight != 0]
        if print_config is not None:
            options = print_config.split(",") if print_config else []
            sys.stdout.write(parser.dump(self.config, skip_none="skip_null" in options, skip_check=True))
            sys.exit(0)


def apply_objective_alias(config, flag: str, value: str) -> None:
    """Set ``flag``'s targets in ``config.model.objectives`` (SMART's three when the list is unset)."""
    from ..lit.pretrain_module import SMART_OBJECTIVES, objective_class

    if config.model.objectives is None:
        config.model.objectives = parse_objectives(SMART_OBJECTIVES)
    parsed = yaml.safe_load(value)
    by_name = {objective_class(o.class_path).name: o for o in config.model.objectives}
    for name, key in OBJECTIVE_ALIASES[flag]:
        if name not in by_name and key == "weight" and parsed == 0:
            continue  # already off
        if name not in by_name:
            raise ArgumentError(f"{flag} {value}: the method's objectives ({sorted(by_name)}) have no '{name}'. "
                                f"Drop the flag, or add {name} to model.objectives in the preset or --config file.")
        init_args = by_name[name].init_args
        if key.startswith("config.") and init_args.get("config") is None:
            defaults = objective_class(by_name[name].class_path)(1, 1).config
            init_args["config"] = Namespace(**dataclasses.asdict(defaults))
        init_args[key] = parsed


def parse_objectives(specs: list[dict]) -> list:
    """``{class_path, init_args}`` dicts -> the Namespaces the parser would have made of them."""
    from ..lit.pretrain_module import ObjectiveFactory

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--objectives", type=list[ObjectiveFactory])
    return parser.parse_object({"objectives": specs}).objectives


class DownstreamCLI(ControlCLI):
    """Adds: the task goes from the data to the model, and model sizes default to the checkpoint's."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.domain", "model.domain")
        parser.link_arguments("data.task", "model.task")
        ckpt = argv_value(sys.argv, "--model.load_model_from")
        if ckpt:
            config = read_pretrained(ckpt).model_config  # the module reuses this read (lit/weights.py)
            # older checkpoints: their position_encoding (lit/weights.py)
            defaults = checkpoint_defaults(config, getattr(self.model_class, "trunk", "gpt"))
            parser.set_defaults({f"model.{k}": v for k, v in defaults.items()})


def argv_value(argv: list[str], name: str) -> str | None:
    """The value of ``name value`` or ``name=value`` in argv (last one wins), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def run_cli(module_class, datamodule_class, flags: dict[str, str], switches: dict[str, list[str]],
            trainer_defaults: dict, description: str, argv: list[str] | None = None,
            downstream: bool = False, method: str | None = None) -> ControlCLI:
    """Parse (original or Lightning flags), build, save config.yaml, fit. Returns the CLI for callers that
    continue (evaluation); exits 2 with a one-paragraph message on bad data or arguments. ``method``: the default
    preset of ``--method`` (pretraining); None: the script has no presets."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = translate_legacy(sys.argv[1:] if argv is None else argv, {**COMMON_FLAGS, **flags},
                                {**SWITCHES, **switches})
        if method is not None:
            args = expand_method(args, method)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *args]  # LightningCLI reads sys.argv; passing args= too makes it warn
    with trusting(TRUST_FLAG in args):  # every checkpoint read from here on (safe_load.py)
        try:
            cli_class = DownstreamCLI if downstream else PretrainCLI if method is not None else ControlCLI
            cli = cli_class(module_class, datamodule_class, run=False, save_config_callback=None,
                            trainer_defaults={"use_distributed_sampler": False, **trainer_defaults},  # data/windows.py
                            seed_everything_default=123,
                            parser_kwargs={"description": description,
                                           "epilog": legacy_help({**COMMON_FLAGS, **flags})})
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        path = cli.save_resolved_config()
        logging.getLogger(__name__).info("resolved config written to %s", path)
        try:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.get("ckpt_path"))
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    return cli
