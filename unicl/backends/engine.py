"""The contract between the shared UniCL autograd function and the engines that walk the similarity matrix.

An engine does only the two ``N²`` parts of the objective: the row and column log-sum-exp of ``S = s·U Vᵀ`` and, in
backward, the products of the softmax part of ``∂L/∂S`` with the features. Everything that involves the targets is
``O(N·D)`` and lives in :mod:`unicl.backends.function`, shared by every engine.
"""

from __future__ import annotations

from typing import Protocol

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics and accumulators use for inputs of ``dtype``: float64 stays, all else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class SimilarityEngine(Protocol):
    """Computes the ``N²`` reductions over ``S = s·U Vᵀ`` without the caller holding ``S``."""

    def logsumexp(
        self, u: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, columns: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Row and column log-sum-exp of ``S``.

        Args:
            u: ``[M, D]`` row features.
            v: ``[N, D]`` column features, same dtype as ``u``.
            scale: 0-dim logit scale ``s`` in the accumulation dtype.
            columns: also compute ``c``; without it the column work is skipped and ``c`` is ``None``.

        Returns:
            ``r [M]`` and ``c [N]`` in the accumulation dtype: ``r_i = logsumexp_j S_ij``, ``c_j = logsumexp_i S_ij``.
        """
        ...

    def softmax_grad(
        self,
        u: torch.Tensor,
        v: torch.Tensor,
        scale: torch.Tensor,
        row_lse: torch.Tensor,
        col_lse: torch.Tensor | None,
        row_weight: torch.Tensor | None,
        col_weight: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Products of ``P_ij = g^r_i·exp(S_ij − r_i) + g^c_j·exp(S_ij − c_j)`` with the features.

        Args:
            u: ``[M, D]`` row features.
            v: ``[N, D]`` column features.
            scale: 0-dim ``s``.
            row_lse: ``[M]`` ``r``, as returned by :meth:`logsumexp`.
            col_lse: ``[N]`` ``c`` (read only when ``col_weight`` is given).
            row_weight: ``[M]`` ``g^r``, or ``None`` for zero.
            col_weight: ``[N]`` ``g^c``, or ``None`` for zero.

        Returns:
            ``P V [M, D]`` and ``Pᵀ U [N, D]`` in the accumulation dtype.
        """
        ...
