"""How every evaluation runs a model over a dataset: the options they share (`InferenceOptions`), ordered batches
with an optional progress bar, and autocast."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from unicl._checks import check_choice, check_positive_int
from unicl.data.workers import worker_ignores_stop_signals
from unicl.evaluation.names import PRECISIONS


@dataclass(frozen=True)
class InferenceOptions:
    """How an evaluation runs the model over its images (and texts): the options that
    `unicl.evaluation.features.image_features`, `unicl.evaluation.zeroshot.zeroshot_scores`,
    `unicl.evaluation.zeroshot.zeroshot_accuracy`, `unicl.evaluation.retrieval.retrieval_recall` and
    `unicl.evaluation.probe.run_linear_probe` share, checked once when built.

    Attributes:
        batch_size: images (and captions) per batch, ``>= 1``.
        workers: data-loading processes, ``>= 0``.
        device: where to run the model: a ``torch.device`` or its name (kept as a ``torch.device``).
        precision: ``"fp32"``, or ``"bf16"`` (autocast on CUDA; float32 elsewhere, see `autocast`).
        progress: show progress bars on standard error.

    Raises:
        TypeError: a ``batch_size`` or ``workers`` that is not an ``int``, a ``progress`` that is not a ``bool``.
        ValueError: a field out of range or an unknown ``device`` or ``precision``, in one line naming it.

    Examples:
        >>> InferenceOptions(batch_size=8, device="cpu")
        InferenceOptions(batch_size=8, workers=0, device=device(type='cpu'), precision='fp32', progress=False)
    """

    batch_size: int = 64
    workers: int = 0
    device: torch.device | str = "cpu"
    precision: str = "fp32"
    progress: bool = False

    def __post_init__(self) -> None:
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("workers", self.workers, minimum=0)
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device must be a torch.device or a device name such as 'cuda:0'; got {self.device!r}"
            ) from None
        # Frozen: the device is kept in the one form the evaluations use.
        object.__setattr__(self, "device", device)
        check_choice("precision", self.precision, PRECISIONS)
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress must be a bool; got {type(self.progress).__name__}")

    @property
    def torch_device(self) -> torch.device:
        """``device`` as a ``torch.device`` (as which it is kept)."""
        return torch.device(self.device)

    def batches(self, dataset: Dataset, description: str) -> Iterator[Any]:
        """The dataset's samples in order, collated into batches of ``batch_size`` by ``workers`` processes, with a
        progress bar on standard error named ``description`` when ``progress``."""
        # A stop signal sent to the process group is the main process's to answer (a training run checkpoints first).
        loader = DataLoader(
            dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
            worker_init_fn=worker_ignores_stop_signals,
        )  # fmt: skip
        return iter(tqdm(loader, desc=description, disable=not self.progress, file=sys.stderr))

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on CUDA for ``precision="bf16"``; float32 otherwise (on the CPU ``"bf16"`` runs in float32,
        where bf16 matrix products are slow and gain no memory worth having at evaluation)."""
        if self.precision == "bf16" and self.torch_device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()


#: The default `InferenceOptions`: batches of 64 on the CPU in float32, no worker processes, no progress bars.
DEFAULT_INFERENCE = InferenceOptions()
