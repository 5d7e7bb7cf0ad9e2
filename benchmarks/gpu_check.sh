#!/usr/bin/env bash
# One prepared GPU session: compiled-kernel tests against the dense backend, then the benchmark sweep.
# Writes everything under $OUT (or benchmarks/results/gpu-<date> when OUT is unset). Budget: under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%d)}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
timeout 180 python -m pytest -q -x tests/gpu tests/test_loss.py 2>&1 | tee "$out/gpu_tests.log"
timeout 270 python benchmarks/bench_loss.py --device cuda --dtype bfloat16 --d 512 --labels mixed unique \
    --passes forward+backward --n 1024 4096 16384 65536 262144 1048576 --out "$out" 2>&1 | tee "$out/bench.log"
