#!/usr/bin/env bash
# Regenerates the SMART data suite (smart.md §1.1, §1.8): for each of the paper's 10 tasks and replay ids 1..N,
#   randcollect: 100,000 uniformly random steps        (--policy random)
#   fullcollect: the whole replay of a 1,000,000-step state-SAC run (--policy sac, agent saved next to it)
# with 84x84 pixels, action repeat 4. Jobs run in parallel, one per core (each is single-threaded).
# Re-running it skips finished files and continues interrupted SAC runs (--resume), so it can be stopped any time.
# Time and disk: docs/data.md (full scale, default visuals: ~600 core-hours, i.e. ~12 days on 2 cores, and ~1.2 TB;
# use --scale to shrink).
#
# usage: bash scripts/collect_smart_data.sh [--scale F] [--replay_ids N] [--data_dir_prefix DIR] [--workers W]
#                                           [--no_pixels] [--fast_render] [--tasks "walker:walk cheetah:run"]
#                                           [--only random|sac] [--dry_run]
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=1; REPLAY_IDS=5; PREFIX=data; WORKERS=$(nproc); PIXELS=(--pixels); ONLY=""; DRY=0
TASKS="walker:stand walker:walk walker:run cheetah:run hopper:hop hopper:stand cartpole:swingup cartpole:balance \
finger:spin pendulum:swingup"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --scale) SCALE="$2"; shift 2 ;;               # multiplies the step counts (0.01: 1k random + 10k SAC steps)
    --replay_ids) REPLAY_IDS="$2"; shift 2 ;;     # replay ids 1..N per task (paper: 5)
    --data_dir_prefix) PREFIX="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;           # parallel jobs (default: all cores)
    --no_pixels) PIXELS=(); shift ;;              # state, physics only (~0.2 KB/step instead of ~21.7 KB)
    --fast_render) PIXELS+=(--fast_render); shift ;;  # ~25x faster frames, but a different visual domain
    --tasks) TASKS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --dry_run) DRY=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#PIXELS[@]} -gt 0 && "${PIXELS[0]}" != --pixels ]] && PIXELS=()  # --fast_render after --no_pixels

if [[ $DRY -eq 0 ]]; then source scripts/setup_venv.sh; fi
steps() { python3 -c "import sys; print(max(250, round($1 * float(sys.argv[1]))))" "$SCALE"; }
RAND_STEPS=$(steps 100000)
SAC_STEPS=$(steps 1000000)
EVAL_EVERY=$(python3 -c "import sys; print(max(1000, round(10000 * float(sys.argv[1]))))" "$SCALE")
LOGS="$PREFIX/logs"
[[ $DRY -eq 1 ]] || mkdir -p "$LOGS"

# One line per job: "policy domain task id". SAC first: those runs are ~10x longer, so they should start early.
jobs=()
for policy in sac random; do
  [[ -n "$ONLY" && "$ONLY" != "$policy" ]] && continue
  for dt in $TASKS; do
    for ((id = 1; id <= REPLAY_IDS; id++)); do jobs+=("$policy ${dt%%:*} ${dt##*:} $id"); done
  done
done
echo "[smart-data] ${#jobs[@]} files under $PREFIX/: random ${RAND_STEPS} / SAC ${SAC_STEPS} steps each," \
     "pixels: ${PIXELS[*]:-off}, $WORKERS in parallel; logs in $LOGS/"

run_job() {
  local policy=$1 domain=$2 task=$3 id=$4 kind=randcollect num=$RAND_STEPS extra=()
  if [[ $policy == sac ]]; then
    kind=fullcollect; num=$SAC_STEPS
    extra=(--save_agent --eval_every "$EVAL_EVERY")
  fi
  local file="$PREFIX/${kind}_${domain}_${task}/${domain}_${task}_s${id}.h5"
  if [[ -f "$file" ]]; then echo "[smart-data] exists, skipped: $file"; return 0; fi
  [[ $policy == sac && -f "$file.tmp-partial" ]] && extra+=(--resume)
  local cmd=(python src/dmc_data.py collect --domain "$domain" --task "$task" --policy "$policy" --num_steps "$num"
             --replay_id "$id" --data_dir_prefix "$PREFIX" "${PIXELS[@]}" "${extra[@]}" --workers 1 --quiet)
  if [[ $DRY -eq 1 ]]; then echo "${cmd[*]}"; return 0; fi
  local start=$SECONDS
  if "${cmd[@]}" > "$LOGS/${kind}_${domain}_${task}_s${id}.log" 2>&1; then
    echo "[smart-data] done in $((SECONDS - start)) s: $file"
  else
    echo "[smart-data] FAILED: $file (see $LOGS/${kind}_${domain}_${task}_s${id}.log; re-run to continue)" >&2
    return 1
  fi
}
export -f run_job
export RAND_STEPS SAC_STEPS EVAL_EVERY PREFIX LOGS DRY
export PIXELS_STR="${PIXELS[*]:-}"
# bash cannot export arrays: rebuild PIXELS inside each job from a string
printf '%s\n' "${jobs[@]}" | xargs -P "$WORKERS" -L 1 bash -c \
  'PIXELS=($PIXELS_STR); run_job "$@"' _
echo "[smart-data] finished; check files with: python src/dmc_data.py inspect $PREFIX/*collect_*/*.h5"
