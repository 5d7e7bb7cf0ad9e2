"""The readable reference: materialises ``S`` and the target matrix ``T`` and lets autograd differentiate.

It holds several ``N × N`` tensors (``S``, ``T``, two log-softmaxes and their gradients), so it is meant for small
batches, tests and as the ground truth the other backends are checked against.
"""

from __future__ import annotations

import torch

from unicl.loss.dtypes import accumulation_dtype


def dense_terms(
    u: torch.Tensor,
    v: torch.Tensor,
    scale: torch.Tensor,
    row_keys: torch.Tensor,
    col_keys: torch.Tensor,
    columns: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row and per-column UniCL terms of ``S = s·U Vᵀ``, computed densely.

    Args:
        u: ``[M, D]`` row (image) features.
        v: ``[N, D]`` column (text) features.
        scale: 0-dim logit scale ``s``.
        row_keys: ``[M]`` target keys of the rows (see `unicl.loss.targets.target_keys`).
        col_keys: ``[N]`` target keys of the columns.
        columns: also compute the column terms (else the second result is empty).

    Returns:
        ``l_row [M]`` and ``l_col [N]`` in the accumulation dtype.
    """
    acc = accumulation_dtype(u.dtype)
    sim = scale * (u.to(acc) @ v.to(acc).T)
    targets = (row_keys[:, None] == col_keys[None, :]).to(acc)
    row_terms = torch.logsumexp(sim, dim=1) - (targets * sim).sum(1) / targets.sum(1)
    if not columns:
        return row_terms, row_terms.new_empty(0)
    col_terms = torch.logsumexp(sim, dim=0) - (targets * sim).sum(0) / targets.sum(0)
    return row_terms, col_terms
