"""The benchmark runs end to end on the CPU and writes its table, CSV and plots."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_small_cpu_sweep_writes_table_csv_and_plots(tmp_path):
    command = [
        sys.executable, str(ROOT / "benchmarks" / "bench_loss.py"), "--n", "32", "64", "--d", "16", "--repeats", "2",
        "--providers", "unicl-dense", "unicl-chunked", "open_clip-ClipLoss", "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "unicl-chunked" in result.stdout and "matches dense" in result.stdout
    with (tmp_path / "bench_loss.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # 2 sizes x 2 passes x (2 label kinds for unicl backends + 1 for open_clip, which knows no labels).
    assert len(rows) == 2 * 2 * (2 + 2 + 1)
    assert all(row["status"] == "ok" and float(row["time_ms"]) > 0 for row in rows)
    assert {row["device"] for row in rows} and all(row["torch"] for row in rows)
    assert len(list(tmp_path.glob("*.png"))) == 4  # 2 label kinds x 2 passes


def test_correctness_gate_stops_a_wrong_provider():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_loss
        import providers
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    wrong = providers.Provider("wrong", lambda: lambda image, text, labels, scale: (image * 0).sum())
    with pytest.raises(SystemExit, match="correctness gate: wrong"):
        bench_loss.correctness_gate([wrong], torch.device("cpu"), torch.float32, ["mixed"], 10.0)


@pytest.mark.slow
def test_sigmoid_sweep_compares_open_clips_siglip_loss(tmp_path):
    command = [
        sys.executable, str(ROOT / "benchmarks" / "bench_loss.py"), "--objective", "sigmoid", "--n", "32",
        "--d", "16", "--repeats", "2", "--passes", "forward+backward", "--no-plot", "--out", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "open_clip-SigLipLoss (unique labels): matches dense" in result.stdout
    with (tmp_path / "bench_loss.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # unicl's dense and chunked sigmoid backends with 2 label kinds, open_clip with unique labels only.
    assert sorted((row["provider"], row["labels"]) for row in rows) == [
        ("open_clip-SigLipLoss", "unique"),
        ("unicl-sigmoid-chunked", "mixed"), ("unicl-sigmoid-chunked", "unique"),
        ("unicl-sigmoid-dense", "mixed"), ("unicl-sigmoid-dense", "unique"),
    ]  # fmt: skip
    assert all(row["objective"] == "sigmoid" and row["status"] == "ok" for row in rows)


@pytest.mark.slow
def test_a_provider_of_another_objective_is_refused():
    command = [
        sys.executable, str(ROOT / "benchmarks" / "bench_loss.py"), "--objective", "sigmoid",
        "--providers", "unicl-chunked", "--n", "8",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "unicl-chunked: not the sigmoid objective" in result.stderr
