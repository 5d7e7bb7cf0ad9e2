"""Multi-label image lists: a CSV (or TSV) of image paths and ``;``-separated class labels.

The file has a header naming an image column (``image`` or ``filepath``, as caption files) and a ``labels``
column; each row is one image and the classes it shows, separated by ``;`` (``dog;person``; an empty cell is an
image with none of the classes). The classes are the distinct labels of the file in sorted order, as an
ImageFolder sorts its folders, so a class-names file lists display names in that order. Relative image paths start
at the file's folder. PASCAL VOC2007 classification, scored with 11-point mAP, is such a list.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from unicl.data.datasets import load_rgb, read_image_rows

LABELS_COLUMN = "labels"
LABEL_SEPARATOR = ";"


class MultiLabelImages(Dataset):
    """The ``(image, multi-hot targets)`` samples of a labels file (see the module docstring).

    Args:
        path: the CSV, or a TSV when it ends in ``.tsv``.
        transform: turns a PIL image into a tensor; ``None`` until set (the command checks files before it has
            a model).

    Attributes:
        classes: the sorted distinct labels ``C``.
        image_paths: ``N`` resolved image paths.
        targets: ``[N, C]`` bool, which classes each image has.

    Raises:
        FileNotFoundError: the file or one of its images is missing.
        ValueError: no header with an image and a ``labels`` column, no rows, or no labels at all.
    """

    def __init__(self, path: str | os.PathLike[str], transform: Callable[[Image.Image], Any] | None = None) -> None:
        rows = read_image_rows(
            path, (LABELS_COLUMN,), "labels", f"a {LABELS_COLUMN!r} column of {LABEL_SEPARATOR!r}-separated class names"
        )
        labels = [sorted({label.strip() for label in cell.split(LABEL_SEPARATOR) if label.strip()}) for _, cell in rows]
        self.classes = sorted({label for row in labels for label in row})
        if not self.classes:
            raise ValueError(f"{str(path)!r} has no labels in its {LABELS_COLUMN!r} column")
        self.image_paths = [image for image, _ in rows]
        column = {name: index for index, name in enumerate(self.classes)}
        self.targets = torch.zeros(len(rows), len(self.classes), dtype=torch.bool)
        for row, names in enumerate(labels):
            self.targets[row, [column[name] for name in names]] = True
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        if self.transform is None:
            raise RuntimeError("MultiLabelImages.transform is not set")
        return self.transform(load_rgb(self.image_paths[index])), self.targets[index]
