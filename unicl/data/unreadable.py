"""Images that cannot be read, found only when training or an evaluation reads them: one error type, raised in
data-loading workers too, and its one-line message, so a command can blame the argument that named the images."""

from __future__ import annotations

import multiprocessing
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar, overload

from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from unicl._checks import first_line
from unicl.data.datasets import CaptionPairs, LabelledFolders

#: The longest message kept of an image's read error.
MESSAGE_LIMIT = 400
#: The longest line reported: the read error's, with the file's path and where it is listed.
LINE_LIMIT = 4 * MESSAGE_LIMIT
#: How PIL names a file it opened itself in its errors (``<_io.BufferedReader name='x.png'>``): the name is kept.
_FILE_OBJECT = re.compile(r"<_io\.\w+ name=('[^']*'|\"[^\"]*\")>")

_Keeps = TypeVar("_Keeps", ImageFolder, CaptionPairs, LabelledFolders)


class UnreadableImage(OSError):
    """An image of the training or evaluation data that cannot be read or decoded, found only when it is read."""


def read_or_report(read: Callable[[Any], Any], argument: Any) -> Any:
    """``read(argument)``, its read or decode errors raised as `UnreadableImage` with their first line.

    PIL's ``UnidentifiedImageError`` is an ``OSError``, a truncated file an ``OSError`` that names no file, an
    unsupported mode a ``ValueError``.
    """
    try:
        return read(argument)
    except UnreadableImage:
        raise
    except (OSError, ValueError) as error:
        raise UnreadableImage(_first_line(error)) from error


class ReportingLoader:
    """A dataset's image ``loader`` whose read errors are `UnreadableImage` naming the file and where it comes from
    (a class, so worker processes can take it).

    Args:
        loader: reads one image file.
        origin: where a file comes from, for messages: a text for every file, or a function of the file's path
            (`unicl.data.datasets.CaptionPairs.origin`).
    """

    def __init__(self, loader: Callable[[Any], Any], origin: str | Callable[[Any], str] | None = None) -> None:
        self.loader = loader
        self.origin = origin

    def __call__(self, path: Any) -> Any:
        try:
            return self.loader(path)
        except UnreadableImage:
            raise
        except (OSError, ValueError) as error:
            line = _first_line(error)
            if str(path) not in line:
                line = f"{path}: {line}"
            if self.origin is not None:
                line += f" ({self.origin if isinstance(self.origin, str) else self.origin(path)})"
            raise UnreadableImage(line) from error


def _first_line(error: BaseException) -> str:
    """The error's first line, a file object PIL opened named by its file's name."""
    return _FILE_OBJECT.sub(r"\1", first_line(error, limit=MESSAGE_LIMIT))


class ReportingDataset(Dataset):
    """``dataset`` (with its ``classes``) whose samples' read errors are `UnreadableImage`.

    Args:
        dataset: any map-style dataset.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return read_or_report(self.dataset.__getitem__, index)


class SkippingUnreadable(Dataset):
    """``dataset`` whose unreadable samples are replaced by the next readable one (index ``i + 1``, ``i + 2``, ...,
    wrapping around), each skip named on standard error and counted.

    The replacement depends on the index alone, so a run that skips stays reproducible step by step, and every batch
    keeps its size. The count is shared with the DataLoader's worker processes.

    Args:
        dataset: a map-style dataset whose read errors are `UnreadableImage` (`reporting_unreadable`).

    Attributes:
        skipped: a shared counter (``skipped.value``): reads of unreadable samples so far.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.classes = getattr(dataset, "classes", None)
        self.skipped = multiprocessing.Value("q", 0)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        size = len(self)
        for offset in range(size):
            try:
                return self.dataset[(index + offset) % size]
            except UnreadableImage as error:
                with self.skipped.get_lock():
                    self.skipped.value += 1
                print(f"skipping an unreadable image: {unreadable_message(error)}", file=sys.stderr, flush=True)
        raise UnreadableImage(f"every one of the {size} images is unreadable")


@overload
def reporting_unreadable(dataset: _Keeps) -> _Keeps: ...


@overload
def reporting_unreadable(dataset: Dataset) -> Dataset: ...


def reporting_unreadable(dataset: Dataset) -> Dataset:
    """``dataset`` with its image-read errors raised as `UnreadableImage`, naming the file and where it is listed
    (the image folder, or the caption file and its row).

    An ``ImageFolder``, a `unicl.data.datasets.CaptionPairs` or a `unicl.data.datasets.LabelledFolders` keeps its
    type and gets its ``loader`` wrapped in place (the feature cache identifies an ImageFolder by its files;
    retrieval reads a CaptionPairs' captions); another dataset is wrapped in a `ReportingDataset`.
    """
    if isinstance(dataset, (ImageFolder, CaptionPairs, LabelledFolders)):
        if not isinstance(dataset.loader, ReportingLoader):
            origin = f"image folder {dataset.root}" if isinstance(dataset, ImageFolder) else dataset.origin
            dataset.loader = ReportingLoader(dataset.loader, origin)
        return dataset
    return dataset if isinstance(dataset, ReportingDataset) else ReportingDataset(dataset)


def unreadable_message(error: UnreadableImage) -> str:
    """The error's own line, also when a DataLoader worker re-raised it with the worker's traceback in front."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught "):
        last = lines[-1]
        # The traceback names the type with its module (or without one when it lives in __main__).
        name = type(error).__qualname__
        for prefix in (f"{type(error).__module__}.{name}: ", f"{name}: "):
            last = last.removeprefix(prefix)
        return last[:LINE_LIMIT]
    return first_line(error, limit=LINE_LIMIT)
