"""Fused Triton kernels of the UniCL loss (:mod:`unicl.kernels.unicl_fused`), imported only when used."""

from __future__ import annotations

import importlib.util
import os

import torch

from unicl.backends.engine import SimilarityEngine

#: Feature dtypes the kernels take.
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """``None`` if the Triton backend can run on ``device`` for ``dtype`` features, else a sentence saying why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if dtype not in TRITON_DTYPES:
        return f"the Triton kernels take float16, bfloat16 or float32 features, not {dtype}"
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if device.type == "cuda" or (interpreting and device.type == "cpu"):
        return None
    return f"it needs a CUDA device (got {device}), or CPU tensors with TRITON_INTERPRET=1 set before unicl is imported"


def triton_engine() -> SimilarityEngine:
    """The Triton engine; importing it compiles nothing until the first launch."""
    from unicl.kernels.unicl_fused import TritonEngine

    return TritonEngine()
