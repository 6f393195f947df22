"""Make, check and convert dataset files: ``python src/dmc_data.py {collect,inspect,import-smart} --help``."""

import sys

from control_pretrain.cli.data import main

if __name__ == "__main__":
    sys.exit(main())
