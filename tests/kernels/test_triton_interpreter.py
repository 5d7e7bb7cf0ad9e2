"""The Triton backend against the dense backend and the float64 reference, through the CPU interpreter."""

from __future__ import annotations

import pytest
import torch
from reference import assert_matches_float64, float64_loss_and_grads, reference_loss

from unicl import unicl_loss
from unicl.loss.kernels.availability import interpreter_active
from unicl.loss.kernels.one_pass import one_pass_logsumexp, one_pass_weights
from unicl.loss.kernels.tiles import row_logsumexp
from unicl.loss.kernels.two_pass import two_pass_grad

# tests/conftest.py turns the interpreter on where there is no GPU; on a GPU, tests/gpu covers the compiled kernels.
pytestmark = pytest.mark.skipif(not interpreter_active(), reason="needs TRITON_INTERPRET=1 set before importing triton")

LABELS = {
    "none": lambda n, g: None,
    "all-equal": lambda n, g: torch.full((n,), 4),
    "all-pairs": lambda n, g: torch.full((n,), -1),
    "mixed": lambda n, g: torch.randint(-1, 3, (n,), generator=g),
}
#: Feature dimension per batch size: one not a multiple of 16, several that need more than one D tile (the two
#: largest sizes are the slow tier's: the interpreter takes seconds each).
SIZES = [
    (1, 8),
    (2, 40),
    (17, 5),
    pytest.param(64, 40, marks=pytest.mark.slow),
    pytest.param(130, 72, marks=pytest.mark.slow),
]
#: Both Triton schedules: the one-pass default and the earlier two-pass one.
TRITON_BACKENDS = ["triton", "triton_rowwise"]


def _inputs(n, d, dtype, labels, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(n, d, generator=generator).to(dtype).requires_grad_()
    text = torch.randn(n, d, generator=generator).to(dtype).requires_grad_()
    upstream = torch.rand(n, generator=generator) + 0.5
    return image, text, LABELS[labels](n, generator), upstream


def _loss_and_grads(image, text, labels, scale, backend, upstream):
    loss = unicl_loss(image, text, labels, scale, backend=backend, reduction="none")
    return (loss, *torch.autograd.grad((loss * upstream).sum(), [image, text, scale]))


@pytest.mark.parametrize("backend", TRITON_BACKENDS)
@pytest.mark.parametrize(("n", "d"), SIZES)
@pytest.mark.parametrize("labels", sorted(LABELS))
def test_float32_matches_dense(n, d, labels, backend):
    image, text, y, upstream = _inputs(n, d, torch.float32, labels)
    scale = torch.tensor(17.0, requires_grad=True)
    triton_out = _loss_and_grads(image, text, y, scale, backend, upstream)
    dense_out = _loss_and_grads(image, text, y, scale, "dense", upstream)
    for got, want in zip(triton_out, dense_out):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("backend", TRITON_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "d"), SIZES)
@pytest.mark.parametrize("labels", sorted(LABELS))
def test_half_precision_matches_float64(n, d, labels, dtype, backend):
    """bf16 and fp16 features against float64 from the same rounded inputs, fixed bounds (loss 1e-4, gradients
    1e-2 relative), with per-index upstream weights so the backward's weights differ row by row."""
    image, text, y, upstream = _inputs(n, d, dtype, labels, seed=1)
    scale = torch.tensor(17.0, requires_grad=True)
    got = _loss_and_grads(image, text, y, scale, backend, upstream)
    exact = float64_loss_and_grads(image, text, y, scale, reduction="none", upstream=upstream)
    if n > 1:
        assert_matches_float64(got, exact, dtype)
        return
    # One sample: the exact gradient is zero (softmax and target parts cancel), so no relative bound applies. What
    # is left is the rounding of the softmax weight to the half dtype: at most one unit in the last place of
    # s·max(upstream) per unit feature, over the feature's norm after the chain rule through the normalisation.
    assert_matches_float64(got[:1], exact[:1], dtype)
    smallest_norm = min(float(image.detach().float().norm()), float(text.detach().float().norm()))
    floor = torch.finfo(dtype).eps * 2 * float(scale.detach()) * float(upstream.max()) / smallest_norm
    for grad in got[1:3]:
        assert float(grad.abs().max()) <= floor


@pytest.mark.parametrize("backend", ["triton", "dense"])
def test_strided_inputs_are_handled(backend):
    generator = torch.Generator().manual_seed(2)
    wide_image, wide_text = torch.randn(20, 48, generator=generator), torch.randn(48, 20, generator=generator)
    image, text = wide_image[:, ::2], wide_text.T[:, 1::2]
    assert not image.is_contiguous() and not text.is_contiguous()
    labels = torch.randint(-1, 4, (20,), generator=generator)
    got = unicl_loss(image, text, labels, 9.0, backend=backend)
    want = reference_loss(image, text, labels.tolist(), 9.0)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_float64_is_refused_with_the_alternative_named():
    image = torch.randn(4, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match='backend="chunked"'):
        unicl_loss(image, image, backend="triton")


@pytest.mark.parametrize("backend", TRITON_BACKENDS)
def test_results_are_identical_run_to_run(backend):
    image, text, y, upstream = _inputs(33, 24, torch.float32, "mixed", seed=3)
    scale = torch.tensor(30.0, requires_grad=True)
    first = _loss_and_grads(image, text, y, scale, backend, upstream)
    second = _loss_and_grads(image, text, y, scale, backend, upstream)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_operators_pass_opcheck():
    """Schema, fake (meta) implementation and dispatch of the torch.library operators are consistent."""
    generator = torch.Generator().manual_seed(4)
    q, k = torch.randn(9, 16, generator=generator), torch.randn(7, 16, generator=generator)
    scale = torch.tensor(3.0)
    q_scale, k_scale = torch.rand(9, generator=generator), torch.rand(7, generator=generator)
    q_lse, k_lse = torch.randn(9, generator=generator), torch.randn(7, generator=generator)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(row_logsumexp, (q, k, scale, q_scale, k_scale), test_utils=utils)
    torch.library.opcheck(one_pass_logsumexp, (q, k, scale, q_scale, k_scale, 4, 32), test_utils=utils)
    for weights in [(torch.rand(9), torch.rand(7)), (torch.rand(9), None), (None, torch.rand(7))]:
        arguments = (q, k, scale, q_scale, k_scale, q_lse, k_lse, *weights)
        torch.library.opcheck(two_pass_grad, arguments, test_utils=utils)
        torch.library.opcheck(one_pass_weights, arguments, test_utils=utils)


@pytest.mark.parametrize("normalized", [False, True], ids=["raw", "inverse-norms"])
def test_rectangular_blocks_match_dense_formula(normalized):
    """The launchers on M != N, as distributed local mode uses them, with and without row and column factors."""
    generator = torch.Generator().manual_seed(5)
    q, k = torch.randn(11, 24, generator=generator), torch.randn(37, 24, generator=generator)
    scale = torch.tensor(4.0)
    if normalized:
        q_scale, k_scale = 1 / q.norm(dim=1), 1 / k.norm(dim=1)
    else:
        q_scale, k_scale = torch.ones(11), torch.ones(37)
    sim = scale * (q_scale[:, None] * q) @ (k_scale[:, None] * k).T
    torch.testing.assert_close(row_logsumexp(q, k, scale, q_scale, k_scale), torch.logsumexp(sim, 1))
    q_lse, k_lse = torch.logsumexp(sim, 1), torch.logsumexp(sim, 0)
    g, h = torch.rand(11, generator=generator), torch.rand(37, generator=generator)
    weights = g[:, None] * torch.exp(sim - q_lse[:, None]) + h[None, :] * torch.exp(sim - k_lse[None, :])
    expected = q_scale[:, None] * (weights @ (k_scale[:, None] * k))
    got = two_pass_grad(q, k, scale, q_scale, k_scale, q_lse, k_lse, g, h)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("backend", [*TRITON_BACKENDS, "chunked"])
def test_torch_compile_traces_the_loss_without_graph_breaks(backend):
    """``fullgraph=True`` fails on any graph break; aot_eager runs the traced forward and backward graphs."""
    image, text, y, _ = _inputs(16, 8, torch.float32, "mixed", seed=6)
    scale = torch.tensor(10.0, requires_grad=True)

    def step(u, v, s):
        return unicl_loss(u, v, y, s, backend=backend)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(image, text, scale)
    grads = torch.autograd.grad(loss, [image, text, scale])
    expected = step(image, text, scale)
    expected_grads = torch.autograd.grad(expected, [image, text, scale])
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def _similarity(q, k, scale, q_scale, k_scale):
    return scale * (q_scale[:, None] * q.double()) @ (k_scale[:, None] * k.double()).T


@pytest.mark.parametrize(
    ("rows", "cols", "rows_per_chunk", "cols_per_range"), [(11, 37, 4, 32), (70, 130, 32, 64), (5, 3, 5, 32)]
)
def test_one_pass_statistics_over_super_chunks_and_column_ranges(rows, cols, rows_per_chunk, cols_per_range):
    """Rectangular blocks, ragged sizes, several super-chunks (rows) and column ranges (columns) per launch: the
    merged partials equal the log-sum-exps of the whole matrix."""
    generator = torch.Generator().manual_seed(7)
    q, k = torch.randn(rows, 24, generator=generator), torch.randn(cols, 24, generator=generator)
    scale = torch.tensor(12.0)
    q_scale, k_scale = 1 / q.norm(dim=1), 1 / k.norm(dim=1)
    sim = _similarity(q, k, scale, q_scale, k_scale)
    row_lse, col_lse = one_pass_logsumexp(q, k, scale, q_scale, k_scale, rows_per_chunk, cols_per_range)
    torch.testing.assert_close(row_lse.double(), torch.logsumexp(sim, 1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(col_lse.double(), torch.logsumexp(sim, 0), rtol=1e-6, atol=1e-5)


def test_column_ranges_need_not_be_whole_tiles():
    """Ranges of 40 columns with 32-wide tiles: masked tile ends, exact results."""
    generator = torch.Generator().manual_seed(10)
    q, k = torch.randn(9, 16, generator=generator), torch.randn(100, 16, generator=generator)
    ones_q, ones_k, scale = torch.ones(9), torch.ones(100), torch.tensor(5.0)
    sim = _similarity(q, k, scale, ones_q, ones_k)
    row_lse, col_lse = one_pass_logsumexp(q, k, scale, ones_q, ones_k, 4, 40)
    torch.testing.assert_close(row_lse.double(), torch.logsumexp(sim, 1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(col_lse.double(), torch.logsumexp(sim, 0), rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="cols_per_range must be an int >= 1"):
        one_pass_logsumexp(q, k, scale, ones_q, ones_k, 4, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_pass_weights_match_their_formula(dtype):
    generator = torch.Generator().manual_seed(8)
    q, k = torch.randn(13, 40, generator=generator).to(dtype), torch.randn(45, 40, generator=generator).to(dtype)
    scale = torch.tensor(6.0)
    q_scale, k_scale = 1 / q.float().norm(dim=1), 1 / k.float().norm(dim=1)
    sim = _similarity(q, k, scale, q_scale, k_scale)
    q_lse, k_lse = torch.logsumexp(sim, 1), torch.logsumexp(sim, 0)
    g, h = torch.rand(13, generator=generator), torch.rand(45, generator=generator)
    expected = (g[:, None] * torch.exp(sim - q_lse[:, None]) + h[None, :] * torch.exp(sim - k_lse[None, :])) * k_scale
    got = one_pass_weights(q, k, scale, q_scale, k_scale, q_lse.float(), k_lse.float(), g, h)
    assert got.dtype == dtype
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2**-8, "atol": 1e-4}
    torch.testing.assert_close(got.double(), expected, **tolerance)


@pytest.mark.parametrize("chunk_size", [None, 16, 33])
def test_one_pass_loss_over_super_chunks_matches_dense(chunk_size):
    """The whole loss and its gradients when forward and backward walk several super-chunks."""
    image, text, y, upstream = _inputs(70, 24, torch.float32, "mixed", seed=9)
    scale = torch.tensor(25.0, requires_grad=True)

    def run(backend):
        loss = unicl_loss(image, text, y, scale, backend=backend, reduction="none", chunk_size=chunk_size)
        return (loss, *torch.autograd.grad((loss * upstream).sum(), [image, text, scale]))

    for got, want in zip(run("triton"), run("dense")):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
