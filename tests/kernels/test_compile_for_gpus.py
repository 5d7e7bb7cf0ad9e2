"""Every autotune configuration of both schedules compiles for sm_80, sm_86, sm_89, sm_90 and sm_100 without a GPU, at
the specialisation a real launch gets (``python -m unicl.loss.kernels.compile_report``: D = 512, contiguous features,
16-byte aligned pointers), for every objective each kernel computes (the sigmoid objective in the row, weights and
gradient kernels): half precision issues tensor-core instructions (wgmma on Hopper) fed by ``cp.async``
pipelines, nothing spills, shared memory fits the chip, the launcher's shared-memory estimate (which prunes
configurations per chip) bounds it, and the one-pass forward issues at most twice the row-only kernel's SASS per
``S`` entry, with two exponentials per entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: Every test reads the compile report, minutes of compiling on a CPU: the whole module is the slow tier's.
pytestmark = pytest.mark.slow

CAPABILITIES = (80, 86, 89, 90, 100)
KERNELS = ("partials", "weights", "lse", "lse_sigmoid", "grad")
DTYPES = ("bfloat16", "float16", "float32")
#: The arguments a launch at D = 512 with N a multiple of 16 specialises as divisible by 16, per kernel.
DIVISIBLE = {
    "partials": {"q_ptr", "k_ptr", "row_part_ptr", "col_part_ptr", "M", "N", "D", "stride_q", "stride_k"},
    "lse": {"q_ptr", "k_ptr", "lse_ptr", "M", "N", "D", "stride_q", "stride_k"},
    "lse_sigmoid": {"q_ptr", "k_ptr", "lse_ptr", "second_ptr", "M", "N", "D", "stride_q", "stride_k"},
    "weights": {"q_ptr", "k_ptr", "w_ptr", "M", "N", "D", "stride_q", "stride_k", "stride_w"},
    "grad": {"q_ptr", "k_ptr", "out_ptr", "M", "N", "D", "stride_q", "stride_k", "stride_out"},
}


@pytest.fixture(scope="module")
def summary(tmp_path_factory) -> dict:
    # The compiler, not the interpreter: a fresh process without TRITON_INTERPRET, two compiler processes (the CI
    # machine has two cores).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton-cache"))
    command = [
        sys.executable, "-m", "unicl.loss.kernels.compile_report", "--jobs", "2",
        "--capability", *map(str, CAPABILITIES), "--dtype", *DTYPES,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def reports(summary) -> list[dict]:
    return summary["reports"]


def _name(report: dict) -> str:
    where = f"sm_{report['capability']} {report['dtype']} {report['config']} w{report['num_warps']}"
    return f"{report['kernel']} {report['objective']} {where}"


def test_every_configuration_was_compiled(reports):
    import torch

    from unicl.loss.kernels.compile_report import KERNELS as SPECS

    expected = sum(
        len(SPECS[kernel].objectives) * len(SPECS[kernel].configs_for(divmod(capability, 10), getattr(torch, dtype)))
        for kernel in KERNELS
        for capability in CAPABILITIES
        for dtype in DTYPES
    )
    assert len(reports) == expected
    assert {(r["kernel"], r["objective"]) for r in reports} == {
        ("partials", "softmax"), ("lse", "softmax"), ("lse_sigmoid", "sigmoid"),
        *((kernel, objective) for kernel in ("weights", "grad") for objective in ("softmax", "sigmoid")),
    }  # fmt: skip


def test_compiled_with_the_launch_specialisation(summary, reports):
    """What was compiled is what a D = 512 launch runs: the JIT's divisibility-16 specialisation of the pointers,
    sizes and strides, and pipelined loads (``cp.async``) in every configuration of more than one stage."""
    assert summary["launch"]["d"] == 512 and summary["launch"]["n"] % 16 == 0
    missing = [(_name(r), sorted(DIVISIBLE[r["kernel"]] - set(r["divisible_by_16"]))) for r in reports]
    assert [m for m in missing if m[1]] == []
    assert [_name(r) for r in reports if r["num_stages"] > 1 and not r["cp_async"]] == []


def test_hopper_half_precision_uses_wgmma(reports):
    hopper_half = [r for r in reports if r["capability"] == 90 and r["dtype"] != "float32"]
    assert hopper_half
    assert [_name(r) for r in hopper_half if not r["wgmma"]] == []


def test_half_precision_runs_on_tensor_cores_everywhere(reports):
    half = [r for r in reports if r["dtype"] != "float32"]
    assert [_name(r) for r in half if not r["tensor_cores"]] == []


def test_nothing_spills(reports):
    """No register spills (``STL``/``LDL`` in the SASS), no stack frame and no local memory in the PTX, for every
    configuration the autotuner may pick on its chip."""
    spilling = [
        f"{_name(r)}: {r['registers']} registers, {r['spill_store_bytes']} B stored, {r['spill_load_bytes']} B loaded"
        for r in reports
        if r["spill_store_bytes"] or r["spill_load_bytes"] or r["stack_bytes"] or r["ptx_local_memory"]
    ]
    assert spilling == []


def test_shared_memory_fits_the_chip(reports):
    assert [_name(r) for r in reports if r["shared_bytes"] > r["shared_limit"]] == []


def test_the_pruning_estimate_bounds_the_compilers_shared_memory(reports):
    assert [_name(r) for r in reports if r["shared_estimate"] < r["shared_bytes"]] == []


def test_every_chip_keeps_a_configuration_after_pruning(reports):
    """No configuration the autotuner could pick is pruned by its estimate on a chip it compiles for, so pruning
    never leaves a chip with only oversized tiles."""
    assert [_name(r) for r in reports if r["shared_estimate"] > r["shared_limit"]] == []


def test_forward_counts_are_recorded(reports):
    forward = [r for r in reports if r["kernel"] in ("partials", "lse", "lse_sigmoid")]
    assert forward and [_name(r) for r in forward if r["loop"] is None] == []


def test_one_pass_forward_takes_two_exponentials_per_entry(reports):
    """One ``MUFU.EX2`` per entry and direction in the column loop (the one-pass forward has two directions, the
    row kernel one), plus a few per row and tile."""
    ex2 = {r["kernel"]: [] for r in reports}
    for r in reports:
        if r["loop"] is not None and r["objective"] == "softmax":
            ex2[r["kernel"]].append((_name(r), r["loop"]["ex2"]))
    assert [(name, count) for name, count in ex2["partials"] if not 2.0 <= count < 2.2] == []
    assert [(name, count) for name, count in ex2["lse"] if not 1.0 <= count < 1.6] == []


def test_one_pass_forward_issues_at_most_twice_the_row_kernels_instructions(summary):
    """Per chip and dtype, the costliest ``partials`` configuration's SASS per ``S`` entry in its column loop is at
    most twice the cheapest ``lse`` configuration's (the row-only kernel does half the statistics)."""
    ratios = summary["forward_ratios"]
    assert set(ratios) == {f"sm_{c} {d}" for c in CAPABILITIES for d in DTYPES}
    assert {group: entry["instructions"] for group, entry in ratios.items() if entry["instructions"]["ratio"] > 2} == {}


def test_sigmoid_row_kernel_takes_three_special_functions_per_entry(reports):
    """The sigmoid objective's forward: one ``MUFU.EX2`` (``exp(−|z|)``) and two ``MUFU.RCP`` (``e / (2 + e)`` for
    ``log1p``, ``1 / (1 + e)`` for ``σ``) per entry of ``Z``, plus a few per row and tile: no software logarithm."""
    sigmoid = [r for r in reports if r["kernel"] == "lse_sigmoid"]
    assert sigmoid and [_name(r) for r in sigmoid if r["loop"] is None] == []
    assert [(_name(r), r["loop"]["ex2"]) for r in sigmoid if not 1.0 <= r["loop"]["ex2"] < 1.6] == []
    special = [(_name(r), r["loop"]["by_opcode"].get("MUFU", 0.0)) for r in sigmoid]
    assert [(name, count) for name, count in special if not 3.0 <= count < 3.6] == []
