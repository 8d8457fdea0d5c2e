#!/usr/bin/env bash
# The series on a lent GPU, in parts that each fit one device call (at most 10 minutes):
#   PYTHONPATH=. bash scripts/gpu_series.sh PART "$OUT"
# PART: post8-a, post8-b, post8-c (post 8's ten steps, 3 runs each) or post1-4-a, post1-4-b
# (posts 1-4's headline recipes, 1 run each). Every part of a group writes into the same
# series folder under .data/ (ignored by git, kept between calls on a warm machine; carry it
# back otherwise), so the last part's series.md holds the whole table. A part is stopped with
# SIGINT after LIMIT seconds (default 480; killed 20 s later if it has not stopped):
# series.json keeps what finished, and running the same part again carries on from there.
# Copies the series files and the log to OUT. Run it after scripts/gpu_battery.sh's parts.
set -uo pipefail
part=${1:?usage: gpu_series.sh PART OUT_DIR}
out=${2:?usage: gpu_series.sh PART OUT_DIR}
data=${DATA:-.data/cifar10-jpeg-q75.tar.gz}
cache=${CACHE:-/tmp/jax_resnet_speed-cache}  # outside .data/, which a device call carries
limit=${LIMIT:-480}
extra=${EXTRA:-}  # more flags for the series, e.g. a CPU rehearsal: EXTRA="--width-mult 0.125 --epochs 1 ..."
case $part in
  post8-a) group=post8; runs=3; presets=post8-01-baseline,post8-02-gpu-preprocessing,post8-03-pool-before-bn ;;
  post8-b) group=post8; runs=3; presets=post8-04-label-smoothing,post8-05-celu,post8-06-ghost-bn ;;
  post8-c) group=post8; runs=3; presets=post8-07-frozen-bn-scale,post8-08-whitening,post8-09-ema,post8-10-tta ;;
  post1-4-a) group=post1-4; runs=1; presets=post1-baseline,post2-batch512 ;;
  post1-4-b) group=post1-4; runs=1; presets=post3-fp32-bn,post3-cutout,post3-batch768,myrtle-resnet9 ;;
  *) echo "error: unknown part $part; use post8-a, post8-b, post8-c, post1-4-a or post1-4-b" >&2; exit 2 ;;
esac
series_dir=.data/series-$group
mkdir -p "$out" "$series_dir"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee "$out/versions.txt"
timeout -s INT -k 20 60 python3 -m jax_resnet_speed.data prepare "$data" --cache-dir "$cache" > "$out/prepare.log" 2>&1
# Whatever ran before in this folder is the head of the table: run its presets too (skipped when finished).
done_before=$(python3 -c "import json,sys; print(','.join(json.load(open(sys.argv[1]))['selection']))" \
  "$series_dir/series.json" 2>/dev/null)
selection=$(python3 -c "import sys; names=[n for n in sys.argv[1].split(',') if n]; print(','.join(dict.fromkeys(names)))" \
  "$done_before,$presets")
timeout -s INT -k 20 "$limit" python3 -m jax_resnet_speed.series --presets "$selection" --runs "$runs" \
  --data "$data" --cache-dir "$cache" --out "$series_dir" $extra 2>&1 | tee "$out/series-$part.log"
cp "$series_dir"/series.* "$out/"
echo
tail -n 20 "$out/series-$part.log"
