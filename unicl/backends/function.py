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

#: Rows per step of the ``O(N·D)`` gathers, which bounds their temporaries to this many feature rows.
GATHER_ROWS = 1024


def _gathered_dot(x: torch.Tensor, sums: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[k] = ⟨x[k], sums[index[k]]⟩`` for ``x [K, D]``, ``sums [G, D]``, ``index [K]``; returns ``[K]``."""
    out = x.new_empty(x.shape[0])
    gathered = sums.new_empty(min(GATHER_ROWS, x.shape[0]), sums.shape[1])
    for start in range(0, x.shape[0], GATHER_ROWS):
        rows = slice(start, start + GATHER_ROWS)
        block = torch.index_select(sums, 0, index[rows], out=gathered[: index[rows].shape[0]])
        out[rows] = torch.linalg.vecdot(x[rows], block)
    return out


def _subtract_gathered(
    target: torch.Tensor, sums: torch.Tensor, index: torch.Tensor, weight: torch.Tensor | None = None
) -> None:
    """In place: ``target[k] -= weight[k] * sums[index[k]]`` (``weight`` ``None`` means 1)."""
    gathered = sums.new_empty(min(GATHER_ROWS, target.shape[0]), sums.shape[1])
    for start in range(0, target.shape[0], GATHER_ROWS):
        rows = slice(start, start + GATHER_ROWS)
        block = torch.index_select(sums, 0, index[rows], out=gathered[: index[rows].shape[0]])
        if weight is None:
            target[rows].sub_(block)
        else:
            target[rows].addcmul_(block, weight[rows, None], value=-1)


class UniCLTermsFunction(torch.autograd.Function):
    """Per-row and per-column UniCL terms of a (possibly rectangular) block ``S = s·U Vᵀ``."""

    @staticmethod
    def forward(
        ctx: Any,
        u: torch.Tensor,
        v: torch.Tensor,
        scale: torch.Tensor,
        row_keys: torch.Tensor,
        col_keys: torch.Tensor | None,
        engine: SimilarityEngine,
        columns: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``col_keys=None`` means the columns share the rows' keys (a square batch). Without ``columns`` the
        column terms are not computed and the second output is an empty, non-differentiable tensor."""
        col_keys = row_keys if col_keys is None else col_keys
        acc = accumulation_dtype(u.dtype)
        groups = PositiveGroups.from_keys(row_keys, col_keys, acc)
        row_lse, col_lse = engine.logsumexp(u, v, scale, columns)
        u_acc, v_acc = u.to(acc), v.to(acc)
        row_positive = _gathered_dot(u_acc, groups.by_column.sums(v_acc), groups.by_column.other)
        row_terms = row_lse - scale * row_positive / groups.row_count
        if col_lse is None:
            col_terms = row_terms.new_empty(0)
            ctx.mark_non_differentiable(col_terms)
            col_lse = col_terms
        else:
            col_positive = _gathered_dot(v_acc, groups.by_row.sums(u_acc), groups.by_row.other)
            col_terms = col_lse - scale * col_positive / groups.col_count
        ctx.engine = engine
        ctx.save_for_backward(u, v, scale, row_keys, col_keys, row_lse, col_lse)
        ctx.set_materialize_grads(False)
        return row_terms, col_terms

    @staticmethod
    def backward(
        ctx: Any, row_grad: torch.Tensor | None, col_grad: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        u, v, scale, row_keys, col_keys, row_lse, col_lse = ctx.saved_tensors
        col_keys = row_keys if col_keys is None else col_keys
        if col_lse.numel() == 0:  # columns were not computed
            col_grad, col_lse = None, None
        if row_grad is None and col_grad is None:
            return None, None, None, None, None, None, None
        acc = accumulation_dtype(u.dtype)
        groups = PositiveGroups.from_keys(row_keys, col_keys, acc)
        u_acc, v_acc = u.to(acc), v.to(acc)
        row_weight = None if row_grad is None else row_grad.to(acc) / groups.row_count
        col_weight = None if col_grad is None else col_grad.to(acc) / groups.col_count
        # g_u = G V and g_v = Gᵀ U, with G = ∂L/∂S: the softmax part from the engine, the target part per key.
        g_u, g_v = ctx.engine.softmax_grad(u, v, scale, row_lse, col_lse, row_grad, col_grad)
        # Row i loses (g^r_i/p_i)·Σ_{j∈P(i)} v_j and Σ_{j∈P(i)} (g^c_j/q_j)·v_j; column j mirrors it.
        by_column, by_row = groups.by_column, groups.by_row
        # One per-group buffer per side, reused by both terms.
        column_sums = v_acc.new_empty(v_acc.shape[0] + 1, v_acc.shape[1])
        row_sums = u_acc.new_empty(u_acc.shape[0] + 1, u_acc.shape[1])
        if row_weight is not None:
            _subtract_gathered(g_u, by_column.sums(v_acc, out=column_sums), by_column.other, row_weight)
            _subtract_gathered(g_v, by_row.sums(u_acc, row_weight, out=row_sums), by_row.other)
        if col_weight is not None:
            _subtract_gathered(g_v, by_row.sums(u_acc, out=row_sums), by_row.other, col_weight)
            _subtract_gathered(g_u, by_column.sums(v_acc, col_weight, out=column_sums), by_column.other)
        grad_scale = torch.dot(u_acc.reshape(-1), g_u.reshape(-1)) if ctx.needs_input_grad[2] else None
        grad_u = g_u.mul_(scale).to(u.dtype) if ctx.needs_input_grad[0] else None
        grad_v = g_v.mul_(scale).to(v.dtype) if ctx.needs_input_grad[1] else None
        return grad_u, grad_v, grad_scale, None, None, None, None
