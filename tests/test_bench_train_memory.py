"""The training-memory benchmark runs end to end on the CPU: its CSV, plot and README, and its command line."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_train_memory.py"
COLUMNS = [
    "batch", "mode", "micro_batch", "extra_memory_mb", "features_mb", "seconds_per_step", "microseconds_per_sample",
    "threads", "machine",
]  # fmt: skip
EMBED_DIM = 64  # unicl_tiny's


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_train_memory
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return bench_train_memory


@pytest.mark.slow
def test_quick_run_writes_csv_plot_readme_and_caching_saves_memory(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "train_memory.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames is not None and reader.fieldnames[: len(COLUMNS)] == COLUMNS
        rows = list(reader)
    assert sorted((int(r["batch"]), r["mode"], r["micro_batch"]) for r in rows) == [
        (16, "cached", "8"), (16, "plain", ""), (128, "cached", "8"), (128, "plain", ""),
    ]  # fmt: skip
    for r in rows:
        assert r["note"] == "", r["note"]
        assert float(r["seconds_per_step"]) > 0 and float(r["cpu_seconds_per_step"]) > 0
        assert int(r["threads"]) == 1 and r["machine"]
        per_sample = float(r["seconds_per_step"]) / int(r["batch"]) * 1e6
        assert math.isclose(float(r["microseconds_per_sample"]), per_sample, rel_tol=1e-9)
        assert math.isclose(float(r["features_mb"]), 4 * int(r["batch"]) * EMBED_DIM * 4 / 2**20, rel_tol=1e-9)
        # The resident peak includes allocator overhead and kernels' scratch that the live-tensor count cannot see.
        assert 0 < float(r["tensor_peak_mb"]) <= float(r["extra_memory_mb"]) * 1.05 + 1.0
    largest = {r["mode"]: r for r in rows if int(r["batch"]) == 128}
    # Plain holds 128 samples' activations, cached 8 samples' at a time: several times less by both methods.
    for column in ("extra_memory_mb", "tensor_peak_mb"):
        assert float(largest["cached"][column]) < 0.5 * float(largest["plain"][column]), column
    assert (tmp_path / "train_memory.png").stat().st_size > 0
    readme = (tmp_path / "README.md").read_text()
    assert "--quick" in readme and "load average" in readme and "torch" in readme


def test_help_describes_the_measurement(bench, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.parse_args(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--micro-batch" in out and "VmHWM" in out and "--quick" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batches", "0"], "argument --batches: expected a positive integer, got '0'"),
        (["--micro-batch", "x"], "argument --micro-batch: expected a positive integer, got 'x'"),
        (["--model", "nope"], "argument --model: expected one of"),
        (["--memory-fraction", "2"], "argument --memory-fraction: expected a number in (0, 1]"),
    ],
)
def test_bad_arguments_are_refused_by_name(bench, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        bench.parse_args(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_live_tensor_count_matches_the_bytes_of_new_tensors(bench):
    import torch

    kept = torch.zeros(1000)
    with bench.LiveTensorBytes() as counter:
        a = torch.ones(250)  # 1,000 bytes
        b = a * 2  # another 1,000 bytes
        view = b[:10]  # shares b's storage: nothing new
        kept.add_(1)  # in place on a tensor from before: nothing new
        del a
        c = torch.ones(500, dtype=torch.float64)  # 4,000 bytes, while b (1,000) is alive
        del b
        live_with_view = counter.live
        del view
        live_after = counter.live
    assert counter.peak == 5000
    assert live_with_view == 5000 and live_after == 4000
    assert c.numel() == 500


def test_memory_prediction_extrapolates_in_the_batch(bench):
    def row(batch, mode, micro_batch, extra):
        return bench.Row(batch, mode, micro_batch, extra, 0.0, 1.0, 1.0, 1, "cpu")

    done = [row(64, "plain", "", 20.0), row(128, "plain", "", 40.0), row(128, "cached", 32, 5.0)]
    job = bench.Job(512, "plain", None, "unicl_tiny", "auto", 1, 1, 0)
    assert bench.predicted_peak_mb(done, job) == pytest.approx(160.0)
    assert bench.predicted_peak_mb(done, bench.Job(512, "cached", 32, "unicl_tiny", "auto", 1, 1, 0)) == 20.0
    assert bench.predicted_peak_mb(done, bench.Job(512, "cached", 8, "unicl_tiny", "auto", 1, 1, 0)) is None
