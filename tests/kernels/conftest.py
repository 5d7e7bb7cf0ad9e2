"""Kernel tests run the Triton kernels through the CPU interpreter.

``TRITON_INTERPRET`` is read when a ``@triton.jit`` decorator runs, so it is set here, before any test module
imports :mod:`unicl.kernels.unicl_fused`. The compile checks need the real compiler and run in a subprocess
without it.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"
