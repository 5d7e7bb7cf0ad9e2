"""What an objective is to the engines: the per-entry function of the logits, its derivative and the target algebra.

Every objective of unicl is a function of the logits ``Z = s·U Vᵀ (+ b)`` and the positive set ``T`` of
`unicl.loss.targets`, and splits into two parts:

* an ``N²`` part that only an engine can afford: per-row (and, for two-sided objectives, per-column) reductions of an
  entry function of ``Z`` in forward, and in backward the products of an entry weight ``P_ij`` with the features;
* a target part, which the per-key sums of `unicl.loss.targets.PositiveGroups` give exactly in ``O(N·D)``.

An `Objective` describes both: the engines (`unicl.loss.chunked`, the Triton schedules of `unicl.loss.kernels`) ask
it for the entry functions, `unicl.loss.autograd` for the target algebra, `unicl.loss.dense` for the reference terms
and the loss's entries for the reduction. The Triton kernels select the entry functions by `Objective.kernel_code`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

#: The per-row (and per-column) reductions an engine returns from forward, in the accumulation dtype. Their meaning is
#: the objective's: the softmax objective's are the row and column log-sum-exp ``(r [M], c [N] or None)``, the sigmoid
#: objective's the row sums of ``softplus(Z)`` and ``σ(Z)`` (``[M]`` each).
Statistics = tuple[Tensor, Tensor | None]
#: The upstream weights of the row terms ``g [M]`` and of the column terms ``h [N]``, ``None`` for zero.
Weights = tuple[Tensor | None, Tensor | None]
#: The row terms ``[M]`` and the column terms ``[N]`` (``None`` where there are none).
Terms = tuple[Tensor, Tensor | None]
#: Which row terms ``[M]`` and column terms ``[N]`` exist, or ``None`` for all (see `Objective.reduce`).
Counted = tuple[Tensor, Tensor] | None


@dataclass(frozen=True)
class PositiveSums:
    """What the terms need of the positive sets, from the per-key sums of `unicl.loss.targets.PositiveGroups`.

    Attributes:
        row: ``[M]`` ``⟨u_i, Σ_{j∈P(i)} v_j⟩``.
        col: ``[N]`` ``⟨v_j, Σ_{i∈Q(j)} u_i⟩``, or ``None`` when no column terms are wanted.
        row_count: ``[M]`` ``p_i``, the positives of each row.
        col_count: ``[N]`` ``q_j``, the positives of each column.
    """

    row: Tensor
    col: Tensor | None
    row_count: Tensor
    col_count: Tensor


class Objective(ABC):
    """One contrastive objective over the logits ``Z = s·U Vᵀ (+ b)`` of a block of ``M`` rows and ``N`` columns.

    Attributes:
        name: the objective's name, as the loss's entries and the commands spell it.
        kernel_code: the value of the Triton kernels' ``OBJECTIVE`` constant that selects this objective's entry
            functions.
        two_sided: whether the objective has column terms (an image-to-text and a text-to-image direction) or row
            terms only.
        has_bias: whether the logits carry a learnable bias ``b``.
        local_entry_weights: whether the entry weight ``P_ij`` depends on ``Z_ij`` and the row's upstream weight only
            (no statistic of the whole row or column): then one walk can give the statistics and, for a uniform
            upstream weight, the products of backward (`block_statistics_and_weights`).
    """

    name: ClassVar[str]
    kernel_code: ClassVar[int]
    two_sided: ClassVar[bool]
    has_bias: ClassVar[bool]
    local_entry_weights: ClassVar[bool] = False

    # --- the reference ------------------------------------------------------------------------------------------------

    @abstractmethod
    def dense_terms(
        self, logits: torch.Tensor, targets: torch.Tensor, columns: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-row and per-column terms from the materialised matrices (the reference).

        Args:
            logits: ``[M, N]`` ``Z`` in the accumulation dtype.
            targets: ``[M, N]`` ``T`` (1 for a positive pair, else 0), same dtype.
            columns: also compute the column terms (else the second result is empty).

        Returns:
            ``l_row [M]`` and ``l_col [N]`` (empty for a one-sided objective or without ``columns``).
        """

    # --- the N² part, block by block (the chunked engine) -------------------------------------------------------------

    @abstractmethod
    def new_statistics(self, rows: int, cols: int, like: torch.Tensor, columns: bool) -> Statistics:
        """Empty forward statistics for an ``rows × cols`` block, filled by `add_block_statistics`.

        Args:
            rows: ``M``.
            cols: ``N``.
            like: a tensor with the accumulation dtype and device.
            columns: whether the column statistics are wanted.
        """

    def new_scratch(self, block: torch.Tensor) -> torch.Tensor:
        """The forward walk's scratch buffer for blocks like ``block`` (``[N, B]``): a full block by default."""
        return torch.empty_like(block)

    @abstractmethod
    def add_block_statistics(self, block: Tensor, rows: slice, statistics: Statistics, scratch: Tensor) -> None:
        """Reduce one block of logits into ``statistics``.

        Args:
            block: ``[N, B]`` ``Zᵀ`` of the rows ``rows`` (the bias included), may be overwritten.
            rows: the block's rows.
            statistics: as `new_statistics` made them; updated in place.
            scratch: the buffer `new_scratch` made, cut to the block.
        """

    @abstractmethod
    def block_weights(
        self, block: Tensor, rows: slice, statistics: Statistics, weights: Weights, scratch: Tensor | None
    ) -> Tensor:
        """The entry weights ``Pᵀ [N, B]`` of one block, the engine's part of ``∂L/∂Z``.

        Args:
            block: ``[N, B]`` ``Zᵀ`` of the rows ``rows`` (the bias included), may be overwritten.
            rows: the block's rows.
            statistics: the forward statistics.
            weights: the upstream weights ``g`` of the row terms and ``h`` of the column terms.
            scratch: ``[N, B]`` buffer of ``block``'s dtype, given whenever ``h`` is.

        Returns:
            ``Pᵀ``: ``block``, ``scratch`` or a view of one of them.
        """

    def block_statistics_and_weights(
        self, block: Tensor, rows: slice, statistics: Statistics, scratch: Tensor
    ) -> Tensor:
        """`add_block_statistics` and `block_weights` for an upstream weight of one, in one pass over the block; only
        objectives with `local_entry_weights` have it.

        Args:
            block: ``[N, B]`` ``Zᵀ`` of the rows ``rows`` (the bias included), overwritten.
            rows: the block's rows.
            statistics: as `new_statistics` made them; updated in place.
            scratch: the buffer `new_scratch` made, cut to the block.

        Returns:
            ``Pᵀ [N, B]`` for ``g = 1``: ``block``, ``scratch`` or a view of one of them.
        """
        raise NotImplementedError(f"the {self.name} objective's entry weights need whole-row statistics")

    # --- the target part ----------------------------------------------------------------------------------------------

    @abstractmethod
    def terms(self, statistics: Statistics, positives: PositiveSums, scale: Tensor, bias: Tensor | None) -> Terms:
        """The row and column terms from the statistics and the positive sums.

        Args:
            statistics: the forward statistics.
            positives: the positive sums and counts.
            scale: 0-dim ``s``.
            bias: 0-dim ``b`` or ``None``.

        Returns:
            ``l_row [M]`` and ``l_col [N]`` (``None`` when ``positives.col`` is).
        """

    @abstractmethod
    def target_weight(self, upstream: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """The weight of each row's (or column's) positive sum in ``∂L/∂Z``: ``∂L/∂Z_ij`` holds ``−w_i·T_ij``.

        Args:
            upstream: ``[M]`` the upstream weights of the terms.
            count: ``[M]`` their positive counts.
        """

    def bias_grad(
        self, statistics: Statistics, row_weight: torch.Tensor | None, row_count: torch.Tensor
    ) -> torch.Tensor | None:
        """``∂L/∂b`` from the forward statistics, or ``None`` for an objective without a bias.

        Args:
            statistics: the forward statistics.
            row_weight: ``[M]`` the upstream weights of the row terms, or ``None`` for zero.
            row_count: ``[M]`` ``p_i``.
        """
        return None

    # --- the reduction ------------------------------------------------------------------------------------------------

    @abstractmethod
    def reduce(self, row_terms: Tensor, col_terms: Tensor | None, reduction: str, counted: Counted = None) -> Tensor:
        """Combine the terms of a batch.

        Args:
            row_terms: ``[M]``.
            col_terms: ``[N]`` (two-sided objectives), else ``None``.
            reduction: ``"mean"``, ``"sum"`` or ``"none"``.
            counted: which row and column terms exist (``[M]`` and ``[N]`` booleans: a term needs a positive), or
                ``None`` when all do (a square batch).

        Returns:
            A scalar, or a vector for ``"none"`` (for a two-sided objective with ``counted``: the row terms, then
            the column terms).
        """
