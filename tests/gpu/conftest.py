"""GPU test selection: with ``UNICL_GPU_TEST_GROUP`` set, only that group's tests run (see ``_groups.py``).

benchmarks/gpu_tests.py starts one pytest process per group, all at once, so the Triton compiles of the suite
spread over the machine's cores; each process collects the whole suite and keeps its share here.
"""

from __future__ import annotations

import os

import pytest
from _groups import GROUPS, group_of

GROUP_VARIABLE = "UNICL_GPU_TEST_GROUP"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the tests of tests/gpu outside the group named by ``UNICL_GPU_TEST_GROUP``, if it is set."""
    group = os.environ.get(GROUP_VARIABLE)
    if not group:
        return
    if group not in GROUPS:
        raise pytest.UsageError(f"{GROUP_VARIABLE}={group!r} is not one of {', '.join(GROUPS)}")
    here = os.path.dirname(__file__)
    keep, drop = [], []
    for item in items:
        in_gpu_suite = os.path.dirname(str(item.path)) == here
        (keep if not in_gpu_suite or group_of(item.nodeid) == group else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
