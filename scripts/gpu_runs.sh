#!/usr/bin/env bash
# The GPU measurements that docs/results.md asks for (trainer, compare, XLA report), in one script for one device session.
# Run from the repository root on the GPU machine, with the dataset copied to .data/:
#   PYTHONPATH=. bash scripts/gpu_runs.sh "$OUT"
# Logs, JSON and XLA dumps go under the given folder; a short table is printed last.
set -uo pipefail
out=${1:?usage: gpu_runs.sh OUT_DIR}
data=${DATA:-.data/cifar10-jpeg-q75.tar.gz}
cache=${CACHE:-.data/cache}  # outside OUT: the decoded cache is 185 MB
mkdir -p "$out"
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee "$out/versions.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$out/versions.txt"

python3 -m jax_resnet_speed.data prepare "$data" --cache-dir "$cache" | tee "$out/prepare.log"
python3 -m jax_resnet_speed.train --data "$data" --cache-dir "$cache" --preset myrtle-final --runs 5 \
  --json "$out/final.json" 2>&1 | tee "$out/final.log"
python3 -m jax_resnet_speed.train --data "$data" --cache-dir "$cache" --preset myrtle-resnet9 --runs 3 \
  --json "$out/resnet9.json" 2>&1 | tee "$out/resnet9.log"
python3 -m jax_resnet_speed.compare --data "$data" --cache-dir "$cache" --preset myrtle-final --runs 5 \
  --out "$out/compare" 2>&1 | tee "$out/compare.log"
python3 -m jax_resnet_speed.train --data "$data" --cache-dir "$cache" --preset myrtle-final --epochs 1 \
  --xla-dump "$out/xla" > "$out/xla_run.log" 2>&1
python3 -m jax_resnet_speed.xla_report "$out/xla" --expect-dtype bf16 2>&1 | tee "$out/xla_report.txt"

echo
echo "summary"
grep -h "runs: accuracy" "$out/final.log" "$out/resnet9.log"
cat "$out/compare/compare.md"
