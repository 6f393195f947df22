"""The LightningCLI both training scripts share, plus translation of the original SMART command lines.

``python src/dmc_pretrain.py --epochs 10 --multi_config X --output_dir D ...`` (the original README's flags) is
rewritten into LightningCLI keys (``--trainer.max_epochs 10 --data.multi_config X --trainer.default_root_dir D``),
so both spellings, ``--config file.yaml`` and ``--print_config`` work side by side. Every run writes to its output
directory: ``checkpoints/`` (``last.ckpt`` and the best ones), ``config.yaml`` (rerun it with ``--config``) and
TensorBoard logs in ``tb_logs/``.
"""

from __future__ import annotations

import logging
import os
import sys

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from ..errors import UserError
from ..lit.callbacks import DataWaitMonitor, FlopsPerBatchEstimate, throughput_monitor
from ..lit.weights import ARCHITECTURE_KEYS, read_pretrained

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
        parser.link_arguments("model.context_length", "data.context_length")
        parser.link_arguments("model.obs_type", "data.obs_type")
        parser.link_arguments("data.obs_dim", "model.obs_dim", apply_on="instantiate")
        parser.link_arguments("data.action_dim", "model.action_dim", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs):
        """Default logger and checkpoints live under ``trainer.default_root_dir`` (the original --output_dir)."""
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
        return super().instantiate_trainer(**kwargs)

    def save_resolved_config(self) -> str:
        path = os.path.join(self.trainer.default_root_dir, "config.yaml")
        if self.trainer.is_global_zero:
            self.parser.save(self.config, path, overwrite=True, skip_check=True)
        return path


class DownstreamCLI(ControlCLI):
    """Adds: the task goes from the data to the model, and model sizes default to the checkpoint's."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.domain", "model.domain")
        parser.link_arguments("data.task", "model.task")
        ckpt = argv_value(sys.argv, "--model.load_model_from")
        if ckpt:
            config = read_pretrained(ckpt).model_config  # the module reuses this read (lit/weights.py)
            parser.set_defaults({f"model.{k}": config[k] for k in ARCHITECTURE_KEYS + ("max_timestep",)
                                 if k in config})


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
            downstream: bool = False) -> ControlCLI:
    """Parse (original or Lightning flags), build, save config.yaml, fit. Returns the CLI for callers that
    continue (evaluation); exits 2 with a one-paragraph message on bad data or arguments."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = translate_legacy(sys.argv[1:] if argv is None else argv, {**COMMON_FLAGS, **flags},
                            {**SWITCHES, **switches})
    sys.argv = [sys.argv[0], *args]  # LightningCLI reads sys.argv; passing args= too makes it warn
    try:
        cli_class = DownstreamCLI if downstream else ControlCLI
        cli = cli_class(module_class, datamodule_class, run=False, save_config_callback=None,
                         trainer_defaults={"use_distributed_sampler": False, **trainer_defaults},  # data/windows.py
                         seed_everything_default=123,
                         parser_kwargs={"description": description, "epilog": legacy_help({**COMMON_FLAGS, **flags})})
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
