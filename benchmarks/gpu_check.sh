#!/usr/bin/env bash
# One prepared GPU session, under 8 minutes: the compiled kernels against the dense backend (N up to 8,192), the
# side-by-side sweep, the large-N Triton sweep, and one forward+backward at N = 1,048,576 for the memory claim.
# Writes everything under $OUT (or benchmarks/results/gpu-<date> when OUT is unset); the CSV grows row by row, so a
# step stopped by its time limit keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%d)}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CUBLAS_WORKSPACE_CONFIG=:4096:8
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
timeout 150 python -m pytest -q -x tests/gpu 2>&1 | tee "$out/gpu_tests.log"
timeout 120 python benchmarks/bench_loss.py --device cuda --dtype bfloat16 --d 512 --passes forward+backward \
    --n 1024 4096 16384 --out "$out" 2>&1 | tee "$out/bench_small.log"
timeout 120 python benchmarks/bench_loss.py --device cuda --dtype bfloat16 --d 512 --passes forward+backward \
    --n 65536 262144 --providers unicl-triton inf-cl --labels unique mixed --out "$out" 2>&1 | tee "$out/bench_large.log"
timeout 60 python - <<'PY' 2>&1 | tee "$out/one_million.log"
import time, torch
from unicl import unicl_loss
n, d = 1 << 20, 512
image = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
text = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
labels = torch.randint(-1, 1000, (n,), device="cuda")
torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
start = time.perf_counter()
unicl_loss(image, text, labels, 20.0, backend="triton").backward()
torch.cuda.synchronize()
print(f"N={n} D={d} bf16 fwd+bwd: {time.perf_counter() - start:.1f} s (first call, includes autotuning), "
      f"extra memory {(torch.cuda.max_memory_allocated() - base) / 2**30:.2f} GiB")
PY
