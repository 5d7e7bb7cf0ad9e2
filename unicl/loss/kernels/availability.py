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


#: `triton_install_problem`'s answer, once asked.
_install_problem: list[str | None] = []


@torch.compiler.assume_constant_result
def triton_install_problem() -> str | None:
    """``None`` when a supported Triton is installed, else a sentence saying what is missing; found without
    importing Triton, and looked up once per process.

    Decided outside the traced code under ``torch.compile``: dynamo refuses to trace ``importlib.util.find_spec``
    (torch 2.11 raises ``Unsupported`` under ``fullgraph=True``), so it calls this function eagerly and keeps the
    answer as a constant of the graph. (``functools.cache`` would hide the marker from dynamo.)
    """
    if not _install_problem:
        if importlib.util.find_spec("triton") is None:
            _install_problem.append("triton is not installed")
        else:
            _install_problem.append(too_old("triton", installed_version("triton"), MINIMUM_TRITON))
    return _install_problem[0]


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
    problem = triton_install_problem()
    if problem is not None:
        return problem
    if dtype not in TRITON_DTYPES:
        return f"the Triton kernels take float16, bfloat16 or float32 features, not {dtype}"
    if device.type == "cuda" or (device.type == "cpu" and interpreter_active()):
        return None
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "TRITON_INTERPRET=1 was set after triton was imported; set it before importing unicl"
    return f"it needs a CUDA device (got {device}), or CPU tensors with TRITON_INTERPRET=1 set before unicl is imported"
