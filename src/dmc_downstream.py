"""Finetuning and evaluation on one task: ``python src/dmc_downstream.py --help``.

The original README's commands run verbatim, e.g. ``python src/dmc_downstream.py --epochs 30 --num_steps 1000000
--domain cheetah --task run --model_type naive --no_load_action --load_model_from
./outputs/pretrain_explore/checkpoints/last.ckpt --output_dir ./outputs/cheetah_run_bc/``; without
``--load_model_from`` the same model trains from scratch. Model sizes default to the checkpoint's. After training,
the last and the best checkpoint are evaluated in dm_control on held-out seeds and written to
``{output_dir}/eval_results.json``. Presets: ``--config configs/downstream/bc.yaml`` (also ``rtg.yaml``,
``few_shot.yaml``), with any flag after it overriding the preset.

``--mode bc|rcbc|id|fd|probes|goal|multigoal|prompt`` says what to do with the checkpoint: bc and rcbc finetune
(unless ``--epochs 0``) and run rollouts (for SMART checkpoints they are ``--model_type naive`` and
``reward_conditioned``); id, fd and probes report offline MSE on held-out episodes; goal, multigoal and prompt
reach held-out goals and continue held-out prompts in dm_control (MaskDP's zero-shot uses, eval/goal_report.py).
These need a masked checkpoint (MTM or MaskDP, lit/mtm_downstream_module.py), whose module is chosen from the
checkpoint (or with ``--method mtm|maskdp`` from scratch). ``--method smart`` with a masked checkpoint is MaskDP's
causal finetuning: SMART's causal control transformer starts from the checkpoint's encoders and blocks.

Checkpoints (``--load_model_from``, ``--ckpt_path``, the report's reload of the best one) are read without running
code stored in them; a file that would run code is refused unless ``--trust_checkpoint`` is given (only for files
from a source you trust; control_pretrain/safe_load.py).
"""

import sys

from control_pretrain.cli.train import argv_value, drop_flag, run_cli
from control_pretrain.data.datamodules.downstream import DownstreamDataModule
from control_pretrain.errors import ArgumentError, UserError
from control_pretrain.eval.goal_report import GOAL_MODES, goal_report, headline
from control_pretrain.eval.report import final_report, offline_report
from control_pretrain.lit.downstream_module import DownstreamModule
from control_pretrain.lit.mtm_downstream_module import OFFLINE_MODES, MTMDownstreamModule
from control_pretrain.lit.weights import read_pretrained, trunk_kind
from control_pretrain.safe_load import TRUST_FLAG, trusting

FLAGS = {
    "--domain": "--data.domain",
    "--task": "--data.task",
    "--select_rate": "--data.select_rate",
    "--num_episodes": "--data.num_episodes",
    "--train_replay_id": "--data.train_replay_id",
    "--val_replay_id": "--data.val_replay_id",
    "--source_data_type": "--data.source_data_type",
    "--load_model_from": "--model.load_model_from",
    "--eval_episodes": "--model.eval_episodes",
    "--target_return": "--model.target_return",
}
SWITCHES = {
    "--rand_select": ["--data.rand_select=true"],
    "--no_load_action": ["--model.no_load_action=true"],
    "--freeze_encoder": ["--model.freeze_encoder=true"],
    "--video": ["--model.video=true"],
}


SMART_MODES = {"bc": "naive", "rcbc": "reward_conditioned"}  # --mode -> SMART's --model_type
MTM_MODES = {"naive": "bc", "reward_conditioned": "rcbc"}  # and back, for --model_type with an MTM checkpoint


def choose_module(argv: list[str]) -> tuple[type, list[str]]:
    """The finetuning module (the masked one for an MTM or MaskDP checkpoint or ``--method mtm|maskdp``, else
    SMART's: ``--method smart`` finetunes a masked checkpoint's encoders and blocks causally) and argv with
    ``--mode``/``--method`` turned into its flags."""
    argv, mode = drop_flag(argv, ("--mode",))
    argv, method = drop_flag(argv, ("--method",))
    ckpt = argv_value(argv, "--load_model_from") or argv_value(argv, "--model.load_model_from")
    trunk = trunk_kind(read_pretrained(ckpt).model_config) if ckpt else "gpt"
    if method not in (None, "smart", "mtm", "maskdp"):
        raise ArgumentError(f"--method {method}: finetuning knows smart, mtm and maskdp.")
    if method in ("mtm", "maskdp") or (method is None and trunk == "mtm"):
        argv, model_type = drop_flag(argv, ("--model_type", "--model.model_type"))
        mode = mode or MTM_MODES.get(model_type or "naive", model_type)
        scratch = ["--model.modalities", "[obs, act]"] if method == "maskdp" and not ckpt else []
        return MTMDownstreamModule, [*scratch, *argv, "--model.mode", mode]
    if mode in OFFLINE_MODES + GOAL_MODES:
        raise ArgumentError(f"--mode {mode} needs a masked trajectory (MTM, MaskDP) checkpoint; {ckpt or 'this run'} "
                            "is a SMART control transformer, which has --mode bc and rcbc.")
    if mode is not None and mode not in SMART_MODES:
        raise ArgumentError(f"--mode {mode}: expected bc or rcbc for SMART checkpoints, or id, fd, probes with MTM ones.")
    return DownstreamModule, argv + (["--model.model_type", SMART_MODES[mode]] if mode else [])


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    with trusting(TRUST_FLAG in argv):  # the checkpoint is read first here (choose_module), then by the CLI
        try:
            return finetune_and_report(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)


def finetune_and_report(argv: list[str]):
    module, argv = choose_module(argv)
    cli = run_cli(module, DownstreamDataModule, FLAGS, SWITCHES,
                  trainer_defaults={"max_epochs": 30, "gradient_clip_val": 1.0, "default_root_dir": "outputs/downstream"},
                  description=__doc__, argv=argv, downstream=True)
    if cli.model.hparams.get("mode") in GOAL_MODES:
        report = goal_report(cli.trainer, cli.model, cli.datamodule, cli.trainer.default_root_dir)
        if cli.trainer.is_global_zero:
            for loop, summary in report["loops"].items():
                print(f"{report['domain']}-{report['task']} {report['mode']} ({loop} loop): {headline(summary)} over "
                      f"{report['num']} held-out {'prompts' if report['mode'] == 'prompt' else 'pairs'}", file=sys.stdout)
        return cli, report
    if cli.model.hparams.get("mode") in OFFLINE_MODES:
        report = offline_report(cli.trainer, cli.model, cli.datamodule, cli.trainer.default_root_dir)
        if cli.trainer.is_global_zero:
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items())
            print(f"{report['domain']}-{report['task']} {report['mode']}: {metrics} on "
                  f"{len(report['episodes'])} held-out episodes", file=sys.stdout)
        return cli, report
    report = final_report(cli.trainer, cli.model, cli.datamodule, cli.trainer.default_root_dir)  # reloads the best
    if cli.trainer.is_global_zero:
        best = report.get("best", {})
        print(f"{report['domain']}-{report['task']} {report['model_type']}: last checkpoint return "
              f"{report['mean']:.1f} ± {report['std']:.1f} (IQM {report['iqm']:.1f}, 95% CI "
              f"[{report['ci95'][0]:.1f}, {report['ci95'][1]:.1f}]) over {report['num_episodes']} test episodes"
              + (f"; best checkpoint {best['mean']:.1f} ± {best['std']:.1f}" if best else ""), file=sys.stdout)
    return cli, report


if __name__ == "__main__":
    main()
