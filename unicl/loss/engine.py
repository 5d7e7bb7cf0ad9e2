"""The contract between the shared autograd function and the engines that walk the similarity matrix.

An engine does only the ``N²`` parts of an objective (`unicl.loss.objectives`): in forward, the objective's per-row
(and per-column) reductions of an entry function of the logits ``Z = S (+ b)`` with
``S_ij = s·a_i·b_j·⟨u_i, v_j⟩``; in backward, the products of the objective's entry weights ``P`` with the features.
The per-row and per-column factors ``a`` and ``b`` are the inverse feature norms when the loss normalises, so the
features are normalised inside the tiles and no normalised copy of them is ever held. Everything that involves the
targets is ``O(N·D)`` and lives in `unicl.loss.autograd`, shared by every engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from unicl.loss.objectives import Objective, Statistics, Weights


@dataclass(frozen=True)
class Similarity:
    """The logits ``Z_ij = s·a_i·b_j·⟨u_i, v_j⟩ + β``, described but never materialised.

    Attributes:
        u: ``[M, D]`` row features.
        v: ``[N, D]`` column features, same dtype and device.
        scale: 0-dim logit scale ``s`` in the accumulation dtype.
        row_scale: ``[M]`` factors ``a`` in the accumulation dtype, or ``None`` for ones.
        col_scale: ``[N]`` factors ``b`` in the accumulation dtype, or ``None`` for ones.
        bias: 0-dim logit bias ``β`` in the accumulation dtype, or ``None`` for an objective without one.
    """

    u: torch.Tensor
    v: torch.Tensor
    scale: torch.Tensor
    row_scale: torch.Tensor | None = None
    col_scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None


class SimilarityEngine(Protocol):
    """Computes an objective's ``N²`` reductions over ``Z`` without the caller holding ``Z``."""

    def statistics(self, sim: Similarity, objective: Objective, columns: bool = True) -> Statistics:
        """The objective's forward statistics of ``Z`` (see `unicl.loss.objectives.base.Statistics`).

        Args:
            sim: the logits ``Z`` (``M × N``).
            objective: the objective.
            columns: also compute the column statistics of a two-sided objective; without it the column work is
                skipped.

        Returns:
            The statistics, in the accumulation dtype: for the softmax objective ``r [M]`` and ``c [N]`` (``None``
            without ``columns``), ``r_i = logsumexp_j S_ij``, ``c_j = logsumexp_i S_ij``; for the sigmoid objective
            ``Σ_j softplus(Z_ij)`` and ``Σ_j σ(Z_ij)``.
        """
        ...

    def weighted_products(
        self, sim: Similarity, objective: Objective, statistics: Statistics, weights: Weights
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Products of ``H_ij = a_i·P_ij·b_j`` with the features, where ``P`` is the objective's entry weight:
        ``P_ij = g_i·exp(S_ij − r_i) + h_j·exp(S_ij − c_j)`` for the softmax objective, ``g_i·σ(Z_ij)`` for the
        sigmoid one.

        ``(H V)_i = a_i·Σ_j P_ij·(b_j v_j)``: with ``a``, ``b`` the inverse norms, this is ``a_i`` times the product
        of ``P`` with the normalised features, which is what the chain rule through the normalisation starts from.

        Args:
            sim: the logits ``Z`` (``M × N``).
            objective: the objective.
            statistics: as `statistics` returned them.
            weights: ``(g [M], h [N])``, each ``None`` for zero (``h`` read by two-sided objectives only).

        Returns:
            ``H V [M, D]`` and ``Hᵀ U [N, D]`` in the accumulation dtype.
        """
        ...
