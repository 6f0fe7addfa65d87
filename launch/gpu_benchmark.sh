#!/usr/bin/env bash
# The GPU measurement of BENCHMARKS.md as one short script (about 5 minutes on one H100):
# training step at batch 10, crop 321, MSC, bf16 (+ MSC evaluation at 513) with a profile of
# three steps, then the same step with other ways of computing the convolutions.
#
#   OUT=/tmp/gpu_bench bash launch/gpu_benchmark.sh   # writes JSON, HLO, trace and logs to $OUT
#   VARIANTS="atrous_conv=dilated" ...                # config.model overrides, one run each
#                                  # (default "atrous_conv=taps conv_kernel_grad=taps")
#
# Each run is capped by `timeout`, so a slow one cannot eat the time of the ones after it.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_bench}
CONFIG=${CONFIG:-configs/coco_zlss.py}
STEPS=${STEPS:-10}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
bench() {  # bench NAME SECONDS ARGS...
  local name=$1 seconds=$2
  shift 2
  echo "=== $name"
  timeout "$seconds" python3 -m spnet_jax.bench.benchmark --config "$CONFIG" \
    --config.train.accumulation_steps=1 --config.model.dtype=bfloat16 --warmup 3 \
    --steps "$STEPS" --json "$OUT/$name.json" "$@" 2>&1 | grep -v "^[IW][0-9]" | tee "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())"
bench bf16_msc 240 --parts train,eval --hlo_file "$OUT/train_step_hlo.txt" \
  --profile_dir "$OUT/profile"
# The trace sits 4 folders down; bring it up to where the device tool fetches files from.
find "$OUT/profile" -name "perfetto_trace.json.gz" -exec cp {} "$OUT/bf16_msc_trace.json.gz" \;
rm -rf "$OUT/profile"
gzip -f "$OUT/train_step_hlo.txt"
# Other ways to compute the convolutions (config.model.atrous_conv / conv_kernel_grad), on the
# same machine: the native dilated step was 95.9 ms on an H100 (BENCHMARKS.md).
for variant in ${VARIANTS:-atrous_conv=taps conv_kernel_grad=taps}; do
  bench "bf16_msc_${variant//=/_}" 200 --parts train --measure_peak=false \
    "--config.model.$variant"
done
echo "=== summary"
grep -h -B1 -A3 "^part " "$OUT"/*.log
