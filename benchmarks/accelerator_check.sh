#!/usr/bin/env bash
# The prepared accelerator check: a throughput probe, then the reproduction at the gpu preset.
#
#   bash benchmarks/accelerator_check.sh                 # on one GPU (docs/accelerators.md)
#   ACCEL_CHECK_SIZE=tiny bash benchmarks/accelerator_check.sh   # seconds-scale, any CPU (tests)
#
# Everything goes under $OUT (default: accelerator_check/ here): install.log, probe.json and
# probe.md (train and PGD img/s, MFU against the chip's bf16 peak, both attention paths), then
# per seed a work directory seed<k>/ with runs/, results/main/<preset>/ and figures/, and
# timings.txt (wall seconds of each stage). Needs jax (with CUDA on a GPU), flax, optax, orbax
# and chex: the project installs with --no-deps. The reproduction also needs ml_collections,
# absl-py, tqdm, matplotlib and pillow; where one is missing it says which and stops after the
# probe. CIFAR-10 must be in $DIFFJAX_DATA_DIR (nothing is downloaded: --offline).
#
# Environment: ACCEL_CHECK_SIZE (gpu | tiny), ACCEL_CHECK_PROBE_S (probe budget, default 60),
# ACCEL_CHECK_SEEDS (default "0 1"; empty: the probe alone), PYTHON (default python).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/accelerator_check}
SIZE=${ACCEL_CHECK_SIZE:-gpu}
PROBE_S=${ACCEL_CHECK_PROBE_S:-60}
SEEDS=${ACCEL_CHECK_SEEDS-0 1}
PY=${PYTHON:-python}
mkdir -p "$OUT"
TIMINGS="$OUT/timings.txt"
: > "$TIMINGS"
stage() {  # stage NAME COMMAND...: run, log its wall seconds
  local name=$1 start=$SECONDS
  shift
  "$@"
  echo "$name $((SECONDS - start))" | tee -a "$TIMINGS"
}

case "$SIZE" in
  gpu) PROBE=(--size paper); PRESET=gpu ;;
  tiny) PROBE=(--size tiny --models DiffViT --batch 8); PRESET=mini ;;
  *) echo "ACCEL_CHECK_SIZE must be gpu or tiny, got $SIZE" >&2; exit 2 ;;
esac

# One interpreter start checks the install and names the devices (each start imports jax).
DEVICES="import diffjax, jax; print('jax', jax.__version__, jax.devices())"
if ! "$PY" -c "$DEVICES" > "$OUT/devices.txt" 2>/dev/null; then
  stage install "$PY" -m pip install --no-deps -e . > "$OUT/install.log" 2>&1
  "$PY" -c "$DEVICES" > "$OUT/devices.txt"
fi
cat "$OUT/devices.txt"

stage probe "$PY" -m benchmarks.throughput "${PROBE[@]}" --seconds "$PROBE_S" \
  --out "$OUT/probe.json" | tee "$OUT/probe.md"

missing=$("$PY" - <<'PYEOF'
import importlib.util
need = ("ml_collections", "absl", "tqdm", "matplotlib", "PIL")
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PYEOF
)
if [ -n "$missing" ]; then
  echo "accelerator_check: the reproduction needs the missing module(s): $missing" \
    "(pip install ml-collections absl-py tqdm matplotlib pillow); the probe is in $OUT" >&2
  exit 3
fi

for seed in $SEEDS; do
  stage "reproduction_seed$seed" "$PY" -m diffjax.experiments.cli run main \
    --config="main:$PRESET" --config.seed="$seed" --workdir "$OUT/seed$seed" \
    --compilation-cache "$OUT/jax_cache" --offline --quiet > "$OUT/seed$seed.log" 2>&1
  tail -n 20 "$OUT/seed$seed.log"
done
echo "accelerator_check: done; everything is under $OUT"
