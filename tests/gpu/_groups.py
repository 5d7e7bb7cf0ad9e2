"""How the GPU tests split over parallel pytest processes (benchmarks/gpu_tests.py runs one process per group).

Triton compiles in the process that launches a kernel, one configuration at a time, so the wall time of the GPU
suite is its compiles divided by the processes that share them out. A group gathers the tests that compile the same
kernels (one schedule, one dtype), so no two processes compile the same thing: each distinct (kernel, tile
configuration, dtype, integer specialisation, constexpr flags) compiles once per process, and autotuning compiles
every candidate tile of a kernel the first time it meets a new specialisation. The parametrised loss test splits
once more by size, because its small cases (N = 1 and N = 17, D = 200) are specialisations of their own.

Every test id maps to exactly one group (:func:`group_of` is a function, and anything it does not recognise goes
to ``"other"``), so running every group of :data:`GROUPS` runs every test once.
"""

from __future__ import annotations

import re

SCHEDULES = ("onepass", "rowwise")
DTYPES = ("fp32", "bf16", "fp16")
#: Every group :func:`group_of` can return, heaviest first (the order in which they are started).
GROUPS: tuple[str, ...] = (
    *(f"large-{dtype}" for dtype in DTYPES),
    *(f"compile-{backend}" for backend in (*SCHEDULES, "chunked")),
    *(f"{schedule}-{dtype}-{part}" for schedule in SCHEDULES for dtype in DTYPES for part in ("main", "small")),
    "chunked",
    "other",
)
#: Case ids of the parametrised loss test that form the ``small`` part of a group.
SMALL_CASES = ("n1-", "n17-")


def group_of(nodeid: str) -> str:
    """The group of one test, from its pytest node id (``path::test_name[param-ids]``)."""
    name = nodeid.rsplit("::", 1)[-1]
    function, _, params = name.partition("[")
    tokens = re.split(r"[-\]]", params)
    dtype = next((token for token in tokens if token in DTYPES), "fp32")
    backend = next((token for token in tokens if token in (*SCHEDULES, "chunked")), None)
    if "large" in function:
        return f"large-{dtype}"
    if "compile" in function and backend is not None:
        return f"compile-{backend}"
    if backend == "chunked":
        return "chunked"
    if backend is None:
        return "other"
    part = "small" if any(case in params for case in SMALL_CASES) else "main"
    return f"{backend}-{dtype}-{part}"
