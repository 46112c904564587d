#!/usr/bin/env bash
# BENCHMARKS.md "Inference" run: the shipped models, four CPU backends, fp32 + bf16, agreement on
# CamVid val at 640x360, speed at 480x320 and 1280x720. Background `enet-seg train` jobs are
# paused (SIGSTOP) while it runs and resumed afterwards, so the timings see a quiet machine.
# Usage: bash benchmarks/inference_bench.sh [OUT_DIR]   (from anywhere; about 12 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/bench}
mkdir -p "$OUT"
PIDS=$(pgrep -f "enet-seg train" | tr '\n' ' ' || true)
[ -n "$PIDS" ] && kill -STOP $PIDS
trap '[ -n "$PIDS" ] && kill -CONT $PIDS' EXIT
W="--weights models/enet_camvid.safetensors --weights models/erfnet_camvid.safetensors --weights models/espnet_camvid.safetensors"
.venv/bin/enet-seg bench --arch all $W --backend torch,torch+compile,onnxruntime,openvino --precision default,bf16 \
  --size 640x360 --runs 15 --threads 2 --agreement ../shared/data/camvid/val \
  --json "$OUT/bench_640x360.json" --markdown "$OUT/bench_640x360.md"
.venv/bin/enet-seg bench --arch all $W --backend torch,torch+compile,onnxruntime,openvino --precision default,bf16 \
  --size 480x320,1280x720 --runs 15 --threads 2 --json "$OUT/bench_sizes.json" --markdown "$OUT/bench_sizes.md"
