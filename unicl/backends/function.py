"""One autograd function for every memory-efficient backend.

Forward keeps only the row and column log-sum-exp (``2N`` floats) besides the inputs; backward asks the engine to
recompute ``S`` block by block. The target parts of the loss and of its gradient use the per-key sums of
:class:`unicl.targets.PositiveGroups`, which is exact and costs ``O(N·D)``:

* ``a_i = (s/p_i)·⟨u_i, Σ_{j∈P(i)} v_j⟩`` and ``b_j = (s/q_j)·⟨v_j, Σ_{i∈Q(j)} u_i⟩``;
* ``∂L/∂U = s·(P V − (g^r/p)·C^V − Σ_{j∈P(i)} (g^c_j/q_j) v_j)`` and its mirror for ``V``;
* ``∂L/∂s = Σ_ij G_ij ⟨u_i, v_j⟩ = Σ_i ⟨u_i, (G V)_i⟩``, free once ``G V`` is known.
"""

from __future__ import annotations

from typing import Any

import torch

from unicl.backends.engine import SimilarityEngine, accumulation_dtype
from unicl.targets import PositiveGroups


class UniCLTermsFunction(torch.autograd.Function):
    """Per-row and per-column UniCL terms of a (possibly rectangular) block ``S = s·U Vᵀ``."""

    @staticmethod
    def forward(
        ctx: Any,
        u: torch.Tensor,
        v: torch.Tensor,
        scale: torch.Tensor,
        row_keys: torch.Tensor,
        col_keys: torch.Tensor,
        engine: SimilarityEngine,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        acc = accumulation_dtype(u.dtype)
        groups = PositiveGroups.from_keys(row_keys, col_keys, acc)
        row_lse, col_lse = engine.logsumexp(u, v, scale)
        u_acc, v_acc = u.to(acc), v.to(acc)
        row_positive = (u_acc * groups.column_sums_for_rows(v_acc)).sum(1) / groups.row_count
        col_positive = (v_acc * groups.row_sums_for_columns(u_acc)).sum(1) / groups.col_count
        ctx.engine = engine
        ctx.save_for_backward(u, v, scale, row_keys, col_keys, row_lse, col_lse)
        ctx.set_materialize_grads(False)
        return row_lse - scale * row_positive, col_lse - scale * col_positive

    @staticmethod
    def backward(
        ctx: Any, row_grad: torch.Tensor | None, col_grad: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        u, v, scale, row_keys, col_keys, row_lse, col_lse = ctx.saved_tensors
        acc = accumulation_dtype(u.dtype)
        row_grad = None if row_grad is None else row_grad.to(acc)
        col_grad = None if col_grad is None else col_grad.to(acc)
        if row_grad is None and col_grad is None:
            return None, None, None, None, None, None
        groups = PositiveGroups.from_keys(row_keys, col_keys, acc)
        u_acc, v_acc = u.to(acc), v.to(acc)
        # g_u = G V and g_v = Gᵀ U, with G = ∂L/∂S: the softmax part from the engine, the target part per key.
        g_u, g_v = ctx.engine.softmax_grad(u, v, scale, row_lse, col_lse, row_grad, col_grad)
        if row_grad is not None:
            row_weight = (row_grad / groups.row_count).unsqueeze(1)
            g_u = g_u - row_weight * groups.column_sums_for_rows(v_acc)
            g_v = g_v - groups.row_sums_for_columns(row_weight * u_acc)
        if col_grad is not None:
            col_weight = (col_grad / groups.col_count).unsqueeze(1)
            g_v = g_v - col_weight * groups.row_sums_for_columns(u_acc)
            g_u = g_u - groups.column_sums_for_rows(col_weight * v_acc)
        grad_scale = (u_acc * g_u).sum() if ctx.needs_input_grad[2] else None
        grad_u = (scale * g_u).to(u.dtype) if ctx.needs_input_grad[0] else None
        grad_v = (scale * g_v).to(v.dtype) if ctx.needs_input_grad[1] else None
        return grad_u, grad_v, grad_scale, None, None, None
