"""Images that cannot be read, found only when training or an evaluation reads them: one error type, raised in
data-loading workers too, and its one-line message, so a command can blame the argument that named the images."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar, overload

from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from unicl._checks import first_line
from unicl.data.datasets import CaptionPairs, LabelledFolders

#: The longest message kept of an image's read error.
MESSAGE_LIMIT = 400
#: How PIL names a file it opened itself in its errors (``<_io.BufferedReader name='x.png'>``): the name is kept.
_FILE_OBJECT = re.compile(r"<_io\.\w+ name=('[^']*'|\"[^\"]*\")>")

_Keeps = TypeVar("_Keeps", ImageFolder, CaptionPairs, LabelledFolders)


class UnreadableImage(OSError):
    """An image of the training or evaluation data that cannot be read or decoded, found only when it is read."""


def read_or_report(read: Callable[[Any], Any], argument: Any) -> Any:
    """``read(argument)``, its read or decode errors raised as `UnreadableImage` with their first line.

    PIL's ``UnidentifiedImageError`` is an ``OSError``, an unsupported mode a ``ValueError``.
    """
    try:
        return read(argument)
    except UnreadableImage:
        raise
    except (OSError, ValueError) as error:
        line = _FILE_OBJECT.sub(r"\1", first_line(error, limit=MESSAGE_LIMIT))
        raise UnreadableImage(line) from error


class ReportingLoader:
    """A dataset's image ``loader`` whose read errors are `UnreadableImage` (a class, so worker processes can take
    it).

    Args:
        loader: reads one image file.
    """

    def __init__(self, loader: Callable[[Any], Any]) -> None:
        self.loader = loader

    def __call__(self, path: Any) -> Any:
        return read_or_report(self.loader, path)


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


@overload
def reporting_unreadable(dataset: _Keeps) -> _Keeps: ...


@overload
def reporting_unreadable(dataset: Dataset) -> Dataset: ...


def reporting_unreadable(dataset: Dataset) -> Dataset:
    """``dataset`` with its image-read errors raised as `UnreadableImage`.

    An ``ImageFolder``, a `unicl.data.datasets.CaptionPairs` or a `unicl.data.datasets.LabelledFolders` keeps its
    type and gets its ``loader`` wrapped in place (the feature cache identifies an ImageFolder by its files;
    retrieval reads a CaptionPairs' captions); another dataset is wrapped in a `ReportingDataset`.
    """
    if isinstance(dataset, (ImageFolder, CaptionPairs, LabelledFolders)):
        if not isinstance(dataset.loader, ReportingLoader):
            dataset.loader = ReportingLoader(dataset.loader)
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
        return last[:MESSAGE_LIMIT]
    return first_line(error, limit=MESSAGE_LIMIT)
