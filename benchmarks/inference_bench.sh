#!/usr/bin/env bash
# BENCHMARKS.md "Inference" runs: the shipped models at 640x360, batch 1, 2 threads, against the
# fp32 eager PyTorch forward in the same run (medians, bare and end-to-end calls interleaved).
#
#   1. int8 Q/DQ graphs for each model, 8-bit weights (VNNI/AMX CPUs) and 7-bit (AVX2-only CPUs)
#      (cached; validated and recorded in the model cards by `enet-seg quantize ... --validate
#      --record [--weight-bits 7 --isa AVX2] [--bf16]`; here only built, a no-op when cached).
#      The auto/auto rows measure their candidates once (precision auto's probe) and cache it.
#   2. Run F: every CPU mode incl. int8 and the default-settings Segmenter (auto/auto), on this CPU.
#   3. Run F-AVX2: the same with the CPU limited to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2 for oneDNN in
#      torch and OpenVINO, ATEN_CPU_CAPABILITY=avx2 for torch's own kernels; ONNX Runtime's MLAS
#      does not honour either, so its rows in that run still use AVX-512/VNNI/AMX).
#   4. Sizes run (480x320, 1280x720) of run E, unchanged.
#
# Nothing else is paused: a background training job on the same machine shows in the loadavg
# recorded in each JSON (machine.loadavg_at_end) and in the two eager timings (eager_ms_medians).
# Usage: bash benchmarks/inference_bench.sh [OUT_DIR] [CACHE_DIR]   (from anywhere; ~30 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/bench}
CACHE=${2:-${ENET_SEG_CACHE:-$HOME/.cache/enet_seg_ros}}
PY=${PYTHON:-.venv/bin/python}
CAMVID=../shared/data/camvid
mkdir -p "$OUT"
lscpu > "$OUT/lscpu.txt"
W="--weights models/enet_camvid.safetensors --weights models/erfnet_camvid.safetensors --weights models/espnet_camvid.safetensors"
for a in enet erfnet espnet; do
  EX=""; [ "$a" = enet ] && EX="--exclude /model/bottleneck1_0/*,/model/stage1.*"  # as recorded in its card
  # as recorded in its card (session 10's ESPNet: with nothing excluded it dropped 1.15 pt on val)
  [ "$a" = espnet ] && EX="--calibrate percentile --exclude first_conv,last_conv"
  # shellcheck disable=SC2086
  $PY -m enet_seg_ros.cli quantize "models/${a}_camvid.safetensors" --calib "$CAMVID/train" --size 640x360 $EX \
    --cache-dir "$CACHE"
  # The 7-bit graph of the card's AVX2-class record (CPUs without VNNI; run F-AVX2 uses it).
  # ENet's AVX2 record keeps bottleneck2_0 and the initial conv in float too, percentile ranges.
  [ "$a" = enet ] && EX="--exclude /model/bottleneck1_0/*,/model/stage1.*,/model/bottleneck2_0/*,first_conv --calibrate percentile"
  # shellcheck disable=SC2086
  $PY -m enet_seg_ros.cli quantize "models/${a}_camvid.safetensors" --calib "$CAMVID/train" --size 640x360 $EX \
    --weight-bits 7 --cache-dir "$CACHE"
done
MODES=torch/default,torch/bf16,onnxruntime/default,onnxruntime/int8,openvino/default,openvino/bf16,openvino/int8,auto/auto
COMMON="--arch all $W --size 640x360 --runs 15 --threads 2 --cache-dir $CACHE --agreement $CAMVID/val --agreement-limit 101"
# shellcheck disable=SC2086
$PY -m enet_seg_ros.cli bench $COMMON --modes "$MODES" --json "$OUT/bench_640x360_runF.json" \
  --markdown "$OUT/bench_640x360_runF.md"
# shellcheck disable=SC2086
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 $PY -m enet_seg_ros.cli bench $COMMON \
  --modes torch/default,onnxruntime/default,onnxruntime/int8,openvino/default,openvino/int8,auto/auto \
  --json "$OUT/bench_640x360_runF_avx2.json" --markdown "$OUT/bench_640x360_runF_avx2.md"
if [ "${SIZES:-0}" = 1 ]; then
  # shellcheck disable=SC2086
  $PY -m enet_seg_ros.cli bench --arch all $W --backend torch,torch+compile,onnxruntime,openvino --precision default,bf16 \
    --size 480x320,1280x720 --runs 15 --threads 2 --json "$OUT/bench_sizes.json" --markdown "$OUT/bench_sizes.md"
fi
