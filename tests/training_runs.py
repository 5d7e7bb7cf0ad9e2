"""What two finished training runs are compared by: their train records and their final weights."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file


def records(output: Path, kind: str) -> list[dict]:
    """The records of one ``kind`` ("train", "eval", "resume", ...) in a run's ``log.jsonl``."""
    lines = (output / "log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def assert_cached_run_matches(whole: Path, cached: Path, steps: int, lr: float) -> None:
    """A gradient-cached run (``cached``) against the same run on the whole batch (``whole``): every step's loss
    agrees to float32 rounding (1e-5 relative), and so do the final weights, up to what AdamW makes of rounding-level
    gradient differences (its step divides by the gradient's own size, so an entry whose gradient is all rounding can
    move by a fraction of ``lr`` per step; the plain and cached gradients are compared directly, to 1e-5, in
    tests/test_gradient_cache.py)."""
    losses = [[record["loss"] for record in records(run, "train")] for run in (whole, cached)]
    assert len(losses[0]) == len(losses[1]) == steps
    for whole_loss, cached_loss in zip(*losses):
        assert abs(cached_loss - whole_loss) <= 1e-5 * abs(whole_loss)
    first, second = (load_file(run / "final" / "model.safetensors") for run in (whole, cached))
    assert first.keys() == second.keys()
    largest = max(float((second[name].double() - tensor.double()).abs().max()) for name, tensor in first.items())
    assert largest <= 0.1 * lr * steps
