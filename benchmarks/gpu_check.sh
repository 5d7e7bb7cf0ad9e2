#!/usr/bin/env bash
# One prepared GPU session, under 8 minutes: the compiled kernels against the dense backend, then the one-pass and
# two-pass Triton schedules side by side with dense, torch.compile(dense), open_clip's ClipLoss and Inf-CL from
# N = 4,096 to 262,144, then one forward+backward at N = 1,048,576. TFLOP/s count 8·N²·D; the fraction of peak is
# against the 790 TFLOP/s measured for large bf16 matmuls on an H200 (bench_loss.PEAK_TFLOPS).
#
# Inf-CL is not on the device machine: put its wheel in benchmarks/wheels/ first and carry that folder
#   pip download --no-deps inf-cl -d benchmarks/wheels
# Writes everything under $OUT (or benchmarks/results/gpu-<date> when OUT is unset); the CSV grows row by row, so a
# step stopped by its time limit keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%d)}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CUBLAS_WORKSPACE_CONFIG=:4096:8
if compgen -G "benchmarks/wheels/*.whl" > /dev/null; then
    pip install --quiet --no-deps --no-index benchmarks/wheels/*.whl 2>&1 | tail -1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
python benchmarks/cost_model.py --n 65536 --d 512 --dtype bfloat16 | tee "$out/cost_model.txt"
timeout 150 python -m pytest -q -x tests/gpu 2>&1 | tee "$out/gpu_tests.log"
timeout 100 python benchmarks/bench_loss.py --device cuda --dtype bfloat16 --d 512 --passes forward+backward \
    --n 4096 16384 --labels unique --providers unicl-triton unicl-triton-rowwise unicl-chunked unicl-dense \
    torch-compile-dense open_clip-ClipLoss inf-cl --out "$out" 2>&1 | tee "$out/bench_small.log"
timeout 140 python benchmarks/bench_loss.py --device cuda --dtype bfloat16 --d 512 --passes forward+backward \
    --n 65536 131072 262144 --labels unique mixed --providers unicl-triton unicl-triton-rowwise inf-cl \
    --out "$out" 2>&1 | tee "$out/bench_large.log"
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
seconds = time.perf_counter() - start
print(f"N={n} D={d} bf16 fwd+bwd one-pass: {seconds:.1f} s (first call, includes autotuning), "
      f"{8 * n * n * d / seconds / 1e12:.0f} TFLOP/s at 8N²D, "
      f"extra memory {(torch.cuda.max_memory_allocated() - base) / 2**30:.2f} GiB")
PY
