"""Whether the Triton kernels can run here: the feature dtypes they take, the CPU interpreter, and why not.

Imports no Triton, so the choice of backend (`unicl.loss.backends`) asks it without paying for Triton's import.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

from unicl._versions import MINIMUM_TRITON, installed_version, too_old

#: Feature dtypes the kernels take.
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_install_problem() -> str | None:
    """``None`` when a supported Triton is installed, else a sentence saying what is missing; found without
    importing Triton."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return too_old("triton", installed_version("triton"), MINIMUM_TRITON)


#: `triton_install_problem`'s answer, looked up once when this module is imported, so that ``torch.compile`` never
#: traces the lookup: dynamo refuses ``importlib.util.find_spec`` (torch 2.11 raises ``Unsupported`` under
#: ``fullgraph=True``), and marking the function for dynamo would import ``torch._dynamo``, and with it Triton.
TRITON_INSTALL_PROBLEM = triton_install_problem()


def interpreter_active() -> bool:
    """Whether Triton runs kernels through its CPU interpreter.

    ``TRITON_INTERPRET=1`` must be set before ``triton`` is first imported (by unicl, timm or torch's compile stack),
    because Triton's own library functions are built at that import; set later, it is not in force.
    """
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return False
    standard = sys.modules.get("triton.language.standard")
    return standard is None or type(getattr(standard, "sum", None)).__name__ == "InterpretedFunction"


def triton_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """``None`` if the Triton backend can run on ``device`` for ``dtype`` features, else a sentence saying why not."""
    if TRITON_INSTALL_PROBLEM is not None:
        return TRITON_INSTALL_PROBLEM
    if dtype not in TRITON_DTYPES:
        return f"the Triton kernels take float16, bfloat16 or float32 features, not {dtype}"
    if device.type == "cuda" or (device.type == "cpu" and interpreter_active()):
        return None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "TRITON_INTERPRET=1 was set after triton was imported; set it before importing unicl"
    return f"it needs a CUDA device (got {device}), or CPU tensors with TRITON_INTERPRET=1 set before unicl is imported"
