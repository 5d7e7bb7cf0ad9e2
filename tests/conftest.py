"""Shared pytest configuration.

Without a GPU, the Triton kernels run through Triton's CPU interpreter. ``TRITON_INTERPRET`` must be set before
``triton`` is first imported (which importing unicl, timm or torch's compile stack does), so it is set here, before
any test module is collected; spawned test processes inherit it. With a GPU the kernels are compiled instead.

The suite has two tiers: tests marked ``slow`` (end-to-end commands, Triton-interpreter sweeps, long property runs)
and the rest, the quick tier ``python -m pytest -m "not slow"``. ``--max-unmarked-seconds`` (unmarked_time_limit.py,
whose hooks are loaded here) keeps the quick tier quick: CI fails when an unmarked test takes longer than the limit.
"""

import os

import torch
from hypothesis import HealthCheck, settings
from unmarked_time_limit import pytest_addoption, pytest_configure  # noqa: F401 (the option's hooks, loaded here)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile(
    "unicl", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("unicl")
