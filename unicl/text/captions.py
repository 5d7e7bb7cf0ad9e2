"""Labels for captions that agree on every rank without any communication.

Duplicate captions in a global batch (the same alt-text on two web images, say) should be positives of each
other, as in Florence and UniCL. Python's ``hash()`` is salted per process, so it cannot give two ranks the same
label; a keyed BLAKE2 digest of the caption's bytes can.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import torch

from unicl._checks import check_positive_int

_WHITESPACE = re.compile(r"\s+")


def canonical_caption(caption: str) -> str:
    """The form two captions must share to get one label: whitespace runs collapsed, ends stripped, lower case."""
    return _WHITESPACE.sub(" ", caption).strip().lower()


def caption_labels(
    captions: Sequence[str], first_label: int, num_labels: int = 2**40, device: torch.device | str | None = None
) -> torch.Tensor:
    """A stable label per caption in ``[first_label, first_label + num_labels)``.

    Identical captions (after `canonical_caption`) get the same label in every process and on every run.
    Reserve the range above your class ids: with ``first_label = num_classes`` a caption never collides with a
    class. Two different captions collide with probability about ``1 / num_labels`` per pair.

    Args:
        captions: ``B`` strings.
        first_label: the smallest label of the range, ``>= 0``.
        num_labels: the size of the range, ``>= 1`` (default ``2**40``; the range must fit in int64).
        device: device of the result.

    Returns:
        ``[B]`` int64 labels.

    Raises:
        TypeError: a caption that is not a ``str``.
        ValueError: a negative ``first_label``, a range that leaves int64, or ``num_labels < 1``.

    Examples:
        >>> labels = caption_labels(["a dog.", "A  dog. ", "a cat."], first_label=1000)
        >>> bool(labels[0] == labels[1]), bool(labels[0] == labels[2])
        (True, False)
    """
    check_positive_int("first_label", first_label, minimum=0)
    check_positive_int("num_labels", num_labels)
    if first_label + num_labels > 2**63:
        raise ValueError(f"first_label + num_labels must be <= 2**63; got {first_label} + {num_labels}")
    labels = []
    for index, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"captions[{index}] must be a str; got {type(caption).__name__}")
        digest = hashlib.blake2b(canonical_caption(caption).encode("utf-8"), digest_size=8, person=b"unicl-cap")
        labels.append(first_label + int.from_bytes(digest.digest(), "little") % num_labels)
    return torch.tensor(labels, dtype=torch.long, device=device)
