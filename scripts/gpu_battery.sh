#!/usr/bin/env bash
# The GPU battery, in parts that each end well inside one device call (10 minutes), in the order of
# their value. Run from the repository root on the GPU machine, with the dataset copied to .data/:
#   PYTHONPATH=. bash scripts/gpu_battery.sh PART "$OUT"
# Parts and their expected durations on an H100/H200 (estimates until the first GPU session
# replaces them with what it saw):
#   bench    ~4 min  the train step: JAX (both loops, cold and warm compile, default and fast XLA
#                    options), PyTorch eager and compiled
#   final    ~4 min  myrtle-final --runs 5, the same command again (warm compile), --loop epoch --runs 3
#   compare  ~7 min  compare --preset myrtle-final --runs 3 (JAX, PyTorch eager, PyTorch compiled)
#   rest     ~4 min  myrtle-resnet9 --runs 3, the bf16 XLA report of the train step, each fast XLA option alone
# Every command runs under `timeout` so a part cannot overrun its call. Each part writes at most
# 8 files into OUT (the device tool's limit) and prints its tables last (python -m jax_resnet_speed.results);
# paste them into docs/results.md with the command, device, date and versions.
set -uo pipefail
part=${1:?usage: gpu_battery.sh PART OUT_DIR}
out=${2:?usage: gpu_battery.sh PART OUT_DIR}
data=${DATA:-.data/cifar10-jpeg-q75.tar.gz}
cache=${CACHE:-.data/cache}  # outside OUT: the decoded cache is 185 MB
# A CPU rehearsal shrinks every command, e.g. TRAIN_EXTRA="--width-mult 0.0625 --batch-size 64
# --train-subset 512 --test-subset 200 --epochs 1" BENCH_EXTRA="--width-mult 0.0625 --batch-size 32 --steps 2".
train_extra=${TRAIN_EXTRA:-}
bench_extra=${BENCH_EXTRA:-}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
{ python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader; date -u; } > "$out/versions.txt" 2>&1
cat "$out/versions.txt"
# shellcheck disable=SC2086  # the *_EXTRA variables are lists of flags
train() { timeout "$1" python3 -m jax_resnet_speed.train --data "$data" --cache-dir "$cache" "${@:2}" $train_extra; }
# shellcheck disable=SC2086
bench() { timeout "$1" python3 -m jax_resnet_speed.bench --preset myrtle-final "${@:2}" $bench_extra; }

case $part in
  bench)
    {
      bench 150 --loops step,epoch --cold-compile --json "$out/bench-jax.json"
      bench 120 --loops step,epoch --xla-preset fast --cold-compile --json "$out/bench-jax-fast.json"
      bench 60 --framework torch --json "$out/bench-torch.json"
      bench 150 --framework torch --compile --json "$out/bench-torch-compile.json"
    } 2>&1 | tee "$out/bench.log" ;;
  final)
    timeout 60 python3 -m jax_resnet_speed.data prepare "$data" --cache-dir "$cache" > /dev/null 2>&1
    {
      train 150 --preset myrtle-final --runs 5 --json "$out/final.json"
      train 60 --preset myrtle-final --runs 1 --json "$out/final-warm.json"
      train 120 --preset myrtle-final --runs 3 --loop epoch --json "$out/final-epoch-loop.json"
    } 2>&1 | tee "$out/final.log" ;;
  compare)
    timeout 60 python3 -m jax_resnet_speed.data prepare "$data" --cache-dir "$cache" > /dev/null 2>&1
    # shellcheck disable=SC2086
    timeout 480 python3 -m jax_resnet_speed.compare --data "$data" --cache-dir "$cache" --preset myrtle-final \
      --runs 3 --out .data/compare $train_extra 2>&1 | tee "$out/compare.log"
    cp .data/compare/compare.json .data/compare/compare.md "$out/" ;;
  rest)
    timeout 60 python3 -m jax_resnet_speed.data prepare "$data" --cache-dir "$cache" > /dev/null 2>&1
    {
      train 150 --preset myrtle-resnet9 --runs 3 --json "$out/resnet9.json"
      train 90 --preset myrtle-final --epochs 1 --xla-dump .data/xla > /dev/null
      timeout 60 python3 -m jax_resnet_speed.xla_report .data/xla --expect-dtype bf16
      # Each option of --xla-preset fast alone, to keep only what measurably helps.
      python3 -c "from jax_resnet_speed.compilation import XLA_PRESETS; print('\n'.join(XLA_PRESETS['fast']))" |
        while read -r flag; do
          name=$(echo "${flag#--}" | cut -d= -f1)
          XLA_FLAGS="$flag" bench 90 --loops step,epoch --steps 20 --json "$out/bench-$name.json"
        done
    } 2>&1 | tee "$out/rest.log" ;;
  *) echo "error: unknown part $part; use bench, final, compare or rest" >&2; exit 2 ;;
esac
echo
python3 -m jax_resnet_speed.results "$out" | tee "$out/tables.md"
