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
