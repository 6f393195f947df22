"""Multi-task SMART pretraining: ``python src/dmc_pretrain.py --help``.

The original README's commands run verbatim, e.g.
``python src/dmc_pretrain.py --multi_config configs/pretrain_configs/multipretrain_source_v1.json
--source_data_type rand --train_replay_id 5 --epochs 10 --num_steps 80000 --model_type naive
--output_dir ./outputs/pretrain_explore/ --data_dir_prefix data``, and so do LightningCLI overrides
(``--config``, ``--print_config``, ``--trainer.*``, ``--model.*``, ``--data.*``, ``--seed_everything``).

``--method NAME`` (default ``smart``) loads the method preset ``configs/methods/NAME.yaml`` first; ``--config``
files and flags stack on top of it (last wins). ``--method mtm`` trains MTM's masked trajectory model instead of
SMART's control transformer (lit/mtm_module.py); ``--method maskdp`` trains the same model over
(observation, action) tokens with MaskDP's mask (configs/methods/maskdp.yaml). ``--model_type`` is accepted for the
original command lines and ignored: pretraining trains no policy head.

Checkpoints (``--ckpt_path`` to resume, ``--load_model_from``/``--model.init_from``) are read without running code
stored in them; a file that would run code is refused unless ``--trust_checkpoint`` is given (only for files from
a source you trust; control_pretrain/safe_load.py).
"""

import logging
import sys

from control_pretrain.cli.train import drop_flag, method_name, run_cli
from control_pretrain.data.datamodules.pretrain import MultiTaskDataModule
from control_pretrain.lit.mtm_module import MTMPretrainModule
from control_pretrain.lit.pretrain_module import PretrainModule

FLAGS = {
    "--multi_config": "--data.multi_config",
    "--source_data_type": "--data.source_data_type",
    "--train_replay_id": "--data.train_replay_id",
    "--val_replay_id": "--data.val_replay_id",
    "--load_model_from": "--model.init_from",
}

DEFAULT_METHOD = "smart"
MODULES = {"mtm": MTMPretrainModule, "maskdp": MTMPretrainModule}  # the LightningModule of each method whose trunk is not SMART's
log = logging.getLogger("dmc_pretrain")


def main(argv: list[str] | None = None):
    argv, model_type = drop_flag(sys.argv[1:] if argv is None else list(argv), ("--model_type", "--model.model_type"))
    if model_type is not None:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        log.info("--model_type %s ignored: pretraining trains no policy head (it matters to dmc_downstream.py)",
                 model_type)
    module = MODULES.get(method_name(argv, DEFAULT_METHOD), PretrainModule)
    return run_cli(module, MultiTaskDataModule, FLAGS, {},
                   trainer_defaults={"max_epochs": 10, "gradient_clip_val": 1.0, "default_root_dir": "outputs/pretrain"},
                   description=__doc__, argv=argv, method=DEFAULT_METHOD)


if __name__ == "__main__":
    main()
