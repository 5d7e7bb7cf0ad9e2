"""The oldest Python, torch and Triton that unicl supports, and the check that refuses older ones.

The floor is the stack CI tests in its second job (``.ci/floor.txt``): torch 2.11 with the Triton 3.6 it pins, on
Python 3.11 (the Kernels page lists the stacks that CI and the GPU checks run). ``pyproject.toml`` declares the
same floors; a test holds the two to each other. Versions are read from the installed distributions' metadata, so
the check imports neither torch nor Triton.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys

MINIMUM_PYTHON = (3, 11)
MINIMUM_TORCH = (2, 11)
MINIMUM_TRITON = (3, 6)


def release(version: str) -> tuple[int, ...]:
    """The release numbers at the start of a version string: ``"2.11.0+cu130"`` gives ``(2, 11, 0)``,
    ``"3.0.0.dev20270101"`` gives ``(3, 0, 0)``; ``()`` when it starts with no number."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or ``None`` when it is not installed as a distribution."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def too_old(name: str, version: str | None, minimum: tuple[int, ...]) -> str | None:
    """A sentence saying that ``version`` of ``name`` is older than ``minimum``, or ``None`` when it is not (or is
    unknown: a version string that starts with no number is not refused)."""
    if version is None:
        return None
    found = release(version)
    if not found or found >= minimum:
        return None
    floor = ".".join(map(str, minimum))
    return f"unicl needs {name} >= {floor}, found {version}: pip install '{name}>={floor}'"


def check_supported_versions() -> None:
    """Refuse a Python or torch older than the floor, with one line saying what to install.

    Raises:
        ImportError: the running Python or the installed torch is older than `MINIMUM_PYTHON` or `MINIMUM_TORCH`.
    """
    python = ".".join(map(str, sys.version_info[:3]))
    for problem in (
        too_old("python", python, MINIMUM_PYTHON),
        too_old("torch", installed_version("torch"), MINIMUM_TORCH),
    ):
        if problem is not None:
            raise ImportError(problem)
