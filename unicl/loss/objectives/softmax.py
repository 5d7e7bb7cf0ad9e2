"""The softmax objective: UniCL's bidirectional InfoNCE with label-aware positives (``objective="softmax"``).

With ``S = s·U Vᵀ`` and the positive sets ``P(i)`` of row ``i`` (``p_i`` of them) and ``Q(j)`` of column ``j``::

    l_row[i] = logsumexp_j S_ij − Σ_{j∈P(i)} S_ij / p_i
    l_col[j] = logsumexp_i S_ij − Σ_{i∈Q(j)} S_ij / q_j
    loss     = (mean_i l_row[i] + mean_j l_col[j]) / 2

The ``N²`` reductions are the row and column log-sum-exp ``r``, ``c``; the entry weight of ``∂L/∂S`` is
``P_ij = g_i·exp(S_ij − r_i) + h_j·exp(S_ij − c_j)``, and its target part is ``−(g_i/p_i + h_j/q_j)·T_ij``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unicl.loss.objectives.base import Counted, Objective, PositiveSums, Statistics, Terms, Weights


def _dense_direction(logits: Tensor, targets: Tensor, dim: int) -> Tensor:
    """The terms along ``dim``: log-sum-exp minus the mean positive logit; NaN (with no gradient) where a row or
    column has no positive."""
    count = targets.sum(dim)
    terms = torch.logsumexp(logits, dim=dim) - (targets * logits).sum(dim) / count.clamp(min=1)
    return torch.where(count > 0, terms, torch.nan)


def logsumexp_into(block: torch.Tensor, scratch: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp(block, dim)`` with a running maximum, using ``scratch`` (same shape) for the exponentials."""
    peak = block.amax(dim, keepdim=True)
    # A row of -inf (impossible for finite features) would give nan here, as -inf - -inf does; finite rows are exact.
    torch.sub(block, peak, out=scratch).exp_()
    return peak.squeeze(dim) + scratch.sum(dim).log()


class SoftmaxObjective(Objective):
    """UniCL's softmax objective (see the module docstring)."""

    name = "softmax"
    kernel_code = 0
    two_sided = True
    has_bias = False

    def dense_terms(
        self, logits: torch.Tensor, targets: torch.Tensor, columns: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column terms from ``Z = S [M, N]`` and ``T [M, N]``; see `Objective.dense_terms`."""
        row_terms = _dense_direction(logits, targets, dim=1)
        if not columns:
            return row_terms, row_terms.new_empty(0)
        return row_terms, _dense_direction(logits, targets, dim=0)

    def new_statistics(self, rows: int, cols: int, like: torch.Tensor, columns: bool) -> Statistics:
        """``r [M]`` (filled block by block) and ``c [N]`` (``-inf``, merged into), or ``None`` without columns."""
        row_lse = like.new_empty(rows)
        return row_lse, like.new_full((cols,), float("-inf")) if columns else None

    def add_block_statistics(self, block: Tensor, rows: slice, statistics: Statistics, scratch: Tensor) -> None:
        """``r`` of the block's rows and its columns' log-sum-exp merged into ``c``."""
        row_lse, col_lse = statistics
        row_lse[rows] = logsumexp_into(block, scratch, dim=0)
        if col_lse is not None:
            torch.logaddexp(col_lse, logsumexp_into(block, scratch, dim=1), out=col_lse)

    def block_weights(
        self, block: Tensor, rows: slice, statistics: Statistics, weights: Weights, scratch: Tensor | None
    ) -> Tensor:
        """``Pᵀ`` with ``P_ij = g_i·exp(S_ij − r_i) + h_j·exp(S_ij − c_j)``."""
        row_lse, col_lse = statistics
        row_weight, col_weight = weights
        column = None
        if col_weight is not None and col_lse is not None and scratch is not None:
            column = torch.sub(block, col_lse[:, None], out=scratch).exp_().mul_(col_weight[:, None])
        if row_weight is None:
            return block.zero_() if column is None else column
        rows_part = block.sub_(row_lse[rows]).exp_().mul_(row_weight[rows])
        return rows_part if column is None else rows_part.add_(column)

    def terms(self, statistics: Statistics, positives: PositiveSums, scale: Tensor, bias: Tensor | None) -> Terms:
        """``l_row = r − s·pos/p`` and ``l_col = c − s·pos/q``."""
        row_lse, col_lse = statistics
        row_terms = row_lse - scale * positives.row / positives.row_count
        if positives.col is None or col_lse is None:
            return row_terms, None
        return row_terms, col_lse - scale * positives.col / positives.col_count

    def target_weight(self, upstream: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """``g/p``: every positive of a row shares its term's weight (a row without positives has no term, and
        ``g = 0``)."""
        return upstream / count.clamp(min=1)

    def reduce(self, row_terms: Tensor, col_terms: Tensor | None, reduction: str, counted: Counted = None) -> Tensor:
        """``(mean l_row + mean l_col)/2``, ``(Σ l_row + Σ l_col)/2``, or ``(l_row + l_col)/2`` per sample.

        With ``counted`` (a batch of ``N`` images and ``M`` texts), each direction's mean and sum run over its
        counted terms only, and ``"none"`` returns ``[N + M]``: ``l_row`` then ``l_col``, NaN where a row or column
        has no positive (no term)."""
        if col_terms is None:
            raise ValueError("the softmax objective reduces row and column terms together; got no column terms")
        if counted is not None:
            return _reduce_counted(row_terms, col_terms, reduction, counted)
        if reduction == "mean":
            return (row_terms.mean() + col_terms.mean()) / 2
        if reduction == "sum":
            return (row_terms.sum() + col_terms.sum()) / 2
        return (row_terms + col_terms) / 2


def _reduce_counted(row_terms: Tensor, col_terms: Tensor, reduction: str, counted: tuple[Tensor, Tensor]) -> Tensor:
    """`SoftmaxObjective.reduce` over the counted terms of each direction (an empty direction adds zero)."""
    if reduction == "none":
        return torch.cat([row_terms, col_terms])
    # where() and not a NaN-skipping sum: a NaN from the features themselves must still reach the loss.
    sums = [torch.where(mask, terms, 0).sum() for terms, mask in zip((row_terms, col_terms), counted, strict=True)]
    if reduction == "sum":
        return (sums[0] + sums[1]) / 2
    means = [total / mask.sum().clamp(min=1) for total, mask in zip(sums, counted, strict=True)]
    return (means[0] + means[1]) / 2


#: The softmax objective, shared by every engine.
SOFTMAX = SoftmaxObjective()
