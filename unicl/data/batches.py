"""Unified batches: image-label and image-text samples in one batch (mixing sources is `unicl.training.mixing`)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from unicl._checks import check_positive_int
from unicl.loss.shapes import caption_groups, class_bank, with_hard_negatives
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
        text_labels: collate batches of ``N`` images and ``M`` texts with ``text_labels`` (the losses' rule:
            image ``i`` and text ``j`` are positives when ``labels[i] == text_labels[j] >= 0``). Then a sample is a
            triple ``(image, prompt, class_id)`` (one text), a pair ``(image, class_id)`` (no text: its class's
            prompt comes from a class bank, `append_class_bank`), or a caption group ``(image, captions, negatives,
            image_id)`` of `unicl.data.datasets.CaptionGroups`: its captions its positives, its hard negatives
            positives of no image (text label ``-1``), its label ``image_id`` above the class ids, so the same
            image is the same label on every rank. The texts are the labelled samples' prompts, then the groups'
            captions (`unicl.loss.shapes.caption_groups`), then their hard negatives
            (`unicl.loss.shapes.with_hard_negatives`).

    Returns (when called on a list of samples):
        ``{"images": [B, ...], "input_ids": [B, L], "attention_mask": [B, L], "labels": [B]}``; with
        ``text_labels``, ``input_ids`` and ``attention_mask`` are ``[M, L]`` and ``"text_labels": [M]`` is added.

    Examples:
        >>> tokenizer = Tokenizer.train(["a photo of a cat", "a dog on grass"], vocab_size=300, context_length=12)
        >>> collate = UnifiedCollate(tokenizer, LabelToPrompt(["cat", "dog"], templates=["a photo of a {}."]))
        >>> batch = collate([(torch.zeros(3, 4, 4), 1), (torch.ones(3, 4, 4), "a dog on grass")])
        >>> batch["labels"].tolist(), batch["input_ids"].shape
        ([1, -1], torch.Size([2, 12]))
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompts: LabelToPrompt | None,
        hash_captions: bool = False,
        text_labels: bool = False,
    ) -> None:
        if hash_captions and text_labels:
            raise ValueError("hash_captions and text_labels do not combine: a caption group's label is its image's")
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.hash_captions = hash_captions
        self.text_labels = text_labels

    @property
    def first_label(self) -> int:
        """The smallest label of a caption: the number of classes (0 without prompts)."""
        return 0 if self.prompts is None else self.prompts.num_classes

    def __call__(self, samples: Sequence[tuple[Any, ...]]) -> dict[str, torch.Tensor]:
        if len(samples) == 0:
            raise ValueError("samples must not be empty")
        if self.text_labels:
            return self._collate_groups(samples)
        images, texts, labels, caption_rows = [], [], [], []
        for index, sample in enumerate(samples):
            if not isinstance(sample, (tuple, list)) or len(sample) not in (2, 3):
                raise TypeError(
                    f"samples[{index}] must be (image, class_id or caption) or (image, prompt, class_id); "
                    f"got {sample!r:.80}"
                )
            image, target = sample[0], sample[-1]
            images.append(_as_tensor(image))
            if len(sample) == 2 and isinstance(target, str):
                texts.append(target)
                labels.append(PAIR_LABEL)
                caption_rows.append(index)
                continue
            class_id = self._class_id(index, sample)
            texts.append(sample[1] if len(sample) == 3 else self.prompts.draw(class_id))  # type: ignore[union-attr]
            labels.append(class_id)
        label_tensor = torch.tensor(labels, dtype=torch.long)
        if self.hash_captions and caption_rows:
            hashed = caption_labels([texts[i] for i in caption_rows], first_label=self.first_label)
            label_tensor[caption_rows] = hashed
        return {"images": torch.stack(images), **self.tokenizer(texts), "labels": label_tensor}

    def _class_id(self, index: int, sample: Sequence[Any]) -> int:
        """The checked class id of ``samples[index]``, a pair or a triple whose prompt is a str."""
        if self.prompts is None:
            raise TypeError(f"samples[{index}] has a class id, but this collate has no prompts (only captions)")
        try:
            class_id = self.prompts.check_class_id(sample[-1])
        except (TypeError, ValueError) as error:
            raise type(error)(f"samples[{index}]: {error}") from None
        if len(sample) == 3 and not isinstance(sample[1], str):
            raise TypeError(f"samples[{index}]: the prompt of a triple must be a str; got {sample[1]!r:.80}")
        return class_id

    def _collate_groups(self, samples: Sequence[Any]) -> dict[str, torch.Tensor]:
        """`text_labels` batches: ``N`` images, ``M`` texts and both label vectors."""
        images, labels, prompts, prompt_labels = [], [], [], []
        group_rows, group_ids, captions, counts, negatives = [], [], [], [], []
        for index, sample in enumerate(samples):
            if not isinstance(sample, (tuple, list)) or len(sample) not in (2, 3, 4):
                raise TypeError(
                    f"samples[{index}] must be (image, class_id), (image, prompt, class_id) or (image, captions, "
                    f"negatives, image_id); got {sample!r:.80}"
                )
            images.append(_as_tensor(sample[0]))
            if len(sample) == 4:
                _, texts, hard, image_id = sample
                if not _strings(texts) or not _strings(hard) or isinstance(image_id, bool) or not isinstance(
                    image_id, int
                ) or image_id < 0:  # fmt: skip
                    raise TypeError(
                        f"samples[{index}] must be (image, list of captions, list of hard negatives, image_id >= 0); "
                        f"got {sample[1:]!r:.80}"
                    )
                group_rows.append(index)
                group_ids.append(self.first_label + image_id)
                captions += texts
                counts.append(len(texts))
                negatives += hard
                labels.append(PAIR_LABEL)
                continue
            if len(sample) == 2 and isinstance(sample[1], str):
                raise TypeError(
                    f"samples[{index}]: a caption with text_labels comes as a group (image, captions, negatives, "
                    "image_id) (unicl.data.datasets.CaptionGroups)"
                )
            class_id = self._class_id(index, sample)
            labels.append(class_id)
            if len(sample) == 3:
                prompts.append(sample[1])
                prompt_labels.append(class_id)
        label_tensor = torch.tensor(labels, dtype=torch.long)
        ids = torch.tensor(group_ids, dtype=torch.long)
        image_of, caption_of = caption_groups(torch.tensor(counts, dtype=torch.long))
        label_tensor[group_rows] = ids[image_of]
        text_labels = with_hard_negatives(
            torch.cat([torch.tensor(prompt_labels, dtype=torch.long), ids[caption_of]]), len(negatives)
        )
        return {
            "images": torch.stack(images),
            **self.tokenizer(prompts + captions + negatives),
            "labels": label_tensor,
            "text_labels": text_labels,
        }


def append_class_bank(
    batch: dict[str, torch.Tensor],
    prompts: LabelToPrompt,
    tokenizer: Tokenizer,
    rng: random.Random,
    per_class: int = 1,
    absent_only: bool = False,
) -> dict[str, torch.Tensor]:
    """``batch`` with prompts of every class appended to its texts: each image is contrasted with all ``C``
    classes, its own class's prompts its positives (`unicl.loss.shapes.class_bank`).

    With ``absent_only``, only the classes that no text of the batch has as its label get prompts: the images'
    own prompts already stand for the classes present, so every image still meets every class, and the appended
    prompts, which have no positive image in the batch, are negatives of the image-to-text direction only (the
    loss leaves a text with no positive out of the text-to-image direction; where the loss gathers the batches of
    several ranks, another rank's images of the class are its positives).

    Args:
        batch: a `UnifiedCollate` batch with ``text_labels`` (``input_ids``, ``attention_mask`` ``[M, L]``,
            ``text_labels [M]``).
        prompts: the classes and their templates.
        tokenizer: the run's tokenizer.
        rng: the generator the prompts are drawn from (seeded by the step in training, so a resumed run draws the
            same bank).
        per_class: ``P``, distinct prompts drawn per class (all of a class's prompts where it has fewer).
        absent_only: append prompts only of the classes ``0 … C−1`` missing from ``text_labels``.

    Returns:
        A new batch with ``M + C'·P`` texts, ``text_labels`` followed by each appended class id ``P`` times
        (``C' = C``, or the number of absent classes with ``absent_only``).

    Raises:
        ValueError: a batch without ``text_labels``, or ``per_class`` below 1.
    """
    if "text_labels" not in batch:
        raise ValueError("batch must carry text_labels (a UnifiedCollate(..., text_labels=True) batch)")
    per_class = check_positive_int("per_class", per_class)
    classes = class_bank(prompts.num_classes, device=batch["text_labels"].device)
    if absent_only:
        classes = classes[~torch.isin(classes, batch["text_labels"])]
    options = [prompts.all_prompts(label) for label in classes.tolist()]
    drawn = [rng.sample(class_prompts, min(per_class, len(class_prompts))) for class_prompts in options]
    bank = tokenizer([prompt for class_prompts in drawn for prompt in class_prompts])
    counts = torch.tensor([len(class_prompts) for class_prompts in drawn], device=classes.device, dtype=torch.long)
    return {
        **batch,
        **{key: torch.cat([batch[key], value.to(batch[key].device)]) for key, value in bank.items()},
        "text_labels": torch.cat([batch["text_labels"], classes.repeat_interleave(counts)]),
    }


def _as_tensor(image: Any) -> torch.Tensor:
    return image if isinstance(image, torch.Tensor) else torch.as_tensor(image)


def _strings(values: Any) -> bool:
    return isinstance(values, (list, tuple)) and all(isinstance(value, str) for value in values)


class SizedDataset(Protocol):
    """A map-style dataset with a length."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...
