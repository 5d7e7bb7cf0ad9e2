"""Every autotune configuration compiles for sm_80 and sm_90 without a GPU, uses wgmma on Hopper for half
precision, spills nothing to local memory and fits the chip's shared memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

CAPABILITIES = (80, 90)
DTYPES = ("bfloat16", "float16", "float32")


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    # The compiler, not the interpreter: a fresh process without TRITON_INTERPRET.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton-cache"))
    command = [sys.executable, "-m", "unicl.kernels.compile_report", "--capability", *map(str, CAPABILITIES)]
    result = subprocess.run([*command, "--dtype", *DTYPES], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_every_configuration_was_compiled(reports):
    import torch

    from unicl.kernels.unicl_fused import configs_for

    expected = sum(
        len(configs_for(kernel, capability // 10, getattr(torch, dtype)))
        for kernel in ("lse", "grad")
        for capability in CAPABILITIES
        for dtype in DTYPES
    )
    assert len(reports) == expected


def _name(report: dict) -> str:
    return f"{report['kernel']} sm_{report['capability']} {report['dtype']} {report['config']} w{report['num_warps']}"


def test_hopper_half_precision_uses_wgmma(reports):
    hopper_half = [r for r in reports if r["capability"] == 90 and r["dtype"] != "float32"]
    assert hopper_half
    assert [_name(r) for r in hopper_half if not r["wgmma"]] == []


def test_no_local_memory_in_ptx(reports):
    assert [_name(r) for r in reports if r["ptx_local_memory"]] == []


def test_no_register_spills_in_sass(reports):
    if any(r["sass_spills"] is None for r in reports):
        pytest.skip("no cuobjdump to read the SASS with")
    assert [_name(r) for r in reports if r["sass_spills"]] == []


def test_shared_memory_fits_the_chip(reports):
    assert [_name(r) for r in reports if r["shared_bytes"] > r["shared_limit"]] == []
