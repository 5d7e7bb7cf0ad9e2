"""One way to mix image-label and image-text data: each source its own loader and its own share of every batch.

A batch of ``B`` samples holds ``round(ratio × B)`` image-label samples and ``B − round(ratio × B)`` image-text
pairs, so the share is the same in every batch and on every rank, whatever the sizes of the sources; each source
runs through its own epochs (its own sampler, at its own batch size), and the batches of the sources are joined key
by key. ``python -m unicl.train`` builds its batches this way (`unicl.training.trainer.Trainer`); in a loop of your
own, give each source a ``DataLoader`` of its share and join them:

Examples:
    >>> import torch
    >>> shares = batch_shares(8, ratio=0.75)
    >>> shares
    {'labelled': 6, 'captioned': 2}
    >>> labelled = iter([{"labels": torch.zeros(6, dtype=torch.long)}] * 3)
    >>> captioned = iter([{"labels": torch.full((2,), -1)}] * 3)
    >>> [batch["labels"].tolist() for batch in join_batches([labelled, captioned])][0]
    [0, 0, 0, 0, 0, 0, -1, -1]
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator

import torch

from unicl._checks import check_positive_int


def batch_shares(batch_size: int, ratio: float) -> dict[str, int]:
    """How many samples of each source one batch holds.

    Args:
        batch_size: samples per batch.
        ratio: share of image-label samples, in ``[0, 1]``.

    Returns:
        ``{"labelled": round(ratio × batch_size), "captioned": the rest}``, without a source whose share is 0;
        the shares add up to ``batch_size``.
    """
    check_positive_int("batch_size", batch_size)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be a number in [0, 1]; got {ratio!r}")
    labelled = round(ratio * batch_size)
    shares = {"labelled": labelled, "captioned": batch_size - labelled}
    return {name: share for name, share in shares.items() if share > 0}


def join_batches(
    sources: Iterable[Iterator[dict[str, torch.Tensor]]],
) -> Generator[dict[str, torch.Tensor], None, None]:
    """One batch of every source in turn, joined key by key (``torch.cat`` along the first dimension).

    Args:
        sources: iterators of batches with the same keys (``{"images", "input_ids", "attention_mask", "labels"}``
            of `unicl.data.batches.UnifiedCollate`), each batch of its source's share.

    Yields:
        The joined batches, until the first source runs out (the trainer's sources never do).
    """
    iterators = list(sources)
    if not iterators:
        raise ValueError("sources must hold at least one iterator of batches")
    while True:
        try:
            parts = [next(iterator) for iterator in iterators]
        except StopIteration:
            return
        yield {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
