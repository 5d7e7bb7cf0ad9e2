"""The contract between the shared UniCL autograd function and the engines that walk the similarity matrix.

An engine does only the two ``N²`` parts of the objective: the row and column log-sum-exp of
``S_ij = s·a_i·b_j·⟨u_i, v_j⟩`` and, in backward, the products of the softmax part of ``∂L/∂S`` with the features.
The per-row and per-column factors ``a`` and ``b`` are the inverse feature norms when the loss normalises, so the
features are normalised inside the tiles and no normalised copy of them is ever held. Everything that involves the
targets is ``O(N·D)`` and lives in `unicl.loss.autograd`, shared by every engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Similarity:
    """The matrix ``S_ij = s·a_i·b_j·⟨u_i, v_j⟩``, described but never materialised.

    Attributes:
        u: ``[M, D]`` row features.
        v: ``[N, D]`` column features, same dtype and device.
        scale: 0-dim logit scale ``s`` in the accumulation dtype.
        row_scale: ``[M]`` factors ``a`` in the accumulation dtype, or ``None`` for ones.
        col_scale: ``[N]`` factors ``b`` in the accumulation dtype, or ``None`` for ones.
    """

    u: torch.Tensor
    v: torch.Tensor
    scale: torch.Tensor
    row_scale: torch.Tensor | None = None
    col_scale: torch.Tensor | None = None


class SimilarityEngine(Protocol):
    """Computes the ``N²`` reductions over ``S`` without the caller holding ``S``."""

    def logsumexp(self, sim: Similarity, columns: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Row and column log-sum-exp of ``S``.

        Args:
            sim: the similarity matrix ``S`` (``M × N``).
            columns: also compute ``c``; without it the column work is skipped and ``c`` is ``None``.

        Returns:
            ``r [M]`` and ``c [N]`` in the accumulation dtype: ``r_i = logsumexp_j S_ij``, ``c_j = logsumexp_i S_ij``.
        """
        ...

    def softmax_grad(
        self,
        sim: Similarity,
        row_lse: torch.Tensor,
        col_lse: torch.Tensor | None,
        row_weight: torch.Tensor | None,
        col_weight: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Products of ``H_ij = a_i·P_ij·b_j`` with the features, where
        ``P_ij = g^r_i·exp(S_ij − r_i) + g^c_j·exp(S_ij − c_j)``.

        ``(H V)_i = a_i·Σ_j P_ij·(b_j v_j)``: with ``a``, ``b`` the inverse norms, this is ``a_i`` times the product
        of ``P`` with the normalised features, which is what the chain rule through the normalisation starts from.

        Args:
            sim: the similarity matrix ``S`` (``M × N``).
            row_lse: ``[M]`` ``r``, as returned by `logsumexp`.
            col_lse: ``[N]`` ``c`` (read only when ``col_weight`` is given).
            row_weight: ``[M]`` ``g^r``, or ``None`` for zero.
            col_weight: ``[N]`` ``g^c``, or ``None`` for zero.

        Returns:
            ``H V [M, D]`` and ``Hᵀ U [N, D]`` in the accumulation dtype.
        """
        ...
