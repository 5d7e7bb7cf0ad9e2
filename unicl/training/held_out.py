"""Evaluation during a run: zero-shot accuracy on a held-out ImageFolder, every rank scoring its share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder

from unicl.data.datasets import read_class_names
from unicl.data.transforms import image_transform
from unicl.data.unreadable import reporting_unreadable
from unicl.evaluation.inference import InferenceOptions
from unicl.evaluation.zeroshot import zeroshot_accuracy
from unicl.models import UniCLModel
from unicl.text.tokenizer import Tokenizer
from unicl.training.runtime import Runtime


class HeldOut:
    """This rank's share of the held-out ImageFolder (every ``world_size``-th image) and its class names.

    Args:
        folder: the ImageFolder of held-out classes (``--eval-folder``).
        class_names: a file of its class names, one per line (``--eval-classnames``; default: the folder names).
        model: the model evaluated (its evaluation transform).
        runtime: this process's place in the run.
    """

    def __init__(self, folder: Path, class_names: Path | None, model: UniCLModel, runtime: Runtime) -> None:
        images = reporting_unreadable(ImageFolder(str(folder), transform=image_transform(model)))
        self.class_names: list[Any] = images.classes
        if class_names is not None:
            self.class_names = read_class_names(class_names, len(images.classes))
        self.images = Subset(images, range(runtime.rank, len(images), runtime.world_size))
        self.runtime = runtime

    def evaluate(
        self, model: UniCLModel, tokenizer: Tokenizer, *, batch_size: int, workers: int, device: torch.device,
        precision: str,
    ) -> dict[str, float]:  # fmt: skip
        """Zero-shot top-1 (and top-5 with 5 classes or more) over every rank's share (a collective); leaves
        ``model`` in training mode.

        Args:
            model: the model evaluated.
            tokenizer: the run's tokenizer.
            batch_size: images per batch.
            workers: data-loading processes.
            device: where the model is.
            precision: the run's precision (bf16 evaluates in bf16, any other in fp32).

        Returns:
            ``top1``, ``top5`` (with 5 classes or more), ``images`` and ``classes``.
        """
        counts = [0.0, 0.0, 0.0]
        if len(self.images) > 0:
            inference = InferenceOptions(batch_size=batch_size, workers=workers, device=device,
                                         precision="bf16" if precision == "bf16" else "fp32")  # fmt: skip
            scores = zeroshot_accuracy(model, self.images, self.class_names, tokenizer, inference=inference)
            images = scores["images"]
            # Unrounded: ties earn fractional credit (the metrics' expected credit of random tie-breaking).
            counts = [scores["top1"] * images, scores.get("top5", 0.0) * images, images]
        model.train()
        top1, top5, images = self.runtime.sum(counts)
        results = {"top1": top1 / images, "images": int(images), "classes": len(self.class_names)}
        if len(self.class_names) >= 5:
            results["top5"] = top5 / images
        return results
