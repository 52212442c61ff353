#!/usr/bin/env bash
# Run a compare grid one method at a time, niced and on one torch thread, keeping each finished method
# as text in benchmarks/results/NAME (keep_run.sh) so the grid can be committed as it goes and resumed
# in a later session (a rerun skips what is kept). Two workers on two cores: give each its own NAME.
#   benchmarks/run_cells.sh CONFIG NAME ALPHAS SEEDS METHOD...
#   e.g. benchmarks/run_cells.sh configs/fedgalore_grid.yaml grid-a 0.1,0.5,10 0,1,2 fedgalore fedit
set -euo pipefail
config=${1:?usage: run_cells.sh CONFIG NAME ALPHAS SEEDS METHOD...} name=${2:?} alphas=${3:?} seeds=${4:?}
shift 4
here=$(cd "$(dirname "$0")" && pwd) root=$(cd "$(dirname "$0")/.." && pwd)
fedsub=(python -c 'from fedsub.app.cli import main; main()')
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$root/runs"
[ -d "$here/results/$name" ] && [ ! -d "$root/runs/$name" ] && cp -r "$here/results/$name" "$root/runs/$name"
for method in "$@"; do
  echo "$(date -u +%FT%TZ) $name: $method"
  nice -n 19 "${fedsub[@]}" compare "$config" --methods "$method" --alphas "$alphas" --seeds "$seeds" \
    --out "$root/runs/$name" --quiet
  "$here/keep_run.sh" "$root/runs/$name" "$name" >/dev/null
done
echo "$(date -u +%FT%TZ) $name: done"
