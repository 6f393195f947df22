"""Train an online agent in dm_control: ``python src/dmc_online.py --agent sac --domain D --task T --num_steps N``
(``--help`` lists the options; agents/online_run.py describes the output folder and ``--resume``)."""

import sys

from control_pretrain.cli.online import main

if __name__ == "__main__":
    sys.exit(main())

