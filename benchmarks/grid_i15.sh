#!/usr/bin/env bash
# The issue-15 grid, resumable, one worker per core: configs/fedgalore_grid.yaml's methods split in
# two, seed by seed (every alpha of seed 0 first, so paired cells finish together), and the vision
# preset's three methods x 3 seeds. Cells land as text in benchmarks/results/grid-i15-{a,b} and
# vision-i15; rerunning skips what is kept there.
#   nohup benchmarks/grid_i15.sh a > a.log 2>&1 &    nohup benchmarks/grid_i15.sh vision b > b.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A methods=(
  [a]="fedgalore fedgalore_sync_mean fedgalore_ajive_k1 fedgalore_svd_only fedgalore_random_only fedavg_full"
  [b]="fedit fedftg flexlora ffa_lora fedgalore_sync_none fedgalore_sync_reset"
)
for part in "$@"; do
  if [ "$part" = vision ]; then
    benchmarks/run_cells.sh configs/vision.yaml vision-i15 0.5 0,1,2 fedit fedgalore fedavg_full
  else
    # shellcheck disable=SC2086  # the method list splits on spaces
    for seed in 0 1 2; do benchmarks/run_cells.sh configs/fedgalore_grid.yaml "grid-i15-$part" 0.1,0.5,10 "$seed" ${methods[$part]}; done
  fi
done
