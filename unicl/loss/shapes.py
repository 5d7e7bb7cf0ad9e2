"""Labels for batches that are not one text per image: ``(labels, text_labels)`` for the losses' ``text_labels``.

With ``text_labels``, image ``i`` and text ``j`` are positives exactly when ``labels[i] == text_labels[j] >= 0``, and a
negative label is an image or a text with no positive. Each function here builds the two vectors for one shape:

* `caption_groups`: ``K_i`` captions of image ``i``, all of them its positives (COCO's five captions per image).
* `with_hard_negatives`: texts appended with no positive (NegCLIP's hard negatives).
* `class_bank`: every image against the prompts of all ``C`` classes (the supervised half of UniCL's space).

Examples:
    >>> import torch
    >>> from unicl import unicl_loss
    >>> from unicl.loss.shapes import caption_groups, with_hard_negatives
    >>> labels, text_labels = caption_groups(torch.tensor([2, 1, 3]))  # 3 images, 6 captions
    >>> text_labels
    tensor([0, 0, 1, 2, 2, 2])
    >>> text_labels = with_hard_negatives(text_labels, 2)  # 2 more texts, positives of no image
    >>> loss = unicl_loss(torch.randn(3, 8), torch.randn(8, 8), labels, text_labels=text_labels)
"""

from __future__ import annotations

import torch

from unicl._checks import check_positive_int


def caption_groups(captions_per_image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels for ``N`` images with ``K_i`` captions each, the captions of one image in a row.

    Args:
        captions_per_image: ``[N]`` integer counts ``K_i >= 0`` (an image with none has no positive).

    Returns:
        ``labels [N]`` (``0 … N−1``) and ``text_labels [Σ K_i]`` (image ``i``'s index, ``K_i`` times), on the counts'
        device.

    Raises:
        TypeError: counts that are not an integer tensor.
        ValueError: counts that are not one-dimensional or have a negative entry.
    """
    counts = _check_integer_vector("captions_per_image", captions_per_image)
    if counts.numel() and bool((counts < 0).any()):
        raise ValueError(f"captions_per_image must be >= 0 everywhere; got {counts.tolist()}")
    labels = torch.arange(counts.shape[0], device=counts.device)
    return labels, torch.repeat_interleave(labels, counts.long())


def with_hard_negatives(text_labels: torch.Tensor, num_negatives: int) -> torch.Tensor:
    """``text_labels`` followed by ``num_negatives`` texts that are positives of no image (label ``-1``).

    Args:
        text_labels: ``[M]`` integer text labels.
        num_negatives: how many hard-negative texts follow the ``M`` texts in ``text_features``.

    Returns:
        ``[M + num_negatives]``.
    """
    labels = _check_integer_vector("text_labels", text_labels)
    check_positive_int("num_negatives", num_negatives, minimum=0)
    return torch.cat([labels, labels.new_full((num_negatives,), -1)])


def class_bank(num_classes: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Text labels of a bank of class prompts, one per class ``0 … C−1``: with the images' class labels as
    ``labels``, every image is contrasted with every class's prompt and its own class's is its positive (an image
    with a negative label has none in the bank).

    Args:
        num_classes: ``C``.
        device: where the labels go.

    Returns:
        ``[C]`` int64 ``0 … C−1``.
    """
    check_positive_int("num_classes", num_classes)
    return torch.arange(num_classes, device=device)


def _check_integer_vector(name: str, values: object) -> torch.Tensor:
    if not isinstance(values, torch.Tensor) or values.is_floating_point() or values.dtype == torch.bool:
        kind = values.dtype if isinstance(values, torch.Tensor) else type(values).__name__
        raise TypeError(f"{name} must be an integer torch.Tensor; got {kind}")
    if values.dim() != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {tuple(values.shape)}")
    return values
