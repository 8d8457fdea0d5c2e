#!/usr/bin/env bash
# The GPU battery, in parts that each end inside one device call (at most 10 minutes), in the order to
# run them. Run from the repository root on the GPU machine, with the dataset copied to .data/:
#   PYTHONPATH=. bash scripts/gpu_battery.sh PART "$OUT"
# Parts and their expected durations on an H100 (estimates, derived in docs/results.md, until a GPU
# session replaces them with what it saw):
#   headline        5-6.5 min preflight (~30 s); myrtle-final, airbench94 and airbench94-muon, --runs 5 each,
#                             full width, default precision; seconds to 93.0, 93.5 and 94.0% per preset
#   compare           ~6 min  JAX against PyTorch eager: myrtle-final and airbench94-muon, --runs 3 each
#   bench             ~4 min  the train step: JAX (both loops, cold and warm compile, default and fast XLA
#                             options), PyTorch eager and compiled
#   compare-compiled  ~6 min  JAX against torch.compile: myrtle-final --runs 3
#   rest              ~4 min  myrtle-resnet9 --runs 3, the bf16 XLA report of the train step, each fast XLA
#                             option alone
#   final             ~2 min  myrtle-final again (warm compilation cache), then --loop epoch --runs 3
#   records         ~6-7 min  preflight; the record (record94) --runs 5, airbench95 --runs 3, airbench96
#                             --runs 1 (from their A100 times: 2.0, 10.4 and 34.7 s a run, plus compiling
#                             and the per-epoch evaluations off the clock); run it right after headline
# After these: scripts/gpu_series.sh (the series) and scripts/gpu_experiments.sh (posts 5-7), part by part.
# Every command runs under `timeout -s INT -k 20`: at its limit it gets Ctrl-C, so the trainer and compare
# keep the runs that finished and write their JSON and table; it is killed only 20 s later. Each part
# writes at most 8 files into OUT (the device tool's limit) and prints its tables last
# (python -m jax_resnet_speed.results); paste them into docs/results.md with the command, device, date
# and versions.
set -uo pipefail
part=${1:?usage: gpu_battery.sh PART OUT_DIR}
out=${2:?usage: gpu_battery.sh PART OUT_DIR}
data=${DATA:-.data/cifar10-jpeg-q75.tar.gz}
# Outside .data/, so that .data/ holds only the 19 MB archive and stays inside what a device call carries
# (64 MiB): the decoded cache alone is 185 MB.
cache=${CACHE:-/tmp/jax_resnet_speed-cache}
work=${WORK:-/tmp/jax_resnet_speed-battery}  # compare's per-run files, the XLA dump
targets=0.93,0.935,0.94
# A CPU rehearsal (tests/test_gpu_battery.py) lets the preflight pass without a GPU and shrinks every
# command (flags given last win), e.g. ALLOW_CPU=1 TIME_SCALE=5 TRAIN_EXTRA="--width-mult 0.0625
# --batch-size 64 --train-subset 128 --test-subset 64 --epochs 2 --runs 1"
# BENCH_EXTRA="--width-mult 0.0625 --batch-size 32 --steps 2".
train_extra=${TRAIN_EXTRA:-}
time_scale=${TIME_SCALE:-1}  # every limit times this: a CPU rehearsal on a loaded machine needs more
bench_extra=${BENCH_EXTRA:-}
case $part in
  headline | compare | bench | compare-compiled | rest | final | records) ;;
  *) echo "error: unknown part $part; use headline, compare, bench, compare-compiled, rest, final or records" >&2
     exit 2 ;;
esac
export PYTHONUNBUFFERED=1
mkdir -p "$out" "$work"

# limit SECONDS COMMAND...: Ctrl-C at the limit (finished runs are kept), a kill 20 s later.
limit() { timeout -s INT -k 20 "$(($1 * time_scale))" "${@:2}"; }
# shellcheck disable=SC2086  # the *_EXTRA variables are lists of flags
train() { limit "$1" python3 -m jax_resnet_speed.train --data "$data" --cache-dir "$cache" "${@:2}" $train_extra; }
# shellcheck disable=SC2086
bench() { limit "$1" python3 -m jax_resnet_speed.bench --preset myrtle-final "${@:2}" $bench_extra; }
# compare_presets SECONDS NAME PRESET FRAMEWORKS: one compare run, its JSON and table copied to OUT as NAME.*
compare_presets() {
  rm -rf "${work:?}/$2"
  # Killed 30 s after its Ctrl-C: compare gives the run in progress 15 s to stop, then writes its table.
  # shellcheck disable=SC2086
  timeout -s INT -k 30 "$(($1 * time_scale))" python3 -m jax_resnet_speed.compare --data "$data" \
    --cache-dir "$cache" --preset "$3" --frameworks "$4" --runs 3 --out "$work/$2" $train_extra
  cp "$work/$2/compare.json" "$out/$2.json" && cp "$work/$2/compare.md" "$out/$2.md"
}
prepare() { limit 60 python3 -m jax_resnet_speed.data prepare "$data" --cache-dir "$cache" > /dev/null; }

limit 30 python3 - > "$out/versions.txt" 2>&1 <<'EOF'
import importlib.metadata as metadata
import jax
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "not installed")
try:
    import torch
    print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available())
except ImportError:
    pass
print("devices", jax.devices(), "kind", jax.devices()[0].device_kind)
EOF
{ command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
  date -u; } >> "$out/versions.txt" 2>&1
cat "$out/versions.txt"
if [ "$part" != bench ] && [ ! -e "$data" ]; then  # the trainer would try to download it: no network there
  echo "preflight failed: no dataset at $data; copy it to .data/ and name .data in the call's carry"
  exit 1
fi

case $part in
  headline | records)
    if [ "$part" = headline ]; then presets="myrtle-final airbench94 airbench94-muon"
    else presets="record94 airbench95 airbench96"; fi
    # A broken machine or a JAX that breaks the code must cost seconds, not the window.
    # shellcheck disable=SC2086
    limit 60 python3 scripts/gpu_preflight.py $presets 2>&1 | tee "$out/$part.log"
    status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ]; then
      echo "$part stopped by the preflight (exit $status)"
      exit 1
    fi
    {
      prepare
      for preset in $presets; do
        case $preset in
          myrtle-final) seconds=140 runs=5 ;; airbench94) seconds=100 runs=5 ;; airbench94-muon) seconds=90 runs=5 ;;
          record94) seconds=100 runs=5 ;; airbench95) seconds=110 runs=3 ;; airbench96) seconds=150 runs=1 ;;
        esac
        train "$seconds" --preset "$preset" --runs "$runs" --json "$out/$preset.json"
      done
    } 2>&1 | tee -a "$out/$part.log" ;;
  compare)
    {
      prepare
      compare_presets 220 compare-myrtle-final myrtle-final jax,torch
      compare_presets 150 compare-airbench94-muon airbench94-muon jax,torch
    } 2>&1 | tee "$out/compare.log" ;;
  bench)
    {
      bench 150 --loops step,epoch --cold-compile --json "$out/bench-jax.json"
      bench 120 --loops step,epoch --xla-preset fast --cold-compile --json "$out/bench-jax-fast.json"
      bench 60 --framework torch --json "$out/bench-torch.json"
      bench 150 --framework torch --compile --json "$out/bench-torch-compile.json"
    } 2>&1 | tee "$out/bench.log" ;;
  compare-compiled)
    {
      prepare
      compare_presets 420 compare-compiled-myrtle-final myrtle-final jax,torch-compile
    } 2>&1 | tee "$out/compare-compiled.log" ;;
  rest)
    {
      prepare
      train 150 --preset myrtle-resnet9 --runs 3 --json "$out/resnet9.json"
      rm -rf "${work:?}/xla"
      train 90 --preset myrtle-final --epochs 1 --xla-dump "$work/xla" > /dev/null
      limit 60 python3 -m jax_resnet_speed.xla_report "$work/xla" --expect-dtype bf16
      # Each option of --xla-preset fast alone, to keep only what measurably helps.
      python3 -c "from jax_resnet_speed.compilation import XLA_PRESETS; print('\n'.join(XLA_PRESETS['fast']))" |
        while read -r flag; do
          name=$(echo "${flag#--}" | cut -d= -f1)
          XLA_FLAGS="$flag" bench 60 --loops step,epoch --steps 20 --json "$out/bench-$name.json"
        done
    } 2>&1 | tee "$out/rest.log" ;;
  final)
    {
      prepare
      train 120 --preset myrtle-final --runs 1 --json "$out/final-warm.json"
      train 150 --preset myrtle-final --runs 3 --loop epoch --json "$out/final-epoch-loop.json"
    } 2>&1 | tee "$out/final.log" ;;
esac
echo
limit 30 python3 -m jax_resnet_speed.results --targets "$targets" "$out" | tee "$out/tables.md"
