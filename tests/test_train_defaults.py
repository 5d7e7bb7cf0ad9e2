"""The training command's defaults learn: with only the data, the batch and the steps given, ``unicl_tiny`` trained
on scikit-learn's real digits (32-px PNG files) classifies held-out digits zero-shot with top-1 >= 0.9 within the
time issue 19 allows on 2 CPU cores (3 minutes; asserted at 4 for slower machines).

Before the small-image augmentation (`unicl.transforms.small_image_augmentation`) and the 16-pixel patches of the
preset, this command collapsed: the loss stayed at ln(64) from step 20 and top-1 ended at 0.07 (chance: 0.1).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
BATCH, STEPS = 64, 400
#: Issue 19 asks for 3 minutes on 2 CPU cores, start-up included; the bound leaves room for a slower or busier CI.
SECONDS = 240


def _write_digits(root: Path) -> tuple[Path, Path]:
    """All 1,797 digits as ImageFolders split 75/25 per class: each 8x8 scan NEAREST-upscaled to a 32-px RGB PNG."""
    digits = load_digits()
    train, held_out = train_test_split(
        range(len(digits.target)), test_size=0.25, random_state=0, stratify=digits.target
    )
    for split, indices in (("train", train), ("eval", held_out)):
        for index in indices:
            folder = root / split / NAMES[digits.target[index]]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[index] * 255 / 16).astype("uint8")
            Image.fromarray(pixels).resize((32, 32), Image.NEAREST).convert("RGB").save(folder / f"{index}.png")
    return root / "train", root / "eval"


def test_the_default_command_trains_unicl_tiny_on_digits_to_90_percent_zero_shot(tmp_path):
    train, held_out = _write_digits(tmp_path / "digits")
    output = tmp_path / "run"
    command = [
        sys.executable, "-m", "unicl.train", "--model", "unicl_tiny", "--image-folder", str(train),
        "--batch-size", str(BATCH), "--steps", str(STEPS), "--output", str(output), "--device", "cpu",
        "--eval-folder", str(held_out),
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if record["kind"] == "train"]
    (evaluation,) = [record for record in records if record["kind"] == "eval"]
    assert evaluation["step"] == STEPS and evaluation["images"] == 450 and evaluation["classes"] == 10
    # A collapsed run keeps every embedding alike: its loss stays at ln(batch), its top-1 at chance.
    assert losses[-1] < math.log(BATCH) - 1, losses
    assert evaluation["top1"] >= 0.9, (evaluation, losses)
    assert seconds <= SECONDS, f"{seconds:.0f} s"
