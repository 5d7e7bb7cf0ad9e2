"""The readable reference: materialises the logits ``Z`` and the target matrix ``T`` and lets autograd differentiate.

It holds several ``N × N`` tensors (``Z``, ``T`` and the objective's intermediates and their gradients), so it is
meant for small batches, tests and as the ground truth the other backends are checked against.
"""

from __future__ import annotations

import torch

from unicl.loss.dtypes import accumulation_dtype
from unicl.loss.objectives import SOFTMAX, Objective


def dense_terms(
    u: torch.Tensor,
    v: torch.Tensor,
    scale: torch.Tensor,
    row_keys: torch.Tensor,
    col_keys: torch.Tensor,
    columns: bool = True,
    objective: Objective = SOFTMAX,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row and per-column terms of an objective over ``Z = s·U Vᵀ (+ b)``, computed densely.

    Args:
        u: ``[M, D]`` row (image) features.
        v: ``[N, D]`` column (text) features.
        scale: 0-dim logit scale ``s``.
        row_keys: ``[M]`` target keys of the rows (see `unicl.loss.targets.target_keys`).
        col_keys: ``[N]`` target keys of the columns.
        columns: also compute the column terms (else the second result is empty).
        objective: the objective (`unicl.loss.objectives`).
        bias: 0-dim logit bias ``b`` of an objective that has one.

    Returns:
        ``l_row [M]`` and ``l_col [N]`` (empty without ``columns`` or for a one-sided objective) in the accumulation
        dtype.
    """
    acc = accumulation_dtype(u.dtype)
    logits = scale * (u.to(acc) @ v.to(acc).T)
    if bias is not None:
        logits = logits + bias
    targets = (row_keys[:, None] == col_keys[None, :]).to(acc)
    return objective.dense_terms(logits, targets, columns)
