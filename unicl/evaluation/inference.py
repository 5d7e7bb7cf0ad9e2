"""How every evaluation runs a model over a dataset: ordered batches with an optional progress bar, and autocast."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from unicl.data.workers import worker_ignores_stop_signals


def inference_batches(
    dataset: Dataset, batch_size: int, workers: int, progress: bool, description: str
) -> Iterator[Any]:
    """The dataset's samples in order, collated into batches of ``batch_size`` by ``workers`` processes, with a
    progress bar on standard error named ``description`` when ``progress``."""
    # A stop signal sent to the process group is the main process's to answer (a training run checkpoints first).
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, worker_init_fn=worker_ignores_stop_signals
    )
    return iter(tqdm(loader, desc=description, disable=not progress, file=sys.stderr))


def inference_autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on CUDA for ``precision="bf16"``; float32 otherwise (on the CPU ``"bf16"`` runs in float32,
    where bf16 matrix products are slow and gain no memory worth having at evaluation)."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
