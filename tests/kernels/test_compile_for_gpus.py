"""Every autotune configuration of both schedules compiles for sm_80, sm_86, sm_89, sm_90 and sm_100 without a GPU,
issues tensor-core instructions for half precision (wgmma on Hopper), spills nothing to local memory, fits the
chip's shared memory, and the launcher's shared-memory estimate (which prunes configurations per chip) bounds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CAPABILITIES = (80, 86, 89, 90, 100)
KERNELS = ("partials", "weights", "lse", "grad")
DTYPES = ("bfloat16", "float16", "float32")


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    # The compiler, not the interpreter: a fresh process without TRITON_INTERPRET.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton-cache"))
    # Two processes (the CI machine has two cores), each compiling some of the chips.
    halves = (CAPABILITIES[::2], CAPABILITIES[1::2])
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "unicl.kernels.compile_report", "--capability", *map(str, capabilities),
             "--dtype", *DTYPES],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for capabilities in halves
    ]  # fmt: skip
    reports = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=1800)
        assert process.returncode == 0, stderr[-3000:]
        reports += json.loads(stdout)
    return reports


def test_every_configuration_was_compiled(reports):
    import torch

    from unicl.kernels import one_pass, unicl_fused

    module = {"partials": one_pass, "weights": one_pass, "lse": unicl_fused, "grad": unicl_fused}
    expected = sum(
        len(module[kernel].configs_for(kernel, divmod(capability, 10), getattr(torch, dtype)))
        for kernel in KERNELS
        for capability in CAPABILITIES
        for dtype in DTYPES
    )
    assert len(reports) == expected
    assert {r["kernel"] for r in reports} == set(KERNELS)


def _name(report: dict) -> str:
    return f"{report['kernel']} sm_{report['capability']} {report['dtype']} {report['config']} w{report['num_warps']}"


def test_hopper_half_precision_uses_wgmma(reports):
    hopper_half = [r for r in reports if r["capability"] == 90 and r["dtype"] != "float32"]
    assert hopper_half
    assert [_name(r) for r in hopper_half if not r["wgmma"]] == []


def test_half_precision_runs_on_tensor_cores_everywhere(reports):
    half = [r for r in reports if r["dtype"] != "float32"]
    assert [_name(r) for r in half if not r["tensor_cores"]] == []


def test_no_local_memory_in_ptx(reports):
    assert [_name(r) for r in reports if r["ptx_local_memory"]] == []


def test_no_register_spills_in_sass(reports):
    if any(r["sass_spills"] is None for r in reports):
        pytest.skip("no cuobjdump to read the SASS with")
    assert [_name(r) for r in reports if r["sass_spills"]] == []


def test_shared_memory_fits_the_chip(reports):
    assert [_name(r) for r in reports if r["shared_bytes"] > r["shared_limit"]] == []


def test_the_pruning_estimate_bounds_the_compilers_shared_memory(reports):
    assert [_name(r) for r in reports if r["shared_estimate"] < r["shared_bytes"]] == []


def test_every_chip_keeps_a_configuration_after_pruning(reports):
    """No configuration the autotuner could pick is pruned by its estimate on a chip it compiles for, so pruning
    never leaves a chip with only oversized tiles."""
    assert [_name(r) for r in reports if r["shared_estimate"] > r["shared_limit"]] == []
