#!/bin/sh
# Every GPU figure the README and the performance notes quote, in one run on one card
# (a few minutes on an H100 or H200). Each benchmark prints its table and writes JSON into
# $OUT (default gpu-out). Random weights of the real architectures; nothing is downloaded,
# except SAM 3 (skipped unless its weights are in the Hugging Face cache).
#
#   BASE=/path/to/older/checkout sh benchmarks/gpu_all.sh   # also that tree's model-only rates
#   STREAM_BASE=/path/to/older/checkout ...   # also that tree's folder-run cost (bench_stream)
#   DEVICE=cpu IMAGES=2 BATCHES="1 2" HOSTS=naclip sh benchmarks/gpu_all.sh   # a dry run
#
# Where open_clip, ftfy, wcwidth (and this project's pins of timm, typer, rich) are not
# installed, put their wheels on PYTHONPATH first.
set -e
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
IMAGES=${IMAGES:-64}
BATCHES=${BATCHES:-1 4 16}
HOSTS=${HOSTS:-proxyclip naclip}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
# shellcheck disable=SC2086
$PY benchmarks/bench_throughput.py --device "$DEVICE" --images "$IMAGES" --batches $BATCHES \
    --hosts $HOSTS --windows 16 32 64 --post-pass-mb 0 --groups 1 16 --io-threads 8 --worker-nice 10 --writers 6 8 \
    --json "$OUT/throughput.json" 2>&1 \
    | tee "$OUT/throughput.txt"
if [ -n "$BASE" ]; then
    # shellcheck disable=SC2086
    $PY benchmarks/bench_throughput.py --device "$DEVICE" --images "$IMAGES" --batches $BATCHES \
        --hosts $HOSTS --tree "$BASE" --model-only --json "$OUT/throughput-base.json" 2>&1 \
        | tee "$OUT/throughput-base.txt"
fi
$PY benchmarks/bench_memory.py --device "$DEVICE" --json "$OUT/memory.json" 2>&1 | tee "$OUT/memory.txt"
# shellcheck disable=SC2086
$PY benchmarks/bench_precision.py --device "$DEVICE" --hosts $HOSTS --json "$OUT/precision.json" 2>&1 \
    | tee "$OUT/precision.txt"
# the folder run's own cost in the process that drives the model, on this machine's cores
$PY benchmarks/bench_stream.py --no-threads --repeats 2 --busy-ops 300 --json "$OUT/stream.json" 2>&1 \
    | tee "$OUT/stream.txt"
if [ -n "$STREAM_BASE" ]; then
    $PY benchmarks/bench_stream.py --no-threads --repeats 2 --busy-ops 300 --tree "$STREAM_BASE" \
        --json "$OUT/stream-base.json" 2>&1 | tee "$OUT/stream-base.txt"
fi
# what a writer spends per image on this machine's cores (and, with STREAM_BASE, before)
$PY benchmarks/bench_outputs.py --json "$OUT/outputs.json" 2>&1 | tee "$OUT/outputs.txt"
if [ -n "$STREAM_BASE" ]; then
    $PY benchmarks/bench_outputs.py --tree "$STREAM_BASE" --json "$OUT/outputs-base.json" 2>&1 \
        | tee "$OUT/outputs-base.txt"
fi
# encoding class names not yet cached: the whole context against the end-of-text prefix
$PY benchmarks/bench_text.py --device "$DEVICE" --json "$OUT/text.json" 2>&1 | tee "$OUT/text.txt"
