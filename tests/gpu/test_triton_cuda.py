"""The compiled Triton backend on a real GPU against the dense backend (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from reference import assert_error_within_baseline, plain_loss

from unicl import unicl_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("backend", ["triton", "triton_rowwise", "chunked"])
@pytest.mark.parametrize("n", [1, 17, 1000, 4096, 8192])
@pytest.mark.parametrize("d", [64, 200, 512])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compiled_kernels_match_dense(n, d, dtype, backend):
    """Both Triton schedules, and the chunked backend's tensor-core products, against dense and float64."""
    generator = torch.Generator(device="cuda").manual_seed(n + d)
    image = torch.randn(n, d, device="cuda", generator=generator).to(dtype).requires_grad_()
    text = torch.randn(n, d, device="cuda", generator=generator).to(dtype).requires_grad_()
    labels = torch.randint(-1, max(2, n // 4), (n,), device="cuda", generator=generator)
    scale = torch.tensor(30.0, device="cuda", requires_grad=True)
    results = {}
    for name in (backend, "dense"):
        loss = unicl_loss(image, text, labels, scale, backend=name)
        results[name] = (loss, *torch.autograd.grad(loss, [image, text, scale]))
    exact_in = [image.detach().double().requires_grad_(), text.detach().double().requires_grad_()]
    exact_scale = scale.detach().double().requires_grad_()
    exact_value = plain_loss(*exact_in, labels, exact_scale)
    exact = (exact_value, *torch.autograd.grad(exact_value, [*exact_in, exact_scale]))
    plain_in = [image.detach().requires_grad_(), text.detach().requires_grad_()]
    plain_scale = scale.detach().to(dtype).requires_grad_()
    plain_value = plain_loss(*plain_in, labels, plain_scale)
    plain = (plain_value, *torch.autograd.grad(plain_value, [*plain_in, plain_scale]))
    if dtype == torch.float32:
        for got, want in zip(results[backend], results["dense"]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    else:
        unit = torch.finfo(dtype).eps
        smallest_norm = float(min(image.float().norm(dim=1).min(), text.float().norm(dim=1).min()))
        assert_error_within_baseline(results[backend], plain, exact, 2.0, unit * 2 * 30.0 / n / smallest_norm)


def test_torch_compile_keeps_the_loss_in_one_graph():
    image = torch.randn(256, 64, device="cuda", requires_grad=True)
    text = torch.randn(256, 64, device="cuda", requires_grad=True)
    labels = torch.randint(-1, 16, (256,), device="cuda")

    def step(u, v):
        return unicl_loss(u, v, labels, 20.0, backend="triton")

    compiled = torch.compile(step, fullgraph=True)
    torch.testing.assert_close(compiled(image, text), step(image, text), rtol=1e-5, atol=1e-5)
    compiled(image, text).backward()
    assert image.grad is not None


@pytest.mark.parametrize("chunk_size", [None, 1000])
def test_super_chunks_match_one_launch(chunk_size):
    """Several forward and backward super-chunks give the single launch's results (to float32 rounding)."""
    generator = torch.Generator(device="cuda").manual_seed(3)
    image = torch.randn(5000, 512, device="cuda", generator=generator, dtype=torch.bfloat16, requires_grad=True)
    text = torch.randn(5000, 512, device="cuda", generator=generator, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(-1, 100, (5000,), device="cuda", generator=generator)
    results = []
    for rows in (chunk_size, 5000):
        loss = unicl_loss(image, text, labels, 30.0, backend="triton", chunk_size=rows)
        results.append((loss, *torch.autograd.grad(loss, [image, text])))
    for got, want in zip(*results):
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "triton_rowwise"])
def test_large_batch_runs_in_linear_memory(backend):
    n, d = 262144, 256
    image = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    text = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    unicl_loss(image, text, None, 20.0, backend=backend).backward()
    extra = torch.cuda.max_memory_allocated() - baseline
    # O(N·D) plus the one-pass workspace (512 MiB by default): a float32 N×N matrix alone would be 275 GB.
    assert extra < 64 * n * d + (512 << 20)


@pytest.mark.parametrize("backend", ["triton", "triton_rowwise"])
def test_deterministic_mode_gives_identical_results_run_to_run(monkeypatch, backend):
    # torch's deterministic mode needs this for any cuBLAS call (benchmarks/gpu_check.sh exports it too).
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        generator = torch.Generator(device="cuda").manual_seed(7)
        image = torch.randn(3000, 256, device="cuda", generator=generator, dtype=torch.bfloat16, requires_grad=True)
        text = torch.randn(3000, 256, device="cuda", generator=generator, dtype=torch.bfloat16, requires_grad=True)
        labels = torch.randint(-1, 50, (3000,), device="cuda", generator=generator)
        runs = []
        for _ in range(2):
            loss = unicl_loss(image, text, labels, 30.0, backend=backend)
            runs.append((loss, *torch.autograd.grad(loss, [image, text])))
        for first, second in zip(*runs):
            assert torch.equal(first, second)
    finally:
        torch.use_deterministic_algorithms(False)
