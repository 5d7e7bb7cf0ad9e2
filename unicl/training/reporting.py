"""What a run reports besides its checkpoints: the training records of its log, and its final weights."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from unicl.models import UniCLModel
from unicl.text.tokenizer import Tokenizer
from unicl.training.config import TrainingConfig
from unicl.training.logs import RunLog
from unicl.training.runtime import Runtime
from unicl.training.state import run_configuration


def train_record(
    losses: list[torch.Tensor],
    lr: float | torch.Tensor,
    logit_scale: float,
    samples: int,
    seconds: float,
    runtime: Runtime,
    **more: Any,
) -> dict[str, Any]:
    """The ``"train"`` record of the steps since the last one (a collective: the loss is every rank's mean).

    Args:
        losses: this rank's loss of each of those steps (scalars, on the device).
        lr: the learning rate now (as the scheduler gives it).
        logit_scale: the model's logit scale now (clamped).
        samples: the samples of those steps over all ranks.
        seconds: the time they took.
        runtime: this process's place in the run.
        **more: more numbers to record after those (the sources' epochs, the unreadable images skipped).
    """
    return {
        "loss": runtime.mean(float(torch.stack(losses).float().mean())),
        "lr": lr,
        "logit_scale": logit_scale,
        "samples_per_second": samples / max(seconds, 1e-9),
        **more,
    }


def write_final(
    config: TrainingConfig, model: UniCLModel, tokenizer: Tokenizer, step: int, log: RunLog, runtime: Runtime
) -> Path:
    """Write ``OUTPUT/final``: the weights (``save_pretrained``), the tokenizer file and ``training.json`` (the
    step, the run's options and the directory it ran in, against which its relative paths resolve), by rank 0;
    returns its path on every rank."""
    final = config.output / "final"
    if runtime.is_main:
        model.save_pretrained(final, tokenizer=tokenizer)
        summary = {"step": step, "options": run_configuration(config), "working_directory": os.getcwd()}
        (final / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
        log.message(f"final weights in {final}")
    return final
