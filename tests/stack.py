"""Which installed stacks the test suite can run on: Triton 3.6's CPU interpreter calls ``int()`` on one-element
numpy arrays, which numpy 2.4 refuses, so with numpy 2.4 or later every interpreted kernel test would fail."""

from __future__ import annotations

from unicl._versions import release


def interpreter_stack_problem(triton_version: str | None, numpy_version: str) -> str | None:
    """One line saying why Triton's CPU interpreter cannot run on this stack, or ``None`` when it can (or Triton
    is not installed)."""
    if triton_version is None or release(triton_version) >= (3, 7) or release(numpy_version) < (2, 4):
        return None
    return (
        f"Triton {triton_version}'s CPU interpreter (TRITON_INTERPRET=1) fails with numpy {numpy_version}: "
        "install numpy<2.4 beside it (pip install 'numpy<2.4', as .ci/floor.txt pins) or Triton 3.7 or later"
    )
