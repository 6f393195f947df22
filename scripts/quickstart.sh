#!/usr/bin/env bash
# The first thing to run. Installs the project into .venv, then on a 2-core CPU in a few minutes:
#   1. collects random-policy data with dm_control for a small pretraining task set and an unseen task,
#   2. pretrains a small control transformer (SMART objectives) on the task set,
#   3. finetunes it by behaviour cloning on the unseen task, and trains the same policy from scratch,
#   4. evaluates both in the simulator and prints a table.
# It uses state observations and a small model so that it fits a CPU: the paper's setting (pixels, 8x256 model,
# SAC data) needs a GPU and hours. With random-policy data the numbers show that the pipeline works, not what
# pretraining is worth. Set QUICKSTART_OUT to write elsewhere than outputs/quickstart.
set -euo pipefail
source "$(dirname "$0")/setup_venv.sh"
OUT="${QUICKSTART_OUT:-outputs/quickstart}"
DATA="$OUT/data"
TASKS=configs/pretrain_configs/multipretrain_source_test.json
SMALL=(--obs_type state --model.n_layer 2 --model.n_head 2 --model.n_embd 64 --context_length 20
       --data.batch_size 64 --data.num_workers 0)
rm -rf "$OUT/pretrain" "$OUT"/finetune_*  # checkpoints of an earlier run would mix with this one's
start=$(date +%s)
echo "[quickstart] small CPU setting: state observations, 2-layer 64-wide model, K=20, random-policy data"

echo "[quickstart] 1/4 collecting data into $DATA"
python src/dmc_data.py collect --multi_config "$TASKS" --policy random --num_steps 10000 --replay_id 1 \
  --data_dir_prefix "$DATA" --overwrite
python src/dmc_data.py collect --domain cartpole --task balance --policy random --num_steps 10000 --replay_id 1 2 \
  --data_dir_prefix "$DATA" --overwrite
python src/dmc_data.py inspect "$DATA"/randcollect_cartpole_balance/cartpole_balance_s1.h5

echo "[quickstart] 2/4 pretraining on $(cat $TASKS)"
python src/dmc_pretrain.py --multi_config "$TASKS" --source_data_type rand --train_replay_id 1 --epochs 2 \
  --num_steps 10000 --model_type naive --output_dir "$OUT/pretrain" --data_dir_prefix "$DATA" "${SMALL[@]}" \
  --trainer.limit_train_batches 50 --trainer.limit_val_batches 10

FINETUNE=(--epochs 3 --num_steps 10000 --domain cartpole --task balance --model_type naive --source_data_type rand
          --data_dir_prefix "$DATA" --eval_episodes 10 --trainer.limit_train_batches 60 "${SMALL[@]}")
echo "[quickstart] 3/4 finetuning the pretrained model on cartpole-balance (unseen task), behaviour cloning"
python src/dmc_downstream.py "${FINETUNE[@]}" --no_load_action \
  --load_model_from "$OUT/pretrain/checkpoints/last.ckpt" --output_dir "$OUT/finetune_pretrained"
echo "[quickstart] 4/4 training the same policy from scratch"
python src/dmc_downstream.py "${FINETUNE[@]}" --output_dir "$OUT/finetune_scratch"

python - "$OUT" "$(( $(date +%s) - start ))" <<'EOF'
import json, sys
out, seconds = sys.argv[1], int(sys.argv[2])
print(f"\n[quickstart] cartpole-balance, behaviour cloning, returns over held-out evaluation episodes")
print(f"{'model':<22}{'last: mean ± std':>20}{'IQM':>9}{'95% CI':>18}{'best ckpt':>12}")
for name in ("pretrained", "scratch"):
    r = json.load(open(f"{out}/finetune_{name}/eval_results.json"))
    best = r.get("best", {}).get("mean", float("nan"))
    print(f"{name:<22}{r['mean']:>12.1f} ± {r['std']:<5.1f}{r['iqm']:>9.1f}"
          f"{'[%.1f, %.1f]' % tuple(r['ci95']):>18}{best:>12.1f}")
print(f"\n{r['num_episodes']} episodes each (seeds {r['seeds'][0]}..{r['seeds'][-1]}), "
      f"trained on {r['data']['train_episodes']} top-return episodes of random-policy data.")
print(f"files: {out}/pretrain (checkpoints, config.yaml, tb_logs), {out}/finetune_*/eval_results.json")
print(f"TensorBoard: tensorboard --logdir {out}    total time: {seconds // 60} min {seconds % 60} s")
EOF
