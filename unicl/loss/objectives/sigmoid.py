"""The sigmoid objective: SigLIP's pairwise loss with label-aware positives (``objective="sigmoid"``).

With logits ``Z = s·U Vᵀ + b`` (SigLIP initialises ``s = 10``, ``b = −10``) and ``t_ij = +1`` for a positive pair,
``−1`` otherwise, every pair is one binary decision::

    ℓ_i  = Σ_j softplus(−t_ij·Z_ij) = Σ_j softplus(Z_ij) − Σ_{j∈P(i)} Z_ij
    loss = Σ_i ℓ_i / M        (SigLIP's normalisation: per image, summed over texts)

The positive part is ``s·⟨u_i, Σ_{j∈P(i)} v_j⟩ + b·p_i``, ``O(N·D)``. The only ``N²`` reductions are the row sums of
``softplus(Z)`` and, for ``∂L/∂b``, of ``σ(Z)``; there are no column terms, since every pair is counted once. The
entry weight of ``∂L/∂Z`` is ``P_ij = g_i·σ(Z_ij)`` and its target part ``−g_i·T_ij``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unicl.loss.objectives.base import Counted, Objective, PositiveSums, Statistics, Terms, Weights

#: torch's softplus returns ``z`` itself above this threshold: ``log1p(e^-20) = 2e-9`` is below float32's rounding of
#: ``z >= 20`` and a relative 1e-10 in float64.
SOFTPLUS_THRESHOLD = 20.0
#: Texts per slab of the chunked walk's softplus: ``SCRATCH_ROWS × B`` float32 entries stay in a core's cache.
SCRATCH_ROWS = 256


class SigmoidObjective(Objective):
    """SigLIP's sigmoid objective with label-aware positives (see the module docstring)."""

    name = "sigmoid"
    kernel_code = 1
    two_sided = False
    has_bias = True
    local_entry_weights = True

    def dense_terms(
        self, logits: torch.Tensor, targets: torch.Tensor, columns: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``ℓ_i = Σ_j softplus(−t_ij·Z_ij)`` from ``Z [M, N]`` (bias included) and ``T [M, N]``; no column terms."""
        signs = 2 * targets - 1
        row_terms = torch.nn.functional.softplus(-signs * logits).sum(1)
        return row_terms, row_terms.new_empty(0)

    def new_statistics(self, rows: int, cols: int, like: torch.Tensor, columns: bool) -> Statistics:
        """``Σ_j softplus(Z_ij)`` and ``Σ_j σ(Z_ij)``, ``[M]`` each, filled block by block."""
        return like.new_empty(rows), like.new_empty(rows)

    def add_block_statistics(self, block: Tensor, rows: slice, statistics: Statistics, scratch: Tensor) -> None:
        """The block's rows' sums of ``softplus(Z)`` and ``σ(Z)``."""
        self.block_statistics_and_weights(block, rows, statistics, scratch)

    def block_statistics_and_weights(
        self, block: Tensor, rows: slice, statistics: Statistics, scratch: Tensor
    ) -> Tensor:
        """The block's rows' sums of ``softplus(Z)`` and ``σ(Z)``, and ``σ(Z)ᵀ`` itself (the entry weights for
        ``g = 1``) in ``block``."""
        softplus_sum, sigmoid_sum = statistics
        # softplus goes through the block a slab of texts at a time, into a scratch that stays in cache, so that the
        # block itself is the walk's only full-size buffer and becomes σ(Z) in place.
        step = scratch.shape[0]
        totals = scratch[0].new_zeros(block.shape[1])
        for start in range(0, block.shape[0], step):
            slab = block[start : start + step]
            totals += torch.ops.aten.softplus.out(slab, 1, SOFTPLUS_THRESHOLD, out=scratch[: slab.shape[0]]).sum(0)
        softplus_sum[rows] = totals
        weights = block.sigmoid_()
        if sigmoid_sum is not None:
            sigmoid_sum[rows] = weights.sum(0)
        return weights

    def new_scratch(self, block: torch.Tensor) -> torch.Tensor:
        """A slab of `SCRATCH_ROWS` texts of the block: softplus needs no full-size buffer."""
        return block.new_empty(min(SCRATCH_ROWS, block.shape[0]), block.shape[1])

    def block_weights(
        self, block: Tensor, rows: slice, statistics: Statistics, weights: Weights, scratch: Tensor | None
    ) -> Tensor:
        """``Pᵀ`` with ``P_ij = g_i·σ(Z_ij)`` (no column terms, so ``h`` is unused)."""
        row_weight = weights[0]
        if row_weight is None:
            return block.zero_()
        return block.sigmoid_().mul_(row_weight[rows])

    def terms(self, statistics: Statistics, positives: PositiveSums, scale: Tensor, bias: Tensor | None) -> Terms:
        """``ℓ_i = Σ_j softplus(Z_ij) − (s·pos_i + b·p_i)``; no column terms."""
        positive_logits = scale * positives.row
        if bias is not None:
            positive_logits = positive_logits + bias * positives.row_count
        return statistics[0] - positive_logits, None

    def target_weight(self, upstream: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """``g``: every positive pair is a term of its own."""
        return upstream

    def bias_grad(
        self, statistics: Statistics, row_weight: torch.Tensor | None, row_count: torch.Tensor
    ) -> torch.Tensor | None:
        """``∂L/∂b = Σ_i g_i·(Σ_j σ(Z_ij) − p_i)``."""
        sigmoid_sum = statistics[1]
        if row_weight is None or sigmoid_sum is None:
            return None
        return (row_weight.to(sigmoid_sum.dtype) * (sigmoid_sum - row_count)).sum()

    def reduce(self, row_terms: Tensor, col_terms: Tensor | None, reduction: str, counted: Counted = None) -> Tensor:
        """``Σ_i ℓ_i / M``, ``Σ_i ℓ_i``, or ``ℓ`` itself: every image has a term, positives or not, so ``counted``
        changes nothing."""
        if reduction == "mean":
            return row_terms.mean()
        if reduction == "sum":
            return row_terms.sum()
        return row_terms


#: The sigmoid objective, shared by every engine.
SIGMOID = SigmoidObjective()
