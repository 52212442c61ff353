#!/usr/bin/env bash
# The issue-15 grid, resumable, one worker per core: configs/fedgalore_grid.yaml's methods split in
# two, seed by seed (every alpha of seed 0 first, so paired cells finish together), and the vision
# preset's three methods x 3 seeds. Cells land as text in benchmarks/results/grid-i15-{a,b} and
# vision-i15; rerunning skips what is kept there.
#   nohup benchmarks/grid_i15.sh a > a.log 2>&1 &    nohup benchmarks/grid_i15.sh vision b > b.log 2>&1 &
#   benchmarks/grid_i15.sh summary     # results/grid-*.json from the kept cells, then RESULTS.md's tables
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A methods=(
  [a]="fedgalore fedgalore_sync_mean fedgalore_ajive_k1 fedgalore_svd_only fedgalore_random_only fedavg_full"
  [b]="fedit fedftg flexlora ffa_lora fedgalore_sync_none fedgalore_sync_reset"
)
summary() {
  local py=${PYTHON:-.venv/bin/python}
  PYTHONPATH=src:benchmarks "$py" benchmarks/grid_summary.py benchmarks/results/grid-i15-a benchmarks/results/grid-i15-b \
    --name fedgalore-i15 --ref fedgalore --seeds 0,1,2 --alphas 0.1,0.5,10 \
    --methods fedgalore,fedgalore_sync_mean,fedgalore_sync_none,fedgalore_sync_reset,fedgalore_ajive_k1,fedgalore_svd_only,fedgalore_random_only,fedit,ffa_lora,fedftg,flexlora,fedavg_full \
    --note "Cells ran from code 5db43eb (configs/fedgalore_grid.yaml as committed), OMP_NUM_THREADS=1, 2-4 cells at a time" >/dev/null
  if compgen -G "benchmarks/results/vision-i15/alpha-*/seed-*/fedgalore/summary.json" >/dev/null; then
    PYTHONPATH=src:benchmarks "$py" benchmarks/grid_summary.py benchmarks/results/vision-i15 --name vision-i15 --ref fedgalore \
      --seeds 0,1,2 --methods fedgalore,fedit,fedavg_full --note "Cells ran from code 5db43eb (configs/vision_grid.yaml), OMP_NUM_THREADS=1" >/dev/null
  fi
  "$py" benchmarks/results_md.py
}
for part in "$@"; do
  if [ "$part" = summary ]; then
    summary
  elif [ "$part" = vision ]; then
    benchmarks/run_cells.sh configs/vision_grid.yaml vision-i15 0.5 0,1,2 fedit fedgalore fedavg_full
  else
    # shellcheck disable=SC2086  # the method list splits on spaces
    for seed in 0 1 2; do benchmarks/run_cells.sh configs/fedgalore_grid.yaml "grid-i15-$part" 0.1,0.5,10 "$seed" ${methods[$part]}; done
  fi
done
