"""Make, check and convert dataset files: ``python src/dmc_data.py {collect,inspect,import-smart,export-minari,import-minari,import-d4rl,import-exorl} --help``."""

import sys

from control_pretrain.cli.data import main

if __name__ == "__main__":
    sys.exit(main())
