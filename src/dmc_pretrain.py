"""Multi-task SMART pretraining: ``python src/dmc_pretrain.py --help``.

The original README's commands run verbatim, e.g.
``python src/dmc_pretrain.py --multi_config configs/pretrain_configs/multipretrain_source_v1.json
--source_data_type rand --train_replay_id 5 --epochs 10 --num_steps 80000 --model_type naive
--output_dir ./outputs/pretrain_explore/ --data_dir_prefix data``, and so do LightningCLI overrides
(``--config``, ``--print_config``, ``--trainer.*``, ``--model.*``, ``--data.*``, ``--seed_everything``).
"""

from control_pretrain.cli.train import run_cli
from control_pretrain.data.datamodules.pretrain import MultiTaskDataModule
from control_pretrain.lit.pretrain_module import PretrainModule

FLAGS = {
    "--multi_config": "--data.multi_config",
    "--source_data_type": "--data.source_data_type",
    "--train_replay_id": "--data.train_replay_id",
    "--val_replay_id": "--data.val_replay_id",
    "--load_model_from": "--model.init_from",
}



def main(argv: list[str] | None = None):
    return run_cli(PretrainModule, MultiTaskDataModule, FLAGS, {},
                   trainer_defaults={"max_epochs": 10, "gradient_clip_val": 1.0, "default_root_dir": "outputs/pretrain"},
                   description=__doc__, argv=argv)


if __name__ == "__main__":
    main()
