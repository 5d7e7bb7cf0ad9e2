"""Row-by-row products of ``[N, D]`` feature matrices, computed in blocks so no second ``[N, D]`` tensor is held.

Half-precision rows are upcast one block at a time, to the dtype of the other operand (the accumulation dtype).
"""

from __future__ import annotations

import torch

#: Rows per step, which bounds every temporary here to this many feature rows.
ROW_BLOCK = 1024


def row_dots(x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """``out[k] = ⟨x[k], y[index[k]]⟩`` (``y[k]`` when ``index`` is ``None``), in ``y``'s dtype.

    Args:
        x: ``[K, D]``.
        y: ``[G, D]`` (``G = K`` without ``index``).
        index: ``[K]`` rows of ``y``, or ``None``.

    Returns:
        ``[K]``.
    """
    out = y.new_empty(x.shape[0])
    gathered = y.new_empty(min(ROW_BLOCK, x.shape[0]), y.shape[1]) if index is not None else y
    for start in range(0, x.shape[0], ROW_BLOCK):
        rows = slice(start, start + ROW_BLOCK)
        other = y[rows] if index is None else torch.index_select(y, 0, index[rows], out=gathered[: x[rows].shape[0]])
        out[rows] = torch.linalg.vecdot(x[rows].to(y.dtype), other)
    return out


def subtract_rows(
    target: torch.Tensor, source: torch.Tensor, index: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """In place: ``target[k] -= weight[k] · source[index[k]]`` (``weight`` ``None`` means 1); returns ``target``.

    Args:
        target: ``[K, D]``, overwritten.
        source: ``[G, D]``, same dtype.
        index: ``[K]`` rows of ``source``.
        weight: ``[K]`` or ``None``.
    """
    gathered = source.new_empty(min(ROW_BLOCK, target.shape[0]), source.shape[1])
    for start in range(0, target.shape[0], ROW_BLOCK):
        rows = slice(start, start + ROW_BLOCK)
        block = torch.index_select(source, 0, index[rows], out=gathered[: index[rows].shape[0]])
        if weight is None:
            target[rows].sub_(block)
        else:
            target[rows].addcmul_(block, weight[rows, None], value=-1)
    return target
