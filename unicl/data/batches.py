"""Unified batches: image-label and image-text samples in one batch (mixing sources is `unicl.training.mixing`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from unicl.text.captions import caption_labels
from unicl.text.prompts import LabelToPrompt
from unicl.text.tokenizer import Tokenizer

#: The label of an image-text pair when captions are not hashed: positive only with its own text.
PAIR_LABEL = -1


class UnifiedCollate:
    """Collate ``(image, class_id)``, ``(image, caption)`` and ``(image, prompt, class_id)`` samples into one batch.

    A labelled sample's text is a prompt drawn for its class (`unicl.text.prompts.LabelToPrompt`), or the prompt
    it already carries as a triple (a dataset that draws its own prompts, as ``unicl.train``'s do), and its label
    is the class id. A caption's label is `PAIR_LABEL`, or with ``hash_captions`` a stable hash label above
    the class ids (`unicl.text.captions.caption_labels`), so identical captions are positives of each other, on
    every rank.

    Args:
        tokenizer: turns texts into ``input_ids`` and ``attention_mask``.
        prompts: draws the prompts of labelled samples; its ``num_classes`` bounds the class ids (``None``: only
            captions are expected, and hashed caption labels start at 0).
        hash_captions: give identical captions one shared label.

    Returns (when called on a list of samples):
        ``{"images": [B, ...], "input_ids": [B, L], "attention_mask": [B, L], "labels": [B]}``.

    Examples:
        >>> tokenizer = Tokenizer.train(["a photo of a cat", "a dog on grass"], vocab_size=300, context_length=12)
        >>> collate = UnifiedCollate(tokenizer, LabelToPrompt(["cat", "dog"], templates=["a photo of a {}."]))
        >>> batch = collate([(torch.zeros(3, 4, 4), 1), (torch.ones(3, 4, 4), "a dog on grass")])
        >>> batch["labels"].tolist(), batch["input_ids"].shape
        ([1, -1], torch.Size([2, 12]))
    """

    def __init__(self, tokenizer: Tokenizer, prompts: LabelToPrompt | None, hash_captions: bool = False) -> None:
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.hash_captions = hash_captions

    def __call__(self, samples: Sequence[tuple[Any, int | str]]) -> dict[str, torch.Tensor]:
        if len(samples) == 0:
            raise ValueError("samples must not be empty")
        images, texts, labels, caption_rows = [], [], [], []
        for index, sample in enumerate(samples):
            if not isinstance(sample, (tuple, list)) or len(sample) not in (2, 3):
                raise TypeError(
                    f"samples[{index}] must be (image, class_id or caption) or (image, prompt, class_id); "
                    f"got {sample!r:.80}"
                )
            image, target = sample[0], sample[-1]
            images.append(image if isinstance(image, torch.Tensor) else torch.as_tensor(image))
            if len(sample) == 2 and isinstance(target, str):
                texts.append(target)
                labels.append(PAIR_LABEL)
                caption_rows.append(index)
                continue
            if self.prompts is None:
                raise TypeError(f"samples[{index}] has a class id, but this collate has no prompts (only captions)")
            try:
                class_id = self.prompts.check_class_id(target)
            except (TypeError, ValueError) as error:
                raise type(error)(f"samples[{index}]: {error}") from None
            if len(sample) == 3 and not isinstance(sample[1], str):
                raise TypeError(f"samples[{index}]: the prompt of a triple must be a str; got {sample[1]!r:.80}")
            texts.append(sample[1] if len(sample) == 3 else self.prompts.draw(class_id))
            labels.append(class_id)
        label_tensor = torch.tensor(labels, dtype=torch.long)
        if self.hash_captions and caption_rows:
            first_label = 0 if self.prompts is None else self.prompts.num_classes
            hashed = caption_labels([texts[i] for i in caption_rows], first_label=first_label)
            label_tensor[caption_rows] = hashed
        return {"images": torch.stack(images), **self.tokenizer(texts), "labels": label_tensor}


class SizedDataset(Protocol):
    """A map-style dataset with a length."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...
