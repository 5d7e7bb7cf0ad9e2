"""Float64 references and fixed relative bounds for the GPU tests.

Every comparison in tests/gpu is against float64 computed from the same rounded inputs (the float32, bfloat16 or
float16 features cast exactly to float64), never against another low-precision result and never with a slack
factor: a backend passes when ``‖got − want‖_F / ‖want‖_F`` is within :data:`BOUNDS` of its dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from unicl import unicl_loss
from unicl.loss.targets import target_keys

#: ``(loss, gradient)`` bounds on the relative Frobenius error, per feature dtype. Every backend accumulates in
#: float32, so the loss of any dtype is float32-accurate up to the rounding of its statistics; half-precision
#: gradients carry the rounding of the softmax weights to the operand dtype (as flash-attention rounds ``P``) and of
#: the returned gradient itself (2^-9 relative in bfloat16).
BOUNDS = {
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (1e-4, 1e-2),
    torch.float16: (1e-4, 1e-2),
}
#: Short dtype names, used in test ids (``fp16`` is not a substring of ``bf16``, so ``-k`` can tell them apart).
DTYPE_IDS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
#: ``torch.amp.GradScaler``'s initial loss scale. A mean loss gives each sample a gradient of about ``s/(2N·D)`` per
#: element, which float16 holds only as a subnormal number from N ≈ 1,000 on (4.8e-3 relative error at N = 16,384,
#: measured with the chunked engine's float16 path on the CPU), so float16 training scales the loss and so do the
#: float16 tests of a mean loss; the gradients are divided by it again, exactly (a power of two), before comparing.
FLOAT16_LOSS_SCALE = 2.0**16


def relative_error(got: torch.Tensor, want: torch.Tensor, size: float | None = None) -> float:
    """``‖got − want‖_F / ‖want‖_F`` in float64.

    Args:
        got: the value under test, any dtype.
        want: the float64 reference.
        size: where the exact value is zero by cancellation (a batch of one, whose loss is ``S_11 − S_11``), the
            norm of the float64 terms that cancel, used as the denominator instead.

    Returns:
        The relative error (``inf`` when the denominator is zero and the values differ).
    """
    got, want = got.detach().double(), want.detach().double()
    error = float(torch.linalg.vector_norm(got - want))
    norm = float(torch.linalg.vector_norm(want)) if size is None else max(float(torch.linalg.vector_norm(want)), size)
    if norm == 0.0:
        return 0.0 if error == 0.0 else float("inf")
    return error / norm


def assert_relative_close(
    got: torch.Tensor, want: torch.Tensor, bound: float, what: str, size: float | None = None
) -> float:
    """Assert ``relative_error(got, want, size) <= bound`` and return the error.

    Raises:
        AssertionError: naming ``what``, the error and the bound.
    """
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    error = relative_error(got, want, size)
    assert error <= bound, f"{what}: relative error {error:.3e} > {bound:.0e}"
    return error


def compare_outputs(
    got: Sequence[torch.Tensor],
    want: Sequence[torch.Tensor],
    dtype: torch.dtype,
    label: str,
    sizes: Sequence[float] | None = None,
) -> list[str]:
    """Compare ``(loss, d image, d text, d scale)`` with their float64 references under :data:`BOUNDS`.

    Returns:
        One message per output that is out of bounds (empty when all pass); the errors are printed either way, so
        ``pytest -rP`` logs how far inside its bounds every configuration is.
    """
    loss_bound, grad_bound = BOUNDS[dtype]
    names = ("loss", "d_image", "d_text", "d_scale")
    failures, report = [], []
    for index, (value, reference) in enumerate(zip(got, want, strict=True)):
        bound = loss_bound if index == 0 else grad_bound
        size = None if sizes is None else sizes[index]
        error = relative_error(value, reference, size)
        report.append(f"{names[index]} {error:.2e}")
        if not error <= bound:
            failures.append(f"{label}: {names[index]} relative error {error:.3e} > {bound:.0e}")
    print(f"{label}: " + ", ".join(report))
    return failures


# --- inputs ----------------------------------------------------------------------------------------------------------


def make_features(n: int, d: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``[n, d]`` image and text features on CUDA in ``dtype``, leaves that require grad."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    image = torch.randn(n, d, device="cuda", generator=generator).to(dtype).requires_grad_()
    text = torch.randn(n, d, device="cuda", generator=generator).to(dtype).requires_grad_()
    return image, text


def make_labels(kind: str, n: int, seed: int) -> torch.Tensor | None:
    """``"none"`` (CLIP: every pair unique), ``"mixed"`` (about a third image-text pairs, the rest in ``n // 8``
    classes) or ``"one_class"`` (every sample positive with every other)."""
    if kind == "none":
        return None
    if kind == "one_class":
        return torch.full((n,), 3, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(seed + 1)
    return torch.randint(-1, max(2, n // 8), (n,), device="cuda", generator=generator)


def upstream_weights(n: int, seed: int) -> torch.Tensor:
    """Weights in ``[0.5, 1.5)`` for the per-sample terms of ``reduction="none"``, so every term's gradient is
    checked rather than only their mean."""
    generator = torch.Generator(device="cuda").manual_seed(seed + 2)
    return torch.rand(n, device="cuda", generator=generator) + 0.5


# --- float64 references ----------------------------------------------------------------------------------------------


def float64_terms(
    image: torch.Tensor,
    text: torch.Tensor,
    row_keys: torch.Tensor,
    col_keys: torch.Tensor,
    scale: torch.Tensor,
    columns: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(l_row [M], l_col [N])`` of the block ``S = s·Û V̂ᵀ`` in float64, straight from the definition: targets
    ``T_ij = [key_i == key_j]``, ``l = logsumexp(S) − Σ T·S / Σ T`` along rows and along columns (``l_col`` is
    ``None`` without ``columns``). ``M × N`` memory: for the small sizes only."""
    u = torch.nn.functional.normalize(image.double(), dim=1)
    v = torch.nn.functional.normalize(text.double(), dim=1)
    logits = scale.double() * u @ v.T
    targets = (row_keys[:, None] == col_keys[None, :]).double()
    row = torch.logsumexp(logits, 1) - (targets * logits).sum(1) / targets.sum(1)
    if not columns:
        return row, None
    col = torch.logsumexp(logits, 0) - (targets * logits).sum(0) / targets.sum(0)
    return row, col


def reduce(row: torch.Tensor, col: torch.Tensor, reduction: str) -> torch.Tensor:
    """The reductions of :func:`unicl.unicl_loss` for a square batch."""
    if reduction == "mean":
        return (row.mean() + col.mean()) / 2
    if reduction == "sum":
        return (row.sum() + col.sum()) / 2
    return (row + col) / 2


def exact_leaves(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same rounded inputs cast exactly to float64, as fresh leaves that require grad."""
    return tuple(t.detach().double().requires_grad_() for t in (image, text, scale))  # type: ignore[return-value]


def loss_and_grads(
    loss_fn, image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, upstream: torch.Tensor | None, grad_scale
) -> tuple[torch.Tensor, ...]:
    """``(loss, d image, d text, d scale)`` of ``loss_fn(image, text, scale)``; the backward starts from
    ``upstream`` (per-sample weights) for a vector loss, and from ``grad_scale`` (a loss scale, divided out of the
    gradients again in float64) for a scalar one."""
    value = loss_fn(image, text, scale)
    weighted = (value * upstream.to(value.dtype)).sum() if upstream is not None else value * grad_scale
    grads = torch.autograd.grad(weighted, [image, text, scale])
    return (value.detach(), *(g.double() / grad_scale for g in grads))


def float64_reference(
    image: torch.Tensor,
    text: torch.Tensor,
    labels: torch.Tensor | None,
    scale: torch.Tensor,
    reduction: str,
    upstream: torch.Tensor | None,
    chunked: bool = False,
) -> tuple[torch.Tensor, ...]:
    """``(loss, d image, d text, d scale)`` in float64 from the same rounded inputs.

    Args:
        image: the ``[N, D]`` features under test (any dtype).
        text: the ``[N, D]`` text features.
        labels: ``[N]`` labels or ``None``.
        scale: the logit scale tensor.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        upstream: per-sample weights of the backward for ``reduction="none"``.
        chunked: use unicl's chunked backend in float64 (``O(N·D)`` memory: a dense float64 ``S`` at N = 131,072
            would be 137 GB) instead of the dense formula of :func:`float64_terms`.
    """
    x, y, s = exact_leaves(image, text, scale)
    if chunked:
        # Large row blocks: float64 products run far below their peak on thin blocks.
        def loss_fn(a, b, c):
            return unicl_loss(a, b, labels, c, backend="chunked", reduction=reduction, chunk_size=2048)
    else:
        keys = target_keys(labels, image.shape[0], image.device)

        def loss_fn(a, b, c):
            return reduce(*float64_terms(a, b, keys, keys, c), reduction)

    return loss_and_grads(loss_fn, x, y, s, None if upstream is None else upstream.double(), 1.0)


def cancelling_sizes(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, upstream: torch.Tensor
) -> list[float]:
    """For a batch of one: the float64 norms of ``u·S_11`` and of its gradients, the terms that cancel exactly in
    the loss ``logsumexp(S_11) − S_11`` (whose value and gradients are zero), to measure errors against."""
    x, y, s = exact_leaves(image, text, scale)
    logit = s * (torch.nn.functional.normalize(x, dim=1) * torch.nn.functional.normalize(y, dim=1)).sum(1)
    weighted = (logit * upstream.double()).sum()
    grads = torch.autograd.grad(weighted, [x, y, s])
    return [float(weighted.abs()), *(float(torch.linalg.vector_norm(g)) for g in grads)]
