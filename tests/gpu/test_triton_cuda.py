"""The compiled Triton schedules and the chunked backend on a CUDA GPU against float64 (skipped without CUDA).

The GPU mirror of tests/kernels/test_triton_interpreter.py, plus what the CPU interpreter cannot reach: ragged
batch sizes, D up to 1,024, N = 131,072 with super-chunks, and every dtype on real tensor cores. Every value is
compared with float64 computed from the same rounded inputs, within the fixed relative bounds of
``_compare.BOUNDS``; no configuration is compared with itself or with a low-precision baseline.

Compiles (Hopper, from the autotune tables of unicl/loss/kernels): a kernel compiles once per (tile configuration,
dtype, integer specialisation — Triton specialises each integer argument on ``== 1`` and on divisibility by 16 —
and constexpr flags) in each process, and autotuning compiles every candidate the first time. The parametrised
loss test meets three specialisations (N = 1; N = 17 with D = 200; N = 1,000 or 4,097 with D a multiple of 16) per
(schedule, dtype): 3 × (3 + 2) half-precision and 3 × (2 + 2) float32 compiles for each schedule, 84 in all; the
rows-only, rectangular-launcher and opcheck tests add about 4 per (schedule, dtype) and the N = 131,072 test 5 per
schedule and half dtype (4 in float32): about 140 compiles of 1-3 s, spread by benchmarks/gpu_tests.py over one
process per group of tests/gpu/_groups.py, so the largest group compiles about 20 of them. The torch.compile tests
add Inductor's own kernels, in their own processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from _compare import (
    BOUNDS,
    DTYPE_IDS,
    FLOAT16_LOSS_SCALE,
    assert_relative_close,
    cancelling_sizes,
    compare_outputs,
    exact_leaves,
    float64_reference,
    float64_terms,
    loss_and_grads,
    make_features,
    make_labels,
    upstream_weights,
)

from unicl import unicl_loss
from unicl.loss.backends import row_terms
from unicl.loss.targets import target_keys

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

#: The backends under test, by the id the test groups use.
BACKENDS = {"onepass": "triton", "rowwise": "triton_rowwise", "chunked": "chunked"}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SCHEDULES = ["onepass", "rowwise"]


@dataclass(frozen=True)
class Case:
    """One batch shape of the parametrised loss test."""

    n: int
    d: int
    labels: str
    reduction: str
    chunk_size: int | None = None

    @property
    def id(self) -> str:
        return f"n{self.n}-d{self.d}-{self.labels}-{self.reduction}"


#: Ragged sizes (none a multiple of the tiles), every class of D (one K step of the similarity tile at 64, a ragged
#: 200, and 512 and 1,024, which the two-pass backward walks in 2 to 8 BLOCK_D column blocks), every label kind and
#: reduction. The N = 4,097 case walks the one-pass schedule and the chunked backend in blocks of 1,000 rows (five
#: super-chunks, the last of 97 rows).
CASES = [
    Case(1, 64, "none", "none"),
    Case(17, 200, "mixed", "sum"),
    Case(1000, 512, "none", "none"),
    Case(1000, 512, "mixed", "none"),
    Case(1000, 512, "one_class", "none"),
    Case(4097, 1024, "mixed", "mean", chunk_size=1000),
]


def _grad_scale(dtype: torch.dtype, reduction: str) -> float:
    return FLOAT16_LOSS_SCALE if dtype == torch.float16 and reduction == "mean" else 1.0


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_loss_and_gradients_match_float64(backend, dtype, case):
    """The loss (per sample for ``reduction="none"``) and its gradients for the image and text features and the
    logit scale."""
    seed = case.n + case.d
    image, text = make_features(case.n, case.d, dtype, seed)
    labels = make_labels(case.labels, case.n, seed)
    scale = torch.tensor(30.0, device="cuda", requires_grad=True)
    upstream = upstream_weights(case.n, seed) if case.reduction == "none" else None

    def loss_fn(u, v, s):
        return unicl_loss(
            u, v, labels, s, backend=BACKENDS[backend], reduction=case.reduction, chunk_size=case.chunk_size
        )

    got = loss_and_grads(loss_fn, image, text, scale, upstream, _grad_scale(dtype, case.reduction))
    want = float64_reference(image, text, labels, scale, case.reduction, upstream)
    # A batch of one has loss logsumexp(S_11) - S_11 = 0 and zero gradients: errors are measured against S_11.
    sizes = cancelling_sizes(image, text, scale, upstream) if case.n == 1 else None
    failures = compare_outputs(got, want, dtype, f"{backend} {DTYPE_IDS[dtype]} {case.id}", sizes)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_large_batch_with_super_chunks_matches_float64(dtype):
    """N = 131,072 (mixed labels, mean loss) for both Triton schedules, the one-pass one in super-chunks of 40,000
    rows (four forward and four backward launches, the last of 11,072 rows), and the chunked backend, against the
    chunked backend in float64 (a dense float64 ``S`` would be 137 GB). float32 runs at D = 64: its exact products
    run on the CUDA cores, about a fifteenth of the tensor-core rate. The one-pass schedule's peak extra memory is
    its documented workspace plus ``O(N·D)``: a float32 ``N × N`` matrix alone would be 69 GB."""
    n, d, rows = 131072, 64 if dtype == torch.float32 else 512, 40000
    image, text = make_features(n, d, dtype, seed=11)
    labels = make_labels("mixed", n, seed=11)
    scale = torch.tensor(30.0, device="cuda", requires_grad=True)
    grad_scale = _grad_scale(dtype, "mean")
    want = float64_reference(image, text, labels, scale, "mean", None, chunked=True)
    failures = []
    for backend, chunk_size in [("onepass", rows), ("rowwise", None), ("chunked", None)]:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()

        def loss_fn(u, v, s, backend=backend, chunk_size=chunk_size):
            return unicl_loss(u, v, labels, s, backend=BACKENDS[backend], chunk_size=chunk_size)

        got = loss_and_grads(loss_fn, image, text, scale, None, grad_scale)
        extra = torch.cuda.max_memory_allocated() - baseline
        failures += compare_outputs(got, want, dtype, f"{backend} {DTYPE_IDS[dtype]} N={n} D={d}")
        if backend == "onepass":
            # Backward weights of one super-chunk (rows x N in the features' dtype), forward column partials (at
            # most one float32 row of N per 32 rows), and O(N·D) for features, gradients and their float64 copies.
            workspace = rows * n * image.element_size() + -(-rows // 32) * n * 4
            limit = workspace + 64 * n * d
            print(f"onepass extra memory {extra / 2**30:.2f} GiB (limit {limit / 2**30:.2f} GiB)")
            if extra >= limit:
                failures.append(f"onepass extra memory {extra} B >= {limit} B")
        del got
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_rows_only_block_matches_float64(backend, dtype):
    """``unicl.loss.backends.row_terms`` as distributed local mode calls it: a rank's 300 rows (global rows 200-499)
    against all 1,000 columns, only the row terms (the one-pass engine takes its rows-only forward, the row kernel
    alone, and its backward without column weights)."""
    n, d, offset, rows = 1000, 64, 200, 300
    image, text = make_features(n, d, dtype, seed=5)
    keys = target_keys(make_labels("mixed", n, seed=5), n, torch.device("cuda"))
    local = image.detach()[offset : offset + rows].clone().requires_grad_()
    row_keys = keys[offset : offset + rows]
    scale = torch.tensor(30.0, device="cuda", requires_grad=True)
    upstream = upstream_weights(rows, seed=5)

    def terms(u, v, s):
        return row_terms(u, v, s, row_keys, keys, normalize=True, backend=BACKENDS[backend])

    got = loss_and_grads(terms, local, text, scale, upstream, 1.0)
    x, y, s = exact_leaves(local, text, scale)
    want = loss_and_grads(
        lambda u, v, c: float64_terms(u, v, row_keys, keys, c, columns=False)[0], x, y, s, upstream.double(), 1.0
    )
    failures = compare_outputs(got, want, dtype, f"{backend} {DTYPE_IDS[dtype]} rows-only {rows}x{n}")
    assert not failures, "\n".join(failures)


def _rectangular_block(dtype: torch.dtype, normalized: bool):
    """``q [300, 64]``, ``k [1000, 64]`` in ``dtype``, their factors, the scale, upstream weights and the float64
    ``S`` with its row and column log-sum-exp."""
    generator = torch.Generator(device="cuda").manual_seed(6)
    q = torch.randn(300, 64, device="cuda", generator=generator).to(dtype)
    k = torch.randn(1000, 64, device="cuda", generator=generator).to(dtype)
    if normalized:
        q_scale, k_scale = 1 / q.float().norm(dim=1), 1 / k.float().norm(dim=1)
        scale = torch.tensor(12.0, device="cuda")
    else:
        q_scale, k_scale = torch.ones(300, device="cuda"), torch.ones(1000, device="cuda")
        scale = torch.tensor(0.5, device="cuda")  # raw rows have norms near 8: logits of about the same spread
    g = torch.rand(300, device="cuda", generator=generator)
    h = torch.rand(1000, device="cuda", generator=generator)
    sim = scale.double() * (q_scale.double()[:, None] * q.double()) @ (k_scale.double()[:, None] * k.double()).T
    return q, k, q_scale, k_scale, scale, g, h, sim, torch.logsumexp(sim, 1), torch.logsumexp(sim, 0)


def _weights64(sim, q_lse, k_lse, g, h) -> torch.Tensor:
    """``g_i·exp(S_ij − r_i) + h_j·exp(S_ij − c_j)`` in float64, with ``None`` weights as zero."""
    weights = torch.zeros_like(sim)
    if g is not None:
        weights += g.double()[:, None] * torch.exp(sim - q_lse[:, None])
    if h is not None:
        weights += h.double()[None, :] * torch.exp(sim - k_lse[None, :])
    return weights


@pytest.mark.parametrize("normalized", [False, True], ids=["raw", "inverse-norms"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_launchers_on_rectangular_blocks_match_float64(schedule, dtype, normalized):
    """The registered operators on an ``M != N`` block, with and without the inverse-norm factors and with each
    weight absent in turn: the one-pass statistics over several super-chunks (of 100 rows) and column ranges (of 80
    columns, not a whole number of tiles), and the softmax weights; the two-pass row log-sum-exp and softmax
    gradient."""
    from unicl.loss.kernels.one_pass import one_pass_logsumexp, one_pass_weights
    from unicl.loss.kernels.tiles import row_logsumexp
    from unicl.loss.kernels.two_pass import two_pass_grad

    q, k, q_scale, k_scale, scale, g, h, sim, q_lse, k_lse = _rectangular_block(dtype, normalized)
    statistic_bound, grad_bound = BOUNDS[dtype]
    if schedule == "onepass":
        for rows_per_chunk, cols_per_range in [(300, 256), (100, 80)]:
            row_lse, col_lse = one_pass_logsumexp(q, k, scale, q_scale, k_scale, rows_per_chunk, cols_per_range)
            what = f"one_pass_logsumexp rows {rows_per_chunk} cols {cols_per_range}"
            assert_relative_close(row_lse, q_lse, statistic_bound, f"{what}: rows")
            assert_relative_close(col_lse, k_lse, statistic_bound, f"{what}: columns")
    else:
        assert_relative_close(row_logsumexp(q, k, scale, q_scale, k_scale), q_lse, statistic_bound, "rows")
        assert_relative_close(row_logsumexp(k, q, scale, k_scale, q_scale), k_lse, statistic_bound, "columns")
    for row_weight, col_weight in [(g, h), (g, None), (None, h)]:
        expected = _weights64(sim, q_lse, k_lse, row_weight, col_weight) * k_scale.double()[None, :]
        arguments = (q, k, scale, q_scale, k_scale, q_lse.float(), k_lse.float(), row_weight, col_weight)
        what = f"weights g={row_weight is not None} h={col_weight is not None}"
        if schedule == "onepass":
            weights = one_pass_weights(*arguments)
            assert weights.dtype == dtype
            assert_relative_close(weights, expected, grad_bound, f"one_pass_weights {what}")
        else:
            expected = q_scale.double()[:, None] * (expected @ k.double())
            assert_relative_close(two_pass_grad(*arguments), expected, grad_bound, f"two_pass_grad {what}")


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_operators_pass_opcheck_on_cuda(schedule):
    """Schema, fake (meta) implementation and dispatch of the torch.library operators on CUDA tensors."""
    from unicl.loss.kernels.one_pass import one_pass_logsumexp, one_pass_weights
    from unicl.loss.kernels.tiles import row_logsumexp
    from unicl.loss.kernels.two_pass import two_pass_grad

    q, k, q_scale, k_scale, scale, g, h, _, q_lse, k_lse = _rectangular_block(torch.float32, True)
    q_lse, k_lse = q_lse.float(), k_lse.float()
    utils = ("test_schema", "test_faketensor")
    if schedule == "onepass":
        torch.library.opcheck(one_pass_logsumexp, (q, k, scale, q_scale, k_scale, 100, 256), test_utils=utils)
        gradient_op = one_pass_weights
    else:
        torch.library.opcheck(row_logsumexp, (q, k, scale, q_scale, k_scale), test_utils=utils)
        gradient_op = two_pass_grad
    for weights in [(g, h), (g, None), (None, h)]:
        torch.library.opcheck(gradient_op, (q, k, scale, q_scale, k_scale, q_lse, k_lse, *weights), test_utils=utils)


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_torch_compile_fullgraph_matches_float64(backend):
    """``torch.compile(fullgraph=True)`` with Inductor (the default compiler) keeps the loss in one graph, forward
    and backward, and its results still match float64."""
    image, text = make_features(256, 64, torch.float32, seed=8)
    labels = make_labels("mixed", 256, seed=8)
    scale = torch.tensor(20.0, device="cuda", requires_grad=True)

    def step(u, v, s):
        return unicl_loss(u, v, labels, s, backend=BACKENDS[backend])

    got = loss_and_grads(torch.compile(step, fullgraph=True), image, text, scale, None, 1.0)
    want = float64_reference(image, text, labels, scale, "mean", None)
    failures = compare_outputs(got, want, torch.float32, f"torch.compile {backend}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("backend", [f"{schedule}-bf16" for schedule in SCHEDULES])
def test_deterministic_mode_repeats_bit_for_bit(monkeypatch, backend):
    """Run-to-run identity (a property of its own, not an accuracy check): no atomics in either schedule, so two
    runs under torch's deterministic mode give identical bits."""
    # torch's deterministic mode needs this for any cuBLAS call (benchmarks/gpu_check.sh exports it too).
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        image, text = make_features(3000, 256, torch.bfloat16, seed=7)
        labels = make_labels("mixed", 3000, seed=7)
        runs = []
        for _ in range(2):
            loss = unicl_loss(image, text, labels, 30.0, backend=BACKENDS[backend.split("-")[0]])
            runs.append((loss, *torch.autograd.grad(loss, [image, text])))
        for first, second in zip(*runs, strict=True):
            assert torch.equal(first, second)
    finally:
        torch.use_deterministic_algorithms(False)
