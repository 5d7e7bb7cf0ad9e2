"""Row-by-row products of ``[N, D]`` feature matrices, in blocks of rows so no second ``[N, D]`` tensor is held.

Half-precision rows are upcast one block at a time, to the dtype of the other operand (the accumulation dtype).
"""

from __future__ import annotations

import torch

#: Rows per step, which bounds every temporary here to this many feature rows (0.5 MiB at D = 512 in float32).
ROW_BLOCK = 256


def row_dots(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``out[k] = ⟨x[k], y[k]⟩`` in ``y``'s dtype.

    Args:
        x: ``[K, D]``.
        y: ``[K, D]``.

    Returns:
        ``[K]``.
    """
    out = y.new_empty(x.shape[0])
    for start in range(0, x.shape[0], ROW_BLOCK):
        rows = slice(start, start + ROW_BLOCK)
        out[rows] = torch.linalg.vecdot(x[rows].to(y.dtype), y[rows])
    return out
