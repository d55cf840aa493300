#!/usr/bin/env bash
# The exact command behind every number of the paper's tables (docs/reproducing.md), one line per
# table cell. Each line sweeps the seeds with hydra multirun; add `hydra/launcher=joblib` (local
# processes) or `hydra/launcher=submitit_slurm_bfm hydra.launcher.partition=<p>` (SLURM, see
# bfm/configs/hydra/launcher/submitit_slurm_bfm.yaml) to run the seeds in parallel.
#
# Results land in runs/<algorithm>/<domain>/rnd/<memory>/seed<seed>/; the report divides each
# POMDP cell by the same method's fully observed runs (section "Fully observed references"):
#   python plot_results.py runs --out report
#
# Assumptions (not recorded in the paper's code; change here if you know better):
#   - 5 seeds (0-4) per cell;
#   - changed dynamics: datasets collected at mass/damping multipliers 0.5 and 1.5
#     (`python exorl_reformatter.py walker_rnd --collect --multiplier 0.5`, idem 1.5), evaluated at
#     1.0 (interpolation) and 0.25, 2.0 (extrapolation).
#
# Usage: bash experiments/paper_commands.sh [--dry-run]   (prints the commands with --dry-run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-0,1,2,3,4}
run() { if [[ "${1:-}" == "--dry-run" ]]; then shift; echo "$*"; else shift; "$@"; fi; }
MODE=${1:-}
cell() { run "$MODE" "$PY" main_exorl.py "$@" -m "seed=$SEEDS"; }

# Datasets (ExORL RND, about 2.5-7.6 GB each).
for d in walker cheetah quadruped; do run "$MODE" "$PY" exorl_reformatter.py "${d}_rnd"; done

# --- POMDP table: noise / flickering x walker / cheetah / quadruped x FB, HILP, FB-stack, FB-M ---
for pomdp in noise flickering; do
  for d in walker cheetah quadruped; do
    cell fb "${d}_${pomdp}" rnd                              # FB
    cell hilp "${d}_${pomdp}" rnd                            # HILP
    cell fb_m "${d}_${pomdp}" rnd --memory_type=mlp          # FB-stack (frame stacking)
    cell fb_m "${d}_${pomdp}" rnd --memory_type=gru          # FB-M
    cell hilp_m "${d}_${pomdp}" rnd --memory_type=gru        # HILP-M
  done
done

# --- Fully observed references (denominators of the normalised scores) ---
for d in walker cheetah quadruped; do
  cell fb "$d" rnd
  cell hilp "$d" rnd
  cell fb_m "$d" rnd --memory_type=mlp
  cell fb_m "$d" rnd --memory_type=gru
  cell hilp_m "$d" rnd --memory_type=gru
done

# --- Other POMDPs of the paper's appendix (dropped sensors, removed velocities) ---
for pomdp in sensors occluded; do
  for d in walker cheetah quadruped; do
    cell fb "${d}_${pomdp}" rnd
    cell fb_m "${d}_${pomdp}" rnd --memory_type=gru
  done
done

# --- Failure modes: corruption only in what F/pi see, or only in what B sees (walker) ---
for stream in dynamics rewards; do
  for pomdp in noise flickering; do
    cell fb "walker_${stream}_${pomdp}" rnd
    cell fb_m "walker_${stream}_${pomdp}" rnd --memory_type=gru
  done
done

# --- Changed dynamics: train at 0.5 and 1.5, evaluate interpolating (1.0) and extrapolating ---
for d in walker cheetah quadruped; do
  for m in 0.5 1.5; do run "$MODE" "$PY" exorl_reformatter.py "${d}_rnd" --collect --collect_steps 10000000 --multiplier "$m"; done
  cell fb_m "$d" rnd --memory_type=gru --train_multipliers 0.5 1.5 --eval_multipliers 0.25 1.0 2.0
  cell hilp_m "$d" rnd --memory_type=gru --train_multipliers 0.5 1.5 --eval_multipliers 0.25 1.0 2.0
  cell hilp "$d" rnd --train_multipliers 0.5 1.5 --eval_multipliers 0.25 1.0 2.0
done

# --- Memory ablation (walker_flickering): memory model x where memory is used ---
for mem in gru transformer s4d; do
  cell fb_m walker_flickering rnd --memory_type="$mem"                      # memory in F/pi and B
  cell fb_m walker_flickering rnd --memory_type="$mem" --no-recurrent_B     # F/pi only
  cell fb_m walker_flickering rnd --memory_type="$mem" --no-recurrent_F     # B only
done
