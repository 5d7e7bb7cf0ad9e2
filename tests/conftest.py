"""Shared pytest configuration.

Without a GPU, the Triton kernels run through Triton's CPU interpreter. ``TRITON_INTERPRET`` must be set before
``triton`` is first imported (which importing unicl, timm or torch's compile stack does), so it is set here, before
any test module is collected; spawned test processes inherit it. With a GPU the kernels are compiled instead.

The suite has two tiers: tests marked ``slow`` (end-to-end commands, Triton-interpreter sweeps, long property runs)
and the rest, the quick tier ``python -m pytest -m "not slow"``. ``--max-unmarked-seconds`` (unmarked_time_limit.py,
whose hooks are loaded here) keeps the quick tier quick: CI fails when an unmarked test takes longer than the limit.
"""

import os

import numpy
import pytest
import torch
from hypothesis import HealthCheck, settings
from stack import interpreter_stack_problem
from unmarked_time_limit import pytest_addoption  # noqa: F401 (the option's hook, loaded here)
from unmarked_time_limit import pytest_configure as configure_time_limit

from unicl._versions import installed_version

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile(
    "unicl", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("unicl")


def pytest_configure(config: pytest.Config) -> None:
    """Refuse, in one line and before collection, a stack whose Triton interpreter cannot run the kernel tests; then
    set up ``--max-unmarked-seconds``."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        problem = interpreter_stack_problem(installed_version("triton"), numpy.__version__)
        if problem is not None:
            raise pytest.UsageError(problem)
    configure_time_limit(config)
