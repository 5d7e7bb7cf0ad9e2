"""The benchmark runs end to end on the CPU and writes its table, CSV and plots."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run_bench(out: Path, *arguments: str) -> tuple[str, list[dict[str, str]]]:
    """Run benchmarks/bench_loss.py with ``arguments`` and ``--out out``; returns its stdout and CSV rows."""
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_loss.py"), *arguments, "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with (out / "bench_loss.csv").open() as handle:
        return result.stdout, list(csv.DictReader(handle))


@pytest.mark.slow
def test_small_cpu_sweep_writes_table_csv_and_plots(tmp_path):
    stdout, rows = _run_bench(
        tmp_path, "--n", "32", "64", "--d", "16", "--repeats", "2",
        "--providers", "unicl-dense", "unicl-chunked", "open_clip-ClipLoss",
    )  # fmt: skip
    assert "unicl-chunked" in stdout and "matches dense" in stdout
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
    stdout, rows = _run_bench(
        tmp_path, "--objective", "sigmoid", "--n", "32", "--d", "16", "--repeats", "2", "--passes", "forward+backward",
        "--no-plot",
    )  # fmt: skip
    assert "open_clip-SigLipLoss (unique labels): matches dense" in stdout
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


def _bench_modules():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_loss
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_loss


def test_rectangular_inputs_have_their_shapes_labels():
    bench_loss = _bench_modules()
    image, text, (labels, text_labels) = bench_loss.make_inputs(5, 3, torch.float32, torch.device("cpu"), "captions:4")
    assert image.shape == (5, 3) and text.shape == (20, 3) and bench_loss.text_count("captions:4", 5) == 20
    assert labels.tolist() == [0, 1, 2, 3, 4] and text_labels.tolist() == [i for i in range(5) for _ in range(4)]
    image, text, (labels, text_labels) = bench_loss.make_inputs(
        6, 3, torch.float32, torch.device("cpu"), "class-bank:9"
    )
    assert text.shape == (9, 3) and text_labels.tolist() == list(range(9))
    assert bool(((labels >= 0) & (labels < 9)).all()) and bench_loss.text_count("mixed", 6) == 6


def test_a_shape_with_a_provider_without_text_labels_is_refused():
    bench_loss = _bench_modules()
    with pytest.raises(SystemExit, match="open_clip-ClipLoss: takes no text_labels, so no --shape captions"):
        bench_loss.main(["--shape", "captions", "--providers", "unicl-dense", "open_clip-ClipLoss", "--n", "8"])
    with pytest.raises(SystemExit, match="--classes must be >= 1; got 0"):
        bench_loss.main(["--shape", "class-bank", "--classes", "0", "--n", "8"])


@pytest.mark.slow
def test_rectangular_sweep_writes_both_providers_side_by_side(tmp_path):
    stdout, rows = _run_bench(
        tmp_path, "--shape", "captions", "--captions-per-image", "3", "--n", "16", "--d", "8", "--repeats", "1",
        "--passes", "forward+backward", "--no-plot",
    )  # fmt: skip
    assert "unicl-chunked (captions:3 labels): matches dense" in stdout
    assert sorted(row["provider"] for row in rows) == ["unicl-chunked", "unicl-dense"]
    assert all(row["m"] == "48" and row["status"] == "ok" and float(row["extra_memory_mb"]) > 0 for row in rows)
