#!/usr/bin/env bash
# torch-CUDA backend timings: ENet / ERFNet / ESPNet at 640x360, 1280x720 and 2048x1024, fp32 and
# fp16, eager vs CUDA graphs, bare (backend call) and end-to-end (Segmenter.segment), JSON into DIR.
# Needs one NVIDIA GPU and torch with CUDA; no rclpy, OpenVINO or TensorRT. About 90 s.
# Usage: bash benchmarks/gpu_cuda_bench.sh --out DIR [--smoke] [--tests]
#   --smoke: the same script on the CPU at 64x48 (eager only), a few seconds, to check it works.
#   --tests: first run the GPU tests (test/test_engine_cuda.py, test/test_gpu_tensorrt.py; the
#            TensorRT ones skip without TensorRT) into DIR/cuda_tests.{log,xml}, rc in
#            DIR/cuda_tests.rc; the timings run whatever the tests say.
# Python: $PYTHON, else the repo's .venv, else python3. The repo goes first on PYTHONPATH.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
ARGS=()
TESTS=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tests) TESTS=1 ;;
    --out) OUT="${2:-}"; ARGS+=("$1" "${2:-}"); shift ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
if [ "$TESTS" = 1 ]; then
  [ -n "$OUT" ] || { echo "gpu_cuda_bench.sh: --tests needs --out DIR" >&2; exit 2; }
  mkdir -p "$OUT"
  rc=0
  (cd "$REPO" && "$PY" -m pytest -q -rs test/test_engine_cuda.py test/test_gpu_tensorrt.py \
      --junitxml "$OUT/cuda_tests.xml") >"$OUT/cuda_tests.log" 2>&1 || rc=$?
  echo "$rc" >"$OUT/cuda_tests.rc"
  tail -n 5 "$OUT/cuda_tests.log"
fi
exec "$PY" "$HERE/gpu_cuda_bench.py" "${ARGS[@]}"
