#!/usr/bin/env bash
# The first thing to run: installs the project into .venv, collects a small multi-task dataset with dm_control
# and checks it. Local files only, no cloud account, about a minute on a 2-core CPU after the install.
set -euo pipefail
source "$(dirname "$0")/setup_venv.sh"
DATA="${QUICKSTART_DATA:-data/quickstart}"
TASKS=configs/pretrain_configs/multipretrain_source_test.json
echo "[quickstart] collecting random-policy data for $(cat $TASKS) into $DATA (state observations)"
python src/dmc_data.py collect --multi_config "$TASKS" --policy random --num_steps 5000 --replay_id 1 2 \
  --data_dir_prefix "$DATA" --overwrite
python src/dmc_data.py inspect "$DATA"/randcollect_*/*.h5
echo "[quickstart] done: dataset files under $DATA/"
