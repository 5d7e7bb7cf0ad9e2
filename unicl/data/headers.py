"""A check of image files before training: every file's header read (and its end, where the format has a marker),
in parallel threads, so an unreadable image is found in minutes rather than hours into a run.

Reading a header (`PIL.Image.open`, which reads the format, mode and size and decodes nothing) finds files that are
not images, empty files and unknown formats; a half-written PNG or JPEG keeps a valid header, so the file's last bytes
are checked for the format's end marker (PNG's ``IEND`` chunk, JPEG's ``EOI``). Files whose pixels are damaged in the
middle pass: only decoding every image finds them (``--skip-unreadable`` of the training command copes with those).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from unicl._checks import first_line

#: The last bytes of every PNG file (its ``IEND`` chunk: length 0, type, CRC).
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: JPEG's end-of-image marker.
JPEG_END = b"\xff\xd9"
#: How far from a JPEG's end its marker may sit (some writers pad the file, some cameras append a trailer).
JPEG_TAIL = 4096
#: Threads reading headers: the work waits on storage, not on the CPU.
THREADS = 32


@dataclass(frozen=True)
class BadImage:
    """An image file that fails the header check.

    Attributes:
        path: the file.
        origin: where it is listed (``"image folder DIR"``, ``"row 12 of FILE"``).
        reason: what is wrong, in one line.
    """

    path: Path
    origin: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason} ({self.origin})"


def header_problem(path: str | os.PathLike[str]) -> str | None:
    """What is wrong with the image file at ``path`` by its header and end marker, or ``None`` when nothing is."""
    try:
        with Image.open(path) as image:
            image_format = image.format
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            handle.seek(max(size - JPEG_TAIL, 0))
            tail = handle.read()
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        return first_line(error).replace(f" {str(path)!r}", "")
    if image_format == "PNG" and not tail.endswith(PNG_END):
        return "PNG file is truncated (no IEND chunk at its end)"
    if image_format == "JPEG" and JPEG_END not in tail:
        return f"JPEG file is truncated (no end-of-image marker in its last {JPEG_TAIL} bytes)"
    return None


def check_image_headers(files: Iterable[tuple[str | os.PathLike[str], str]], threads: int = THREADS) -> list[BadImage]:
    """The files of ``files`` that fail `header_problem`, in their given order.

    Args:
        files: ``(path, origin)`` pairs, the origin saying where the file is listed.
        threads: how many files are read at once.

    Returns:
        The bad files (an empty list when every file passes).
    """
    listed = [(Path(path), origin) for path, origin in files]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        problems = list(pool.map(header_problem, [path for path, _ in listed], chunksize=64))
    return [BadImage(path, origin, problem) for (path, origin), problem in zip(listed, problems) if problem is not None]
