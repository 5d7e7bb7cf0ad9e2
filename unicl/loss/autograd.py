"""One autograd function for every memory-efficient backend and every objective (`unicl.loss.objectives`).

Forward keeps only the objective's statistics (``2N`` floats) and, when it normalises, the inverse norms ``a``,
``b`` (``2N`` more) besides the inputs; backward asks the engine to recompute ``Z`` block by block. The features are
normalised inside the engine's tiles (``S_ij = s·a_i·b_j·⟨x_i, y_j⟩``), so no normalised copy of them exists. The
target parts of the loss and of its gradient use the per-key sums of `unicl.loss.targets.PositiveGroups`, which is
exact and costs ``O(N·D)``. With ``u = a·x``, ``v = b·y`` and the objective's target weights ``w`` (``g/p`` for the
softmax objective, ``g`` for the sigmoid one):

* the terms come from the statistics and ``⟨u_i, Σ_{j∈P(i)} v_j⟩`` (`unicl.loss.objectives.base.Objective.terms`);
* ``∂L/∂u = s·(P V − w^r·Σ_{j∈P(i)} v_j − Σ_{j∈P(i)} w^c_j·v_j)`` with the engine's entry weights ``P``, and its
  mirror for ``v``, which the code carries as ``e = a·∂L/∂u / s``, the form the engine returns;
* ``∂L/∂s = Σ_i ⟨u_i, ∂L/∂u_i⟩ / s = Σ_i ⟨x_i, e_i⟩``, free once ``e`` is known; ``∂L/∂b`` from the statistics;
* ``∂L/∂x = s·(e − a²·⟨x, e⟩·x)`` (`unicl.loss.normalize.unit_grad_to_input_`), in place.
"""

from __future__ import annotations

from typing import Any

import torch

from unicl.loss.dtypes import accumulation_dtype, autocast_disabled
from unicl.loss.engine import Similarity, SimilarityEngine
from unicl.loss.normalize import inverse_norms, unit_grad_to_input_
from unicl.loss.objectives import SOFTMAX, Objective, PositiveSums
from unicl.loss.row_dots import row_dots
from unicl.loss.targets import KeyGroups, PositiveGroups


def _times(factor: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
    """``factor ⊙ weight``, where a ``None`` factor means ones."""
    return weight if factor is None else factor * weight


#: float16 softmax weights are scaled so that their largest possible value is at most this (float16's largest finite
#: value is 65,504): then the bulk of them, about ``1/N`` of the largest, stay normal numbers up to N = 2^29.
HALF_WEIGHT_CEILING = 2.0**15


def half_weight_scale(
    dtype: torch.dtype,
    row_weight: torch.Tensor | None,
    col_weight: torch.Tensor | None,
    row_scale: torch.Tensor | None,
    col_scale: torch.Tensor | None,
) -> torch.Tensor | None:
    """The power of two ``σ`` by which the upstream weights ``g``, ``h`` are multiplied before the engine rounds
    the softmax weights to float16, or ``None`` for other dtypes.

    The engines round ``W_ij = (g_i·exp(S_ij − r_i) + h_j·exp(S_ij − c_j))·b_j`` to the features' dtype for their
    tensor-core products. For a mean loss ``g = h = 1/(2N)`` and a softmax entry is about ``1/N``, so ``W`` is about
    ``1/(2N²)``: below float16's smallest subnormal (2^-24) from N ≈ 2,900, and every product with it is lost. With
    ``σ = 2^⌊log2(2^15 / ((max|g| + max|h|)·max(a, b, 1)))⌋`` no entry of ``σ·W`` exceeds 2^15 (so none overflows,
    in either direction of the two-pass schedule, where ``a`` takes the place of ``b``) and the products are divided
    by ``σ`` in float32 afterwards: exact, since ``σ`` is a power of two. bfloat16 has float32's range and needs
    none. Computed on the device, without a host synchronisation.
    """
    if dtype != torch.float16:
        return None
    weights = [w.abs().amax() for w in (row_weight, col_weight) if w is not None and w.numel() > 0]
    if not weights:
        return None
    bound = torch.stack(weights).sum()
    factors = [f.amax() for f in (row_scale, col_scale) if f is not None and f.numel() > 0]
    if factors:
        bound = bound * torch.stack(factors).amax().clamp(min=1.0)
    # All-zero weights give an infinite ratio; the clamp keeps σ a finite float32 power of two.
    return torch.exp2(torch.floor(torch.log2(HALF_WEIGHT_CEILING / bound)).clamp(-100.0, 100.0))


def _positive_dots(
    x: torch.Tensor, x_scale: torch.Tensor | None, y: torch.Tensor, y_scale: torch.Tensor | None, groups: KeyGroups
) -> torch.Tensor:
    """``⟨a_k x_k, Σ_{l positive with k} b_l y_l⟩`` for every row ``k`` of ``x``, with ``groups`` grouping ``y``."""
    dots = groups.sums(y, y_scale).dots(x)
    return dots if x_scale is None else dots.mul_(x_scale)


class UniCLTermsFunction(torch.autograd.Function):
    """Per-row and per-column terms of an objective over a (possibly rectangular) block ``Z = s·U Vᵀ (+ b)``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        scale: torch.Tensor,
        row_keys: torch.Tensor,
        col_keys: torch.Tensor | None,
        engine: SimilarityEngine,
        columns: bool,
        normalize: bool,
        objective: Objective = SOFTMAX,
        bias: torch.Tensor | None = None,
        uniform_upstream: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``col_keys=None`` means the columns share the rows' keys (a square batch). Without ``columns`` (or for a
        one-sided objective) the column terms are not computed and the second output is an empty,
        non-differentiable tensor. With ``normalize`` the rows of ``x`` and ``y`` are L2-normalised (inside the
        engine's tiles). ``bias`` is the 0-dim logit bias of an objective that has one.

        ``uniform_upstream`` is the caller's promise that every row term gets the same upstream weight (it sums or
        averages them, as a ``"mean"`` or ``"sum"`` loss does). For an objective with local entry weights and an
        engine that can (`unicl.loss.chunked.ChunkedEngine.statistics_and_products`), forward then computes the
        backward's products in its one walk over ``Z`` and keeps them (``2`` feature-sized float tensors, which
        become the gradients in place), and backward walks ``Z`` only if it runs a second time."""
        col_keys = row_keys if col_keys is None else col_keys
        columns = columns and objective.two_sided
        groups = PositiveGroups.from_keys(row_keys, col_keys, accumulation_dtype(x.dtype))
        sim = Similarity(
            x, y, scale, inverse_norms(x) if normalize else None, inverse_norms(y) if normalize else None, bias
        )
        ctx.products = None
        eager = uniform_upstream and objective.local_entry_weights and any(ctx.needs_input_grad[:3])
        if eager and hasattr(engine, "statistics_and_products"):
            statistics, *products = engine.statistics_and_products(sim, objective)
            ctx.products = tuple(products)
        else:
            statistics = engine.statistics(sim, objective, columns)
        row_positive = _positive_dots(x, sim.row_scale, y, sim.col_scale, groups.by_column)
        col_positive = _positive_dots(y, sim.col_scale, x, sim.row_scale, groups.by_row) if columns else None
        positives = PositiveSums(row_positive, col_positive, groups.row_count, groups.col_count)
        row_terms, col_terms = objective.terms(statistics, positives, scale, bias)
        if col_terms is None:
            col_terms = row_terms.new_empty(0)
            ctx.mark_non_differentiable(col_terms)
        first, second = statistics
        ctx.engine, ctx.objective = engine, objective
        ctx.save_for_backward(
            x, y, scale, row_keys, col_keys, first, row_terms.new_empty(0) if second is None else second,
            sim.row_scale, sim.col_scale, bias,
        )  # fmt: skip
        ctx.set_materialize_grads(False)
        return row_terms, col_terms

    @staticmethod
    def backward(
        ctx: Any, row_grad: torch.Tensor | None, col_grad: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        # With create_graph=True autograd runs this with grad mode on; the in-place, out= arithmetic below has no
        # derivative of its own, so it runs without, and the results carry a node that refuses a second one.
        second_order = torch.is_grad_enabled()
        with torch.no_grad(), autocast_disabled(ctx.saved_tensors[0].device):
            grads = _first_order_backward(ctx, row_grad, col_grad)
        if second_order:
            grad_x, grad_y, grad_scale = _FirstOrderOnly.apply(*grads[:3], *ctx.saved_tensors[:3])
            grads = (grad_x, grad_y, grad_scale, *grads[3:])
        return grads


class _FirstOrderOnly(torch.autograd.Function):
    """Passes first derivatives through and raises if anything differentiates them again.

    Its inputs are the three gradients and then the loss inputs ``x, y, s``, so its outputs belong to the graph of
    the gradient (``create_graph=True``) and a second derivative reaches `backward`.
    """

    @staticmethod
    def forward(ctx: Any, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        return tuple(None if grad is None else grad.view_as(grad) for grad in tensors[:3])

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[None, ...]:
        raise NotImplementedError(
            "the chunked and Triton backends of the UniCL loss compute first derivatives only; for a second "
            'derivative (a gradient penalty, double backward) use backend="dense"'
        )


def _first_order_backward(
    ctx: Any, row_grad: torch.Tensor | None, col_grad: torch.Tensor | None
) -> tuple[torch.Tensor | None, ...]:
    """The gradients of `UniCLTermsFunction` with respect to its eleven inputs."""
    x, y, scale, row_keys, col_keys, first, second, row_scale, col_scale, bias = ctx.saved_tensors
    objective: Objective = ctx.objective
    col_keys = row_keys if col_keys is None else col_keys
    if not objective.two_sided or second.numel() == 0:  # no column terms were computed
        col_grad = None
    statistics = (first, None if second.numel() == 0 else second)
    if row_grad is None and col_grad is None:
        return (None,) * 11
    acc = accumulation_dtype(x.dtype)
    groups = PositiveGroups.from_keys(row_keys, col_keys, acc)
    sim = Similarity(x, y, scale, row_scale, col_scale, bias)
    # e_x = a·G V and e_y = b·Gᵀ U with G = ∂L/∂Z: the entry-weight part from the engine, the target part per key.
    weight_scale = half_weight_scale(x.dtype, row_grad, col_grad, row_scale, col_scale)
    if ctx.products is not None and row_grad is not None and col_grad is None:
        # Forward's products for row weights of one; the upstream weight is the same for every row. They become the
        # gradients in place, so a second backward (retain_graph=True) walks Z again.
        uniform_weight = row_grad[:1].to(acc)
        e_x, e_y = (product.mul_(uniform_weight) for product in ctx.products)
        ctx.products = None
    elif weight_scale is None:
        e_x, e_y = ctx.engine.weighted_products(sim, objective, statistics, (row_grad, col_grad))
    else:
        row_scaled, col_scaled = (None if grad is None else grad * weight_scale for grad in (row_grad, col_grad))
        e_x, e_y = ctx.engine.weighted_products(sim, objective, statistics, (row_scaled, col_scaled))
        inverse = weight_scale.reciprocal()
        e_x.mul_(inverse)
        e_y.mul_(inverse)
    by_column, by_row = groups.by_column, groups.by_row
    # Row i loses a_i·w_i·Σ_{j∈P(i)} v_j and a_i·Σ_{j∈P(i)} w'_j·v_j, with the objective's target weights w of the
    # rows and w' of the columns; column j mirrors it. One sums buffer serves all four sums in turn.
    buffer = e_x.new_empty(max(by_column.buffer_rows(), by_row.buffer_rows()), x.shape[1])
    if row_grad is not None:
        scaled_weight = _times(row_scale, objective.target_weight(row_grad.to(acc), groups.row_count))
        by_column.sums(y, col_scale, out=buffer).subtract_from(e_x, scaled_weight)
        by_row.sums(x, scaled_weight, out=buffer).subtract_from(e_y, col_scale)
    if col_grad is not None:
        scaled_weight = _times(col_scale, objective.target_weight(col_grad.to(acc), groups.col_count))
        by_row.sums(x, row_scale, out=buffer).subtract_from(e_y, scaled_weight)
        by_column.sums(y, scaled_weight, out=buffer).subtract_from(e_x, row_scale)
    del buffer
    grad_bias = None
    if bias is not None and ctx.needs_input_grad[9]:
        grad_bias = objective.bias_grad(statistics, row_grad, groups.row_count)
    # ⟨x_i, e_i⟩ gives ∂L/∂s and, when normalising, the chain rule for x: computed once for both.
    x_dots = row_dots(x, e_x) if ctx.needs_input_grad[2] else None
    grad_scale = None if x_dots is None else x_dots.sum()
    grad_x = _input_grad(e_x, x, row_scale, scale, x_dots) if ctx.needs_input_grad[0] else None
    grad_y = _input_grad(e_y, y, col_scale, scale) if ctx.needs_input_grad[1] else None
    return grad_x, grad_y, grad_scale, None, None, None, None, None, None, grad_bias, None


def _input_grad(
    e: torch.Tensor,
    features: torch.Tensor,
    inverse_norm: torch.Tensor | None,
    scale: torch.Tensor,
    dots: torch.Tensor | None = None,
) -> torch.Tensor:
    """``∂L/∂x`` from ``e`` (overwritten), through the normalisation when there was one, in the features' dtype;
    ``dots`` are ``⟨x, e⟩`` if already computed."""
    if inverse_norm is not None:
        unit_grad_to_input_(e, features, inverse_norm, dots)
    return e.mul_(scale).to(features.dtype)
