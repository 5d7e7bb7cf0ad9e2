"""The sigmoid objective on both Triton schedules, through the CPU interpreter, against float64 from the same rounded
inputs: the loss and its gradients (features, scale, bias), rows-only blocks, the launchers' formulas at extreme
logits, opcheck of the operators, and ``torch.compile(fullgraph=True)``."""

from __future__ import annotations

import pytest
import torch
from reference import (
    RELATIVE_BOUNDS,
    assert_relative_close,
    label_case,
    reference_sigmoid_loss,
    reference_sigmoid_terms,
)

from unicl import unicl_sigmoid_loss
from unicl.loss.backends import block_terms
from unicl.loss.kernels.availability import interpreter_active
from unicl.loss.kernels.one_pass import one_pass_weights
from unicl.loss.kernels.tiles import row_statistics
from unicl.loss.kernels.two_pass import two_pass_grad
from unicl.loss.objectives import SIGMOID, SOFTMAX
from unicl.loss.targets import target_keys

pytestmark = pytest.mark.skipif(not interpreter_active(), reason="needs TRITON_INTERPRET=1 set before importing triton")

TRITON_BACKENDS = ["triton", "triton_rowwise"]
#: The loss and every gradient of float32 features within this of float64 (the issue's bound for Triton).
FLOAT32_BOUND = 2e-4
NAMES = ("loss", "d image", "d text", "d scale", "d bias")
#: Batch size and feature dimension: one sample, ragged sizes against the interpreter's 32-wide tiles (padded rows
#: and columns), D not a multiple of 16 and D over one BLOCK_K step; the two largest are the slow tier's.
SIZES = [
    (1, 8),
    (2, 40),
    (17, 5),
    pytest.param(33, 24, marks=pytest.mark.slow),
    pytest.param(64, 40, marks=pytest.mark.slow),
    pytest.param(130, 72, marks=pytest.mark.slow),
]


def _batch(n: int, d: int, dtype: torch.dtype, seed: int):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(n, d, generator=generator).to(dtype)
    text = torch.randn(n, d, generator=generator).to(dtype)
    return image, text, generator


def _loss_and_grads(function, image, text, scale, bias, upstream):
    """``(value, d image, d text, d scale, d bias)`` of ``function(image, text, scale, bias)`` weighted by
    ``upstream`` (a vector for ``reduction="none"``, else ``None``)."""
    leaves = [image.detach().clone().requires_grad_(), text.detach().clone().requires_grad_()]
    leaves += [scale.detach().clone().requires_grad_(), bias.detach().clone().requires_grad_()]
    value = function(*leaves)
    weighted = value.sum() if upstream is None else (value * upstream).sum()
    return (value, *torch.autograd.grad(weighted, leaves))


def _check(backend, image, text, labels, scale, bias, reduction, upstream, bounds):
    """The Triton loss and gradients against float64 from the same rounded inputs; ``bounds`` is (loss, grads)."""
    keys = None if labels is None else torch.tensor(labels)
    got = _loss_and_grads(
        lambda u, v, s, b: unicl_sigmoid_loss(u, v, keys, s, b, backend=backend, reduction=reduction),
        image, text, torch.tensor(scale), torch.tensor(bias), upstream,
    )  # fmt: skip
    exact = _loss_and_grads(
        lambda u, v, s, b: reference_sigmoid_loss(u, v, labels, s, b, reduction),
        image.double(), text.double(), torch.tensor(scale, dtype=torch.float64),
        torch.tensor(bias, dtype=torch.float64), None if upstream is None else upstream.double(),
    )  # fmt: skip
    for index, (name, value, want) in enumerate(zip(NAMES, got, exact, strict=True)):
        assert_relative_close(value, want, bounds[0] if index == 0 else bounds[1], f"{backend} {name}")


@pytest.mark.parametrize("backend", TRITON_BACKENDS)
@pytest.mark.parametrize(("n", "d"), SIZES)
@pytest.mark.parametrize("kind", ["none", "pairs", "one class", "mixed"])
def test_float32_matches_float64(backend, n, d, kind):
    """SigLIP's initialisation (s = 10, b = −10: logits near −10, where ``log(1 + e)`` would lose 1e-3) with the mean,
    and a larger scale with a positive bias with per-sample upstream weights.

    The second case needs a negative pair: a lone positive pair with ``Z ≈ 8`` has ``ℓ = softplus(Z) − Z ≈ 3e-4``,
    which the objective's algebra (`unicl.loss.objectives.sigmoid`, every engine) computes as a difference of two
    float32 numbers near 8, about 3e-3 relative, whatever the kernel."""
    image, text, generator = _batch(n, d, torch.float32, seed=n + d)
    labels = label_case(kind, n, seed=n)
    bounds = (FLOAT32_BOUND, FLOAT32_BOUND)
    _check(backend, image, text, labels, 10.0, -10.0, "mean", None, bounds)
    if n > 1 and kind != "one class":
        upstream = torch.rand(n, generator=generator) + 0.5
        _check(backend, image, text, labels, 25.0, 3.0, "none", upstream, bounds)


@pytest.mark.parametrize("backend", TRITON_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("n", "d"), [(9, 40), pytest.param(130, 72, marks=pytest.mark.slow)])
def test_half_precision_matches_float64(backend, dtype, n, d):
    """bf16 and fp16 features (float32 statistics, the entry weights rounded to the features' dtype for the
    products) within the fixed half-precision bounds: loss 1e-4, gradients 1e-2."""
    image, text, generator = _batch(n, d, dtype, seed=3)
    labels = label_case("mixed", n, seed=n)
    upstream = torch.rand(n, generator=generator) + 0.5
    _check(backend, image, text, labels, 10.0, -10.0, "none", upstream, RELATIVE_BOUNDS[dtype])


@pytest.mark.parametrize("backend", TRITON_BACKENDS)
def test_rows_only_blocks_match_float64(backend):
    """Distributed local mode's call: 11 local rows (global rows 5-15) against 37 columns, rows only; the terms and
    the gradients of both feature sets, the scale and the bias."""
    generator = torch.Generator().manual_seed(4)
    image, text = torch.randn(37, 24, generator=generator), torch.randn(37, 24, generator=generator)
    labels = torch.randint(-1, 5, (37,), generator=generator)
    keys = target_keys(labels, 37, torch.device("cpu"))
    upstream = torch.rand(11, generator=generator) + 0.5

    def ours(u, v, s, b):
        return block_terms(u, v, s, keys[5:16], keys, True, backend, None, False, SIGMOID, b)[0]

    def exact(u, v, s, b):
        return reference_sigmoid_terms(torch.cat([image[:5].double(), u, image[16:].double()]), v, labels.tolist(),
                                       s, b)[5:16]  # fmt: skip

    got = _loss_and_grads(ours, image[5:16], text, torch.tensor(8.0), torch.tensor(-6.0), upstream)
    want = _loss_and_grads(
        exact, image[5:16].double(), text.double(), torch.tensor(8.0, dtype=torch.float64),
        torch.tensor(-6.0, dtype=torch.float64), upstream.double(),
    )  # fmt: skip
    for name, value, expected in zip(NAMES, got, want, strict=True):
        assert_relative_close(value, expected, FLOAT32_BOUND, f"rows-only {name}")


def _logits64(q, k, scale, q_scale, k_scale, bias):
    return scale * (q_scale.double()[:, None] * q.double()) @ (k_scale.double()[:, None] * k.double()).T + bias


@pytest.mark.parametrize(("scale", "bias"), [(10.0, -10.0), (100.0, -10.0), (100.0, 40.0), (1.0, 0.0)])
def test_row_statistics_are_exact_at_extreme_logits(scale, bias):
    """``Σ_j softplus(Z_ij)`` and ``Σ_j σ(Z_ij)`` of a rectangular block (11 × 37: padded rows and columns) within
    2e-6 of float64 for logits from −110 to +140. At s = 10, b = −10 every ``exp(−|z|)`` is near 1e-4 or below, where
    ``log(1 + e)`` in float32 is wrong by about 1e-3 relative: this is what needs ``log1p``."""
    generator = torch.Generator().manual_seed(5)
    q, k = torch.randn(11, 24, generator=generator), torch.randn(37, 24, generator=generator)
    q_scale, k_scale = 1 / q.norm(dim=1), 1 / k.norm(dim=1)
    logits = _logits64(q, k, scale, q_scale, k_scale, bias)
    softplus, sigmoid = row_statistics(q, k, torch.tensor(scale), q_scale, k_scale, torch.tensor(bias), 1)
    assert softplus.dtype == sigmoid.dtype == torch.float32
    assert_relative_close(softplus, torch.nn.functional.softplus(logits).sum(1), 2e-6, "softplus sums")
    assert_relative_close(sigmoid, torch.sigmoid(logits).sum(1), 2e-6, "sigmoid sums")
    lse, empty = row_statistics(q, k, torch.tensor(scale), q_scale, k_scale, None, SOFTMAX.kernel_code)
    assert empty.numel() == 0
    torch.testing.assert_close(lse.double(), torch.logsumexp(logits - bias, 1), rtol=3e-6, atol=3e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("weights", ["rows", "columns", "both"])
def test_entry_weight_launchers_match_their_formula(dtype, weights):
    """The one-pass weights ``W = (g_i + h_j)·σ(Z_ij)·b_j`` and the two-pass product ``a_i·Σ_j W_ij k_j`` (whose
    launch for ``Hᵀ U`` gets the rows' weights as column weights), each weight absent in turn."""
    generator = torch.Generator().manual_seed(6)
    q, k = torch.randn(13, 40, generator=generator).to(dtype), torch.randn(45, 40, generator=generator).to(dtype)
    q_scale, k_scale = 1 / q.float().norm(dim=1), 1 / k.float().norm(dim=1)
    scale, bias = torch.tensor(10.0), torch.tensor(-4.0)
    g = torch.rand(13, generator=generator) if weights != "columns" else None
    h = torch.rand(45, generator=generator) if weights != "rows" else None
    logits = _logits64(q, k, scale, q_scale, k_scale, bias)
    weight = torch.zeros_like(logits)
    weight += 0 if g is None else g.double()[:, None]
    weight += 0 if h is None else h.double()[None, :]
    expected = weight * torch.sigmoid(logits) * k_scale.double()
    # The statistics are not read by the sigmoid objective: NaNs stand in for them.
    unread_rows, unread_cols = torch.full((13,), float("nan")), torch.full((45,), float("nan"))
    arguments = (q, k, scale, q_scale, k_scale, unread_rows, unread_cols, g, h, bias, SIGMOID.kernel_code)
    got = one_pass_weights(*arguments)
    assert got.dtype == dtype
    bound = 1e-6 if dtype == torch.float32 else 2**-8
    assert_relative_close(got, expected, bound, "one-pass weights")
    product = two_pass_grad(*arguments)
    assert_relative_close(product, q_scale.double()[:, None] * (expected @ k.double()), bound, "two-pass product")


@pytest.mark.parametrize("weights", ["rows", "columns", "both"])
def test_operators_pass_opcheck(weights):
    """Schema, fake implementation and dispatch of the operators with the bias and the objective's kernel code (the
    row statistics of both objectives, once)."""
    generator = torch.Generator().manual_seed(7)
    q, k = torch.randn(9, 16, generator=generator), torch.randn(7, 16, generator=generator)
    scale, bias = torch.tensor(3.0), torch.tensor(-2.0)
    q_scale, k_scale = torch.rand(9, generator=generator), torch.rand(7, generator=generator)
    q_stat, k_stat = torch.randn(9, generator=generator), torch.randn(7, generator=generator)
    utils = ("test_schema", "test_faketensor")
    if weights == "both":
        torch.library.opcheck(row_statistics, (q, k, scale, q_scale, k_scale, bias, 1), test_utils=utils)
        torch.library.opcheck(row_statistics, (q, k, scale, q_scale, k_scale, None, 0), test_utils=utils)
    g = torch.rand(9, generator=generator) if weights != "columns" else None
    h = torch.rand(7, generator=generator) if weights != "rows" else None
    arguments = (q, k, scale, q_scale, k_scale, q_stat, k_stat, g, h, bias, SIGMOID.kernel_code)
    torch.library.opcheck(two_pass_grad, arguments, test_utils=utils)
    torch.library.opcheck(one_pass_weights, arguments, test_utils=utils)


@pytest.mark.parametrize("backend", TRITON_BACKENDS)
def test_results_are_identical_run_to_run(backend):
    image, text, _ = _batch(33, 24, torch.float32, seed=8)
    labels = torch.tensor(label_case("mixed", 33, seed=8))

    def loss(u, v, s, b):
        return unicl_sigmoid_loss(u, v, labels, s, b, backend=backend)

    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    first = _loss_and_grads(loss, image, text, scale, bias, None)
    second = _loss_and_grads(loss, image, text, scale, bias, None)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("backend", TRITON_BACKENDS)
def test_torch_compile_traces_the_loss_without_graph_breaks(backend):
    """``fullgraph=True`` fails on any graph break; aot_eager runs the traced forward and backward graphs through the
    custom operators, with gradients for the features, the scale and the bias."""
    image, text, _ = _batch(16, 8, torch.float32, seed=9)
    labels = torch.tensor(label_case("mixed", 16, seed=9))

    def step(u, v, s, b):
        return unicl_sigmoid_loss(u, v, labels, s, b, backend=backend)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    traced = _loss_and_grads(compiled, image, text, scale, bias, None)
    eager = _loss_and_grads(step, image, text, scale, bias, None)
    for got, want in zip(traced, eager, strict=True):
        torch.testing.assert_close(got, want)
