#!/usr/bin/env bash
# Posts 5-7 at full scale on a lent GPU, one part per device call (at most 10 minutes):
#   PYTHONPATH=. bash scripts/gpu_experiments.sh PART "$OUT"
# PART: hp-lr-wd, hp-lr-momentum (post 5, one slice each), weight-decay (post 6), batch-norm
# (post 7). Each writes its PNG, JSON and summary into OUT (copy them to docs/experiments/ and
# say in docs/experiments.md where they came from). A part is stopped with SIGINT after LIMIT
# seconds (default 480; killed 20 s later) and then writes nothing: lower the grid
# (EXTRA="--grid 3") or the epochs and run it again. EXTRA: more flags for the experiment.
# Run it last, after scripts/gpu_battery.sh's parts and scripts/gpu_series.sh.
set -uo pipefail
part=${1:?usage: gpu_experiments.sh PART OUT_DIR}
out=${2:?usage: gpu_experiments.sh PART OUT_DIR}
data=${DATA:-.data/cifar10-jpeg-q75.tar.gz}
cache=${CACHE:-/tmp/jax_resnet_speed-cache}  # outside .data/, which a device call carries
limit=${LIMIT:-480}
extra=${EXTRA:-}
case $part in
  hp-lr-wd) module=hyperparameters; flags="--slices lr_wd" ;;
  hp-lr-momentum) module=hyperparameters; flags="--slices lr_momentum" ;;
  weight-decay) module=weight_decay; flags="" ;;
  batch-norm) module=batch_norm; flags="" ;;
  *) echo "error: unknown part $part; use hp-lr-wd, hp-lr-momentum, weight-decay or batch-norm" >&2; exit 2 ;;
esac
mkdir -p "$out"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" | tee "$out/versions.txt"
timeout -s INT -k 20 60 python3 -m jax_resnet_speed.data prepare "$data" --cache-dir "$cache" > "$out/prepare.log" 2>&1
timeout -s INT -k 20 "$limit" python3 -m "jax_resnet_speed.experiments.$module" --scale full --out "$out" \
  --data "$data" --cache-dir "$cache" $flags $extra 2>&1 | tee "$out/$part.log"
echo
tail -n 25 "$out/$part.log"
