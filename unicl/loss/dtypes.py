"""The dtype the loss accumulates in, shared by every module that computes with features."""

from __future__ import annotations

import contextlib

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics and accumulators use for inputs of ``dtype``: float64 stays, all else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which ``torch.autocast`` is off for ``device``'s type.

    The loss's numerics depend on the features' dtype only: inside a caller's autocast region, CPU and CUDA autocast
    would recast its accumulation-dtype matmuls and ``vecdot`` calls to the lower precision (a float32 loss moved
    by 2.3e-3 under CPU bf16 autocast), and the value reported would no longer be the function differentiated.
    """
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
