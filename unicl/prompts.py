"""Class labels as text: prompt templates and per-sample prompt drawing.

UniCL turns every class label into text. During training each labelled sample gets one prompt drawn at random
(one template, one synonym of its class); at zero-shot time a class is the average of all its prompts. The draws
are reproducible for a seed and differ between data-loader workers and epochs: the original code drew the same
prompts in every worker, so ``num_workers`` copies of one sequence were trained on.
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Iterator, Sequence
from typing import SupportsIndex

import torch.utils.data

from unicl._checks import check_positive_int

#: The default set: photo, art, quality, size and style families, written for this project.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of my {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a cropped photo of a {}.",
    "a cropped photo of the {}.",
    "a snapshot of a {}.",
    "a picture of a {}.",
    "a picture of the {}.",
    "an image of a {}.",
    "an image showing a {}.",
    "an image that contains a {}.",
    "a photograph of a {}.",
    "a photograph of the {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a dim photo of the {}.",
    "a sunlit photo of a {}.",
    "a black and white photo of a {}.",
    "a black and white photo of the {}.",
    "a grayscale image of a {}.",
    "a sepia photo of a {}.",
    "a blurry photo of a {}.",
    "a blurry photo of the {}.",
    "a sharp photo of a {}.",
    "a grainy photo of a {}.",
    "a noisy photo of the {}.",
    "a pixelated photo of a {}.",
    "a pixelated image of the {}.",
    "a low resolution photo of a {}.",
    "a low resolution image of the {}.",
    "a high resolution photo of a {}.",
    "a jpeg-compressed photo of a {}.",
    "a bad photo of a {}.",
    "a bad photo of the {}.",
    "a good photo of a {}.",
    "a good photo of the {}.",
    "a clean photo of a {}.",
    "a messy photo of the {}.",
    "an overexposed photo of a {}.",
    "an underexposed photo of a {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a big {}.",
    "a photo of the large {}.",
    "a photo of a tiny {}.",
    "a photo of a huge {}.",
    "a zoomed-in photo of a {}.",
    "a zoomed-out photo of a {}.",
    "a drawing of a {}.",
    "a drawing of the {}.",
    "a sketch of a {}.",
    "a pencil sketch of the {}.",
    "a painting of a {}.",
    "a painting of the {}.",
    "an oil painting of a {}.",
    "a watercolor of a {}.",
    "a cartoon of a {}.",
    "a cartoon {}.",
    "a comic drawing of a {}.",
    "an illustration of a {}.",
    "a digital illustration of the {}.",
    "a rendering of a {}.",
    "a 3d rendering of the {}.",
    "a video game image of a {}.",
    "a toy {}.",
    "a plastic model of a {}.",
    "a sculpture of a {}.",
    "a statue of the {}.",
    "an origami {}.",
    "an embroidered {}.",
    "a tattoo of a {}.",
    "graffiti of a {}.",
    "a doodle of a {}.",
    "a handwritten {}.",
    "a scan of a {}.",
    "art showing a {}.",
    "itap of a {}.",
    "there is a {} in the scene.",
    "the {} in the picture.",
)

#: One plain template, for a single prompt per class.
PLAIN_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

_SLOT = re.compile(r"(?<!\{)\{\}(?!\})")
_WHITESPACE = re.compile(r"\s+")


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Return ``templates`` as a tuple if each has exactly one ``{}`` slot and there is at least one.

    Raises:
        ValueError: no templates, or a template without exactly one ``{}``.
        TypeError: a template that is not a ``str``.
    """
    if isinstance(templates, str):
        raise TypeError("templates must be a sequence of strings, not one string")
    checked = tuple(templates)
    if not checked:
        raise ValueError("templates must not be empty")
    for template in checked:
        if not isinstance(template, str):
            raise TypeError(f"each template must be a str; got {type(template).__name__} {template!r}")
        if len(_SLOT.findall(template)) != 1 or template.count("{") != 1 or template.count("}") != 1:
            raise ValueError(f"each template needs exactly one '{{}}' slot for the class name; got {template!r}")
    return checked


def clean_class_name(name: str) -> str:
    """Underscores become spaces, whitespace runs collapse to one space, ends are stripped.

    ``"golden_retriever "`` becomes ``"golden retriever"``. Case is kept.
    """
    return _WHITESPACE.sub(" ", name.replace("_", " ")).strip()


def class_synonyms(name: str | Sequence[str], split_commas: bool = True) -> tuple[str, ...]:
    """The cleaned synonyms of one class.

    Args:
        name: one name, or several synonyms. With ``split_commas``, a comma separates synonyms inside a name
            (ImageNet's ``"tench, Tinca tinca"`` is two synonyms).
        split_commas: split names at commas.

    Returns:
        The non-empty cleaned synonyms, in order, without duplicates.

    Raises:
        ValueError: nothing is left after cleaning.
    """
    names = [name] if isinstance(name, str) else list(name)
    pieces = [part for n in names for part in (n.split(",") if split_commas else [n])]
    cleaned = tuple(dict.fromkeys(c for c in (clean_class_name(p) for p in pieces) if c))
    if not cleaned:
        raise ValueError(f"class name {name!r} is empty after cleaning")
    return cleaned


class LabelToPrompt:
    """Turns class ids into prompts: one random draw per sample in training, every prompt in evaluation.

    Args:
        class_names: one entry per class: a name or a list of synonyms (cleaned with :func:`class_synonyms`).
        templates: prompt templates, each with one ``{}`` (default :data:`DEFAULT_TEMPLATES`).
        seed: seed of the draws. Inside a data-loader worker the stream also depends on the worker id, and on the
            epoch set with :meth:`set_epoch`, so no two workers or epochs repeat each other.
        split_commas: treat commas in names as synonym separators.

    Example:
        >>> prompts = LabelToPrompt(["cat", ["dog", "puppy"]], templates=["a photo of a {}.", "art of a {}."], seed=0)
        >>> prompts.all_prompts(1)
        ['a photo of a dog.', 'a photo of a puppy.', 'art of a dog.', 'art of a puppy.']
        >>> len(prompts([0, 1, 1]))
        3
    """

    def __init__(
        self,
        class_names: Sequence[str | Sequence[str]],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        seed: int = 0,
        split_commas: bool = True,
    ) -> None:
        if isinstance(class_names, str) or len(class_names) == 0:
            raise ValueError("class_names must be a non-empty sequence of names (or of synonym lists)")
        self.synonyms = [class_synonyms(name, split_commas) for name in class_names]
        self.templates = check_templates(templates)
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.epoch = 0
        self._stream_key: tuple[int, int] | None = None
        self._random = random.Random()

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return len(self.synonyms)

    def set_epoch(self, epoch: int) -> None:
        """Start the draws of ``epoch`` (call it at the start of each epoch, like a DistributedSampler's)."""
        self.epoch = check_positive_int("epoch", epoch, minimum=0)

    def check_class_id(self, class_id: object) -> int:
        """Return ``class_id`` as an int if it is an integer in ``[0, C)``, else raise ``ValueError``/``TypeError``.

        Python, NumPy and 0-dim torch integers are accepted.
        """
        try:
            if not isinstance(class_id, SupportsIndex):
                raise TypeError
            index = operator.index(class_id)  # a float tensor has __index__ but refuses it
        except TypeError:
            raise TypeError(f"class id must be an integer; got {type(class_id).__name__} {class_id!r}") from None
        if not 0 <= index < self.num_classes:
            raise ValueError(f"class id must be in [0, {self.num_classes}); got {index}")
        return index

    def _stream(self) -> random.Random:
        info = torch.utils.data.get_worker_info()
        key = (0 if info is None else info.id + 1, self.epoch)
        if key != self._stream_key:
            # String seeds hash deterministically (unlike hash()), so every process draws the same stream for a key.
            self._random.seed(f"unicl-prompts/{self.seed}/{key[0]}/{key[1]}")
            self._stream_key = key
        return self._random

    def draw(self, class_id: object, rng: random.Random | None = None) -> str:
        """One prompt for ``class_id``: a random template filled with a random synonym.

        Args:
            class_id: the class.
            rng: draw from this generator instead of the per-(worker, epoch) stream, e.g. one seeded by the sample's
                position so that the draw does not depend on the order of draws (``unicl.train`` does this, which
                makes a resumed run draw exactly what an uninterrupted one would).
        """
        synonyms = self.synonyms[self.check_class_id(class_id)]
        stream = self._stream() if rng is None else rng
        return stream.choice(self.templates).format(stream.choice(synonyms))

    def __call__(self, class_ids: Sequence[int]) -> list[str]:
        """One drawn prompt per class id (training mode)."""
        return [self.draw(c) for c in class_ids]

    def all_prompts(self, class_id: object) -> list[str]:
        """Every template × synonym prompt of ``class_id`` (evaluation mode), templates outermost."""
        synonyms = self.synonyms[self.check_class_id(class_id)]
        return [template.format(name) for template in self.templates for name in synonyms]

    def __iter__(self) -> Iterator[list[str]]:
        """The evaluation prompts of every class, in class order."""
        return (self.all_prompts(c) for c in range(self.num_classes))
