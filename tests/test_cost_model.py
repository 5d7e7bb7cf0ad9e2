"""The cost model (benchmarks/cost_model.py) against what really runs: torch's ``FlopCounterMode`` for torch
products, and the ``tl.dot`` work and ``exp2`` elements the Triton interpreter executes for the kernels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from unicl import unicl_loss
from unicl.loss.kernels.availability import interpreter_active

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import cost_model  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))

needs_interpreter = pytest.mark.skipif(
    not interpreter_active(), reason="counts tl.dot under TRITON_INTERPRET=1 (tests/conftest.py sets it on CPU)"
)


def _forward_backward(backend: str, n: int, d: int, chunk_size: int | None = None) -> None:
    generator = torch.Generator().manual_seed(n + d)
    image = torch.randn(n, d, generator=generator, requires_grad=True)
    text = torch.randn(n, d, generator=generator, requires_grad=True)
    labels = torch.randint(-1, max(2, n // 6), (n,), generator=generator)
    unicl_loss(image, text, labels, 15.0, backend=backend, chunk_size=chunk_size).backward()


def _counted(backend: str, n: int, d: int, chunk_size: int | None = None) -> tuple[float, dict[str, float] | None]:
    """Torch product flops, and (under the interpreter) the kernels' dot flops and exponentials."""
    with FlopCounterMode(display=False) as counter:
        if backend.startswith("triton"):
            with cost_model.interpreter_counts() as counts:
                _forward_backward(backend, n, d, chunk_size)
            return counter.get_total_flops(), counts
        _forward_backward(backend, n, d, chunk_size)
    return counter.get_total_flops(), None


def _split(plan: cost_model.Plan) -> tuple[float, float, float]:
    kernels = [launch for launch in plan.launches if launch.kind == "triton"]
    torch_flops = sum(launch.flops for launch in plan.launches if launch.kind != "triton")
    return torch_flops, sum(launch.flops for launch in kernels), sum(launch.exps for launch in kernels)


@pytest.mark.slow
@pytest.mark.parametrize(("n", "d", "chunk_size"), [(300, 40, None), (300, 40, 64), (257, 24, 100)])
def test_chunked_flops_equal_the_flop_counter(n, d, chunk_size):
    counted, _ = _counted("chunked", n, d, chunk_size)
    plan = cost_model.chunked_plan(n, d, torch.float32, chunk_size=chunk_size)
    assert plan.flops == counted == cost_model.minimum_flops(n, d)


def test_dense_flops_equal_the_flop_counter():
    counted, _ = _counted("dense", 200, 24)
    assert cost_model.dense_plan(200, 24, torch.float32).flops == counted


@pytest.mark.slow
@needs_interpreter
@pytest.mark.parametrize(("n", "d", "chunk_size"), [(96, 40, None), (130, 72, None), (130, 40, 48)])
def test_one_pass_counts_equal_what_the_interpreter_runs(n, d, chunk_size):
    from unicl.loss.kernels.one_pass import PARTIALS

    torch_flops, counts = _counted("triton", n, d, chunk_size)
    tiles = PARTIALS.interpreter_tiles()
    plan = cost_model.one_pass_plan(n, d, torch.float32, tiles, tiles, 1, tiles["BLOCK_M"], chunk_size)
    assert _split(plan) == (torch_flops, counts["dot_flops"], counts["exp2"])


@pytest.mark.slow
@needs_interpreter
@pytest.mark.parametrize(("n", "d"), [(96, 40), (70, 72)])
def test_rowwise_counts_equal_what_the_interpreter_runs(n, d):
    from unicl.loss.kernels import tiles, two_pass

    torch_flops, counts = _counted("triton_rowwise", n, d)
    plan = cost_model.rowwise_plan(
        n, d, torch.float32, tiles.LSE.interpreter_tiles(), two_pass.GRAD.interpreter_tiles()
    )
    assert _split(plan) == (torch_flops, counts["dot_flops"], counts["exp2"])


@pytest.mark.slow
@needs_interpreter
def test_one_pass_issues_the_minimum_work_at_n_512():
    """Every tl.dot at its padded tile shape plus every torch product, forward and backward, N = D = 512."""
    torch_flops, counts = _counted("triton", 512, 512)
    assert torch_flops + counts["dot_flops"] <= 1.15 * cost_model.minimum_flops(512, 512)


@pytest.fixture(scope="module")
def plans_at_65536() -> list[cost_model.Plan]:
    return cost_model.all_plans(65536, 512, torch.bfloat16)


@pytest.mark.slow
def test_predicted_h200_time_of_the_one_pass_schedule_meets_the_goal(plans_at_65536):
    """N = 65,536, D = 512, bf16 on an H200: at most 44 ms (50% of peak at 8·N²·D) under the stated efficiencies,
    and the two-pass schedule it replaces issues 3x the minimum there."""
    plans = {plan.backend: plan for plan in plans_at_65536}
    one_pass = plans["unicl triton (one pass)"]
    assert one_pass.flops == cost_model.minimum_flops(65536, 512)
    assert one_pass.seconds(cost_model.CHIPS["H200"]) <= 0.044
    assert plans["unicl triton_rowwise (two pass)"].flops == 3 * cost_model.minimum_flops(65536, 512)
    assert plans["Inf-CL 1.2.1 (both directions)"].flops == 2.5 * cost_model.minimum_flops(65536, 512)


@pytest.mark.slow
def test_command_line_prints_every_backend_and_the_sources(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "cost_model.py"), "--n", "4096", "--d", "256"]
    result = subprocess.run([*command, "--json", str(tmp_path / "cost.json")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("unicl dense", "unicl chunked", "triton_rowwise", "triton (one pass)", "Inf-CL", "datasheet"):
        assert name in result.stdout
    assert (tmp_path / "cost.json").exists()
    bad = subprocess.run([*command[:2], "--n", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--n and --d must be positive" in bad.stderr


@pytest.mark.slow  # plans_at_65536 takes seconds to build
def test_the_docs_show_the_models_current_table(plans_at_65536):
    table = cost_model.format_table(cost_model.rows_for(plans_at_65536, 65536, 512), 65536, 512, "bfloat16", True)
    assert table in (ROOT / "docs" / "kernels.md").read_text()
