"""Image datasets on local files: caption files of (image, caption) rows and ImageFolder roots with merged classes.

A caption file is a CSV (or, ending in ``.tsv``, a TSV) with a header naming an ``image`` (or ``filepath``) column
and a ``caption`` (or ``title``) column, open_clip's names. Relative image paths start at the file's folder. An image
with several captions is listed on several rows, one caption each (COCO's five captions are five rows); an optional
``hard_negative`` column holds, per row, a text that describes no image of the file (NegCLIP's swapped caption), empty
where a row has none.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from unicl.text.prompts import class_synonyms

IMAGE_COLUMNS = ("image", "filepath")
CAPTION_COLUMNS = ("caption", "title")
HARD_NEGATIVE_COLUMNS = ("hard_negative",)


def _read_table(path: Path, kind: str) -> tuple[list[str], list[dict[str, str]]]:
    """The header and the rows of a CSV (or ``.tsv``) file."""
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {str(path)!r} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def read_image_rows(
    path: str | os.PathLike[str], value_columns: Sequence[str], kind: str, value_description: str
) -> list[tuple[Path, str]]:
    """The ``(image path, value)`` rows of a CSV (or ``.tsv``) with a header naming an image column
    (`IMAGE_COLUMNS`) and a value column (the first of ``value_columns`` present), image paths resolved against the
    file's folder: what caption files and multi-label files share.

    Args:
        path: the file.
        value_columns: accepted names of the value column, in order of preference.
        kind: what the file is, for messages (``"caption"``).
        value_description: the value column as messages describe it.

    Raises:
        FileNotFoundError: the file or one of its images is missing.
        ValueError: no header with an image and a value column, or no rows.
    """
    path = Path(path)
    fields, table = _read_table(path, kind)
    image_column = next((c for c in IMAGE_COLUMNS if c in fields), None)
    value_column = next((c for c in value_columns if c in fields), None)
    if image_column is None or value_column is None:
        raise ValueError(
            f"{str(path)!r} needs a header with an image column {IMAGE_COLUMNS} and {value_description}; got {fields}"
        )
    rows = [(row[image_column] or "", row[value_column] or "") for row in table]
    if not rows:
        raise ValueError(f"{str(path)!r} has no rows")
    resolved = []
    for image, value in rows:
        image_path = (path.parent / image).resolve()
        if not image or not image_path.is_file():
            raise FileNotFoundError(f"{str(path)!r}: image {image!r} does not exist ({image_path})")
        resolved.append((image_path, value))
    return resolved


def read_caption_file(path: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """The ``(image path, caption)`` rows of a caption file, image paths resolved (see `read_image_rows`).

    Raises:
        FileNotFoundError: the file or one of its images is missing.
        ValueError: no header with an image and a caption column, or no rows.
    """
    return read_image_rows(path, CAPTION_COLUMNS, "caption", f"a caption column {CAPTION_COLUMNS}")


def read_hard_negatives(path: str | os.PathLike[str]) -> list[str]:
    """Every row's hard-negative text of a caption file (``""`` where a row has none), in row order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no ``hard_negative`` column in the header.
    """
    path = Path(path)
    fields, table = _read_table(path, "caption")
    column = next((c for c in HARD_NEGATIVE_COLUMNS if c in fields), None)
    if column is None:
        raise ValueError(f"{str(path)!r} needs a hard-negative column {HARD_NEGATIVE_COLUMNS}; got {fields}")
    return [(row[column] or "").strip() for row in table]


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """The image at ``path`` as an RGB PIL image (the file is closed afterwards)."""
    with Image.open(path) as image:
        return image.convert("RGB")


class CaptionPairs(Dataset):
    """The rows of one or more caption files: ``(image, caption)`` pairs for training, and by `images` the distinct
    images, each with all its captions, for retrieval.

    An image listed on several rows (in one file or several) is one image with several captions: `image_paths` holds
    it once and `image_index` points each row's caption at it.

    Args:
        paths: a caption file (see the module docstring), or a sequence of them read in order.
        transform: turns the PIL image into a tensor; ``None`` until set (a command checks its files before it has
            a model, hence its transform).
        loader: reads an image file (default `load_rgb`), as torchvision's ``ImageFolder`` has it.
        hard_negatives: also read every row's ``hard_negative`` column (`read_hard_negatives`).

    Attributes:
        rows: every row's ``(resolved image path, caption)``, file by file.
        hard_negatives: every row's hard-negative text (``""``: none), or ``None`` unless asked for.
        listed: each distinct image's first ``(caption file, row)`` (rows counted from 1 after the header).
        captions: every row's caption.
        image_paths: the distinct images, in first-seen order.
        image_index: ``[rows]`` which distinct image each row's caption describes.

    Raises:
        FileNotFoundError, ValueError: as `read_caption_file`; ValueError also for an empty sequence of paths, and
            with ``hard_negatives`` for a file without the column.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        transform: Callable[[Image.Image], Any] | None = None,
        loader: Callable[[Path], Image.Image] = load_rgb,
        hard_negatives: bool = False,
    ) -> None:
        files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not files:
            raise ValueError("paths must be a caption file or a non-empty sequence of them")
        self.rows: list[tuple[Path, str]] = []
        self.listed: dict[Path, tuple[Path, int]] = {}
        for path in files:
            rows = read_caption_file(path)
            for number, (image_path, _) in enumerate(rows, start=1):
                self.listed.setdefault(image_path, (Path(path), number))
            self.rows += rows
        self.hard_negatives = [text for path in files for text in read_hard_negatives(path)] if hard_negatives else None
        index_of: dict[Path, int] = {}
        self.image_index: list[int] = [index_of.setdefault(image_path, len(index_of)) for image_path, _ in self.rows]
        self.image_paths = list(index_of)
        self.captions = [caption for _, caption in self.rows]
        self.transform = transform
        self.loader = loader

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, str]:
        image_path, caption = self.rows[index]
        return self.image(image_path), caption

    def image(self, path: Path) -> Any:
        """The image at ``path`` read by `loader` and through `transform`."""
        if self.transform is None:
            raise RuntimeError("CaptionPairs.transform is not set")
        return self.transform(self.loader(path))

    def origin(self, path: str | os.PathLike[str]) -> str:
        """Where ``path`` is listed, for messages: ``"row 12 of FILE"`` (its first row)."""
        listed = self.listed.get(Path(path))
        return "not in the caption files" if listed is None else f"row {listed[1]} of {listed[0]}"

    @property
    def images(self) -> CaptionImages:
        """The distinct images as a dataset (`CaptionImages`), read through this one's current `loader` and
        `transform`."""
        return CaptionImages(self)


class CaptionImages(Dataset):
    """The distinct images of a `CaptionPairs`, in `CaptionPairs.image_paths` order: sample ``i`` is image ``i``'s
    tensor, the image that `CaptionPairs.image_index` points its captions at.

    Args:
        pairs: the caption rows (its `loader` and `transform` are read at each access).
    """

    def __init__(self, pairs: CaptionPairs) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs.image_paths)

    def __getitem__(self, index: int) -> Any:
        return self.pairs.image(self.pairs.image_paths[index])


class CaptionGroups(Dataset):
    """The distinct images of a `CaptionPairs`, each with up to ``K`` of its captions: one sample per image, for a
    batch that holds several positive captions of one image.

    Sample ``i`` is ``(image, captions, negatives, i)``: image ``i``'s tensor, the captions of (at most
    ``captions_per_image``) of its rows, the hard negatives of those rows (without
    ``CaptionPairs.hard_negatives``, none) and its index, which labels it in the batch
    (`unicl.data.batches.UnifiedCollate`). An image with more rows than ``captions_per_image`` has that many drawn
    from Python's ``random`` (seeded per sample in training, `unicl.training.sampling.KeyedSamples`), kept in row
    order.

    Args:
        pairs: the caption rows.
        captions_per_image: ``K >= 1``.
    """

    def __init__(self, pairs: CaptionPairs, captions_per_image: int) -> None:
        if isinstance(captions_per_image, bool) or not isinstance(captions_per_image, int) or captions_per_image < 1:
            raise ValueError(f"captions_per_image must be an int >= 1; got {captions_per_image!r}")
        self.pairs, self.captions_per_image = pairs, captions_per_image
        self.rows_of: list[list[int]] = [[] for _ in pairs.image_paths]
        for row, image in enumerate(pairs.image_index):
            self.rows_of[image].append(row)

    def __len__(self) -> int:
        return len(self.rows_of)

    def __getitem__(self, index: int) -> tuple[Any, list[str], list[str], int]:
        rows = self.rows_of[index]
        if len(rows) > self.captions_per_image:
            rows = sorted(random.sample(rows, self.captions_per_image))
        negatives = self.pairs.hard_negatives
        return (
            self.pairs.image(self.pairs.image_paths[index]),
            [self.pairs.captions[row] for row in rows],
            [] if negatives is None else [negatives[row] for row in rows if negatives[row]],
            index,
        )


def read_class_names(path: str | os.PathLike[str], classes: int | None = None) -> list[str]:
    """One class name per non-empty line (commas separate synonyms, as in `unicl.text.prompts.class_synonyms`).

    Args:
        path: the file.
        classes: the number of classes of the image folder the names are for, checked when given.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a number of names other than ``classes``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class names file {str(path)!r} does not exist")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if classes is not None and len(names) != classes:
        raise ValueError(
            f"class names file {str(path)!r} has {len(names)} names; the image folder has {classes} classes"
        )
    return names


class LabelledFolders(Dataset):
    """One or more ImageFolder roots as ``(image, class_id)`` samples over one merged class list.

    Classes are merged by their cleaned names: two roots with a class ``"dog"`` share one class id, so their images
    are positives of each other, as one image-text-label space should have it. Class ids follow the first
    appearance of each name, root by root in folder order.

    Args:
        roots: ImageFolder roots (one sub-folder per class).
        transform: turns the PIL image into a tensor.
        class_names: per root, ``None`` (the folder names) or the names of its classes in folder order.

    Attributes:
        class_names: the merged classes' names (the first spelling seen).
        class_ids: per root, the merged class id of each of its folder classes.
        roots: the roots, in order.

    Raises:
        FileNotFoundError: a root that is not a directory.
        ValueError: a root without images, or a names list whose length is not the root's number of classes.
    """

    def __init__(
        self,
        roots: Sequence[str | os.PathLike[str]],
        transform: Callable[[Image.Image], Any],
        class_names: Sequence[Sequence[str] | None] | None = None,
    ) -> None:
        if isinstance(roots, (str, os.PathLike)) or len(roots) == 0:
            raise ValueError("roots must be a non-empty sequence of ImageFolder directories")
        names_per_root = list(class_names) if class_names is not None else [None] * len(roots)
        if len(names_per_root) != len(roots):
            raise ValueError(f"class_names must have one entry per root ({len(roots)}); got {len(names_per_root)}")
        self.class_names: list[str] = []
        merged: dict[tuple[str, ...], int] = {}
        self.class_ids: list[list[int]] = []
        self.samples: list[tuple[str, int]] = []
        self.roots = [Path(root) for root in roots]
        for root, names in zip(roots, names_per_root):
            if not Path(root).is_dir():
                raise FileNotFoundError(f"image folder {str(root)!r} is not a directory")
            folder = ImageFolder(str(root))
            names = folder.classes if names is None else list(names)
            if len(names) != len(folder.classes):
                raise ValueError(
                    f"{str(root)!r} has {len(folder.classes)} classes but {len(names)} class names were given"
                )
            ids = []
            for name in names:
                ids.append(merged.setdefault(_class_key(name), len(merged)))
                if ids[-1] == len(self.class_names):
                    self.class_names.append(name)
            self.class_ids.append(ids)
            self.samples += [(path, ids[target]) for path, target in folder.samples]
        self.transform = transform
        #: Reads one image file (replaceable, as an ImageFolder's: `unicl.data.unreadable` wraps it).
        self.loader: Callable[[str], Image.Image] = load_rgb

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, class_id = self.samples[index]
        return self.transform(self.loader(path)), class_id

    def origin(self, path: str | os.PathLike[str]) -> str:
        """Where ``path`` is found, for messages: ``"image folder ROOT"``."""
        root = next((root for root in self.roots if Path(path).is_relative_to(root)), None)
        return "not in the image folders" if root is None else f"image folder {root}"


def _class_key(name: str) -> tuple[str, ...]:
    """Names that clean to the same synonyms (any case) are one class."""
    return tuple(synonym.lower() for synonym in class_synonyms(name))
