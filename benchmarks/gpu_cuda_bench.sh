#!/usr/bin/env bash
# torch-CUDA backend timings: ENet / ERFNet / ESPNet at 640x360, 1280x720 and 2048x1024, fp32 and
# fp16, eager vs CUDA graphs, bare (backend call) and end-to-end (Segmenter.segment), JSON into DIR.
# Needs one NVIDIA GPU and torch with CUDA; no rclpy, OpenVINO or TensorRT. About 90 s.
# Usage: bash benchmarks/gpu_cuda_bench.sh --out DIR [--smoke]
#   --smoke: the same script on the CPU at 64x48 (eager only), a few seconds, to check it works.
# Python: $PYTHON, else the repo's .venv, else python3. The repo goes first on PYTHONPATH.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" "$HERE/gpu_cuda_bench.py" "$@"
