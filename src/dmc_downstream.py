"""Finetuning and evaluation on one task: ``python src/dmc_downstream.py --help``.

The original README's commands run verbatim, e.g. ``python src/dmc_downstream.py --epochs 30 --num_steps 1000000
--domain cheetah --task run --model_type naive --no_load_action --load_model_from
./outputs/pretrain_explore/checkpoints/last.ckpt --output_dir ./outputs/cheetah_run_bc/``; without
``--load_model_from`` the same model trains from scratch. Model sizes default to the checkpoint's. After training,
the last and the best checkpoint are evaluated in dm_control on held-out seeds and written to
``{output_dir}/eval_results.json``. Presets: ``--config configs/downstream/bc.yaml`` (also ``rtg.yaml``,
``few_shot.yaml``), with any flag after it overriding the preset.
"""

import sys

from control_pretrain.cli.train import run_cli
from control_pretrain.data.datamodules.downstream import DownstreamDataModule
from control_pretrain.eval.report import final_report
from control_pretrain.lit.downstream_module import DownstreamModule

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


def main(argv: list[str] | None = None):
    cli = run_cli(DownstreamModule, DownstreamDataModule, FLAGS, SWITCHES,
                  trainer_defaults={"max_epochs": 30, "gradient_clip_val": 1.0, "default_root_dir": "outputs/downstream"},
                  description=__doc__, argv=argv, downstream=True)
    report = final_report(cli.trainer, cli.model, cli.datamodule, cli.trainer.default_root_dir)
    if cli.trainer.is_global_zero:
        best = report.get("best", {})
        print(f"{report['domain']}-{report['task']} {report['model_type']}: last checkpoint return "
              f"{report['mean']:.1f} ± {report['std']:.1f} (IQM {report['iqm']:.1f}, 95% CI "
              f"[{report['ci95'][0]:.1f}, {report['ci95'][1]:.1f}]) over {report['num_episodes']} test episodes"
              + (f"; best checkpoint {best['mean']:.1f} ± {best['std']:.1f}" if best else ""), file=sys.stdout)
    return cli, report


if __name__ == "__main__":
    main()
