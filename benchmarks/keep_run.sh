#!/usr/bin/env bash
# Copy a run or compare directory into benchmarks/results/ as text: configs, partitions, metrics,
# summaries, tables and plots; not models, checkpoints or TensorBoard events (.gitignore drops those
# too). A `fedsub compare --out benchmarks/results/NAME` then resumes the grid from what is kept.
#   benchmarks/keep_run.sh SRC_DIR NAME
set -euo pipefail
src=${1:?usage: keep_run.sh SRC_DIR NAME} name=${2:?usage: keep_run.sh SRC_DIR NAME}
dst="$(dirname "$0")/results/$name"
mkdir -p "$dst"
(cd "$src" && find . -type f ! -name '*.safetensors' ! -path '*/checkpoint/*' ! -path '*/tensorboard/*' -print0) |
  while IFS= read -r -d '' f; do mkdir -p "$dst/$(dirname "$f")" && cp -p "$src/$f" "$dst/$f"; done
echo "kept $src as $dst"
