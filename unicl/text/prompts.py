"""Class labels as text: prompt templates, shipped prompt sets and per-sample prompt drawing.

UniCL turns every class label into text. During training each labelled sample gets one prompt drawn at random
(one template, one synonym of its class); at zero-shot time a class is the average of all its prompts. The draws
are reproducible for a seed and differ between data-loader workers and epochs, so no two workers train on copies of
one sequence.

The package ships ImageNet-1k's class names and the CLIP and UniCL ImageNet templates as data
(``unicl/text/prompt_sets``, see its README for sources and licences): `imagenet_class_names`, `clip_templates` (80),
`unicl_templates` (81: ``"{}."`` and CLIP's 80, what UniCL evaluates with). `read_templates` reads a ``--templates
FILE`` (one template per line, a JSON list, or a JSON mapping from class names to complete prompts as CuPL ships) and
`get_templates` takes a set's name or such a file.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import operator
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, SupportsIndex, TypeAlias

import torch.utils.data

from unicl._checks import check_positive_int
from unicl.text.names import CLASS_NAME_SETS, TEMPLATE_SETS

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
        class_names: one entry per class: a name or a list of synonyms (cleaned with `class_synonyms`).
        templates: prompt templates, each with one ``{}`` (default `DEFAULT_TEMPLATES`).
        seed: seed of the draws. Inside a data-loader worker the stream also depends on the worker id, and on the
            epoch set with `set_epoch`, so no two workers or epochs repeat each other.
        split_commas: treat commas in names as synonym separators.

    Examples:
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


# --- shipped prompt sets and template files --------------------------------------------------------------------------

#: What ``templates`` may be at zero-shot time: templates with one ``{}`` each, shared by every class, or a mapping
#: from class names to that class's complete prompts (no ``{}``), as CuPL ships them.
Templates: TypeAlias = Sequence[str] | Mapping[str, Sequence[str]]


_DATA_FOLDER = "prompt_sets"
_TEMPLATE_FILES = {"clip": "imagenet_templates_clip.txt", "unicl": "imagenet_templates_unicl.txt"}
_CLASS_NAME_FILES = {"clip": "imagenet_classes_clip.txt", "unicl": "imagenet_classes_unicl.txt"}


@functools.cache
def _shipped_lines(filename: str) -> tuple[str, ...]:
    # Read on first use (not at import) and cached: the files are part of the installed package and never change.
    shipped = importlib.resources.files("unicl.text").joinpath(_DATA_FOLDER).joinpath(filename)
    text = shipped.read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def prompt_set_path(filename: str) -> Path:
    """Where a shipped prompt-set file is, e.g. ``prompt_set_path("imagenet_classes_clip.txt")``, to pass it to a
    command's ``--classnames`` or ``--templates``.

    Raises:
        FileNotFoundError: no such shipped file (the message lists them).
    """
    shipped = sorted({*_TEMPLATE_FILES.values(), *_CLASS_NAME_FILES.values()})
    if filename not in shipped:
        raise FileNotFoundError(f"no shipped prompt-set file {filename!r}; the files are {', '.join(shipped)}")
    return Path(str(importlib.resources.files("unicl.text").joinpath(_DATA_FOLDER).joinpath(filename)))


def imagenet_class_names(source: str = "clip") -> list[str]:
    """ImageNet-1k's 1,000 class names, in class-index order (the order of the ILSVRC-2012 synset ids).

    Args:
        source: ``"clip"``: the names CLIP's authors curated (two names appear twice there: ``missile`` for classes
            657 and 744, ``sunglasses`` for 836 and 837); ``"unicl"``: UniCL's copy, the same but for
            ``projectile`` (744) and ``dark glasses`` (837), what the released UniCL models were evaluated with.

    Returns:
        A new list of 1,000 names.

    Raises:
        ValueError: an unknown ``source``.

    Examples:
        >>> from unicl.text.prompts import imagenet_class_names
        >>> names = imagenet_class_names()
        >>> len(names), names[0], imagenet_class_names("unicl")[744]
        (1000, 'tench', 'projectile')
    """
    if source not in _CLASS_NAME_FILES:
        raise ValueError(f"source must be one of {', '.join(CLASS_NAME_SETS)}; got {source!r}")
    return list(_shipped_lines(_CLASS_NAME_FILES[source]))


def clip_templates() -> tuple[str, ...]:
    """CLIP's 80 ImageNet prompt templates, in CLIP's order, one ``{}`` each."""
    return _shipped_lines(_TEMPLATE_FILES["clip"])


def unicl_templates() -> tuple[str, ...]:
    """UniCL's 81 ImageNet evaluation templates: ``"{}."`` followed by CLIP's 80 (`clip_templates`).

    Examples:
        >>> from unicl.text.prompts import unicl_templates
        >>> len(unicl_templates()), unicl_templates()[:2]
        (81, ('{}.', 'a bad photo of a {}.'))
    """
    return _shipped_lines(_TEMPLATE_FILES["unicl"])


def _check_one_template(template: object, where: str) -> str:
    try:
        return check_templates([template])[0]  # type: ignore[list-item]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


def check_class_prompts(prompts: Mapping[str, Sequence[str]], where: str = "templates") -> dict[str, tuple[str, ...]]:
    """Check a per-class prompt mapping ``{class name: [complete prompts, ...]}`` and return it with tuple values.

    Per-class prompts are whole sentences (CuPL's ``"A tench is a freshwater fish ..."``), used as they are, so
    none may hold a ``{}`` slot.

    Args:
        prompts: the mapping.
        where: what to call it in error messages (e.g. the file it came from).

    Raises:
        ValueError: an empty mapping, a name that is not a non-empty string, a value that is not a non-empty list of
            non-empty strings, or a prompt with a ``{}`` slot. Every message is one line naming the class.
    """
    if not isinstance(prompts, Mapping) or not prompts:
        raise ValueError(f"{where}: a per-class mapping must be a non-empty mapping of class names to prompt lists")
    checked: dict[str, tuple[str, ...]] = {}
    for name, values in prompts.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: class names must be non-empty strings; got {name!r}")
        if isinstance(values, Mapping):
            raise ValueError(
                f"{where}: class {name!r} maps to a mapping, not a list of prompts; a file keyed by dataset (as "
                f"clip_benchmark's cupl_prompts.json) needs one dataset's mapping taken out, e.g. data[{name!r}]"
            )
        if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"{where}: class {name!r} must map to a non-empty list of prompts; got {values!r:.80}")
        for prompt in values:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{where}: class {name!r} has a prompt that is not a non-empty string: {prompt!r}")
            if _SLOT.search(prompt):
                raise ValueError(
                    f"{where}: per-class prompts are complete sentences, but class {name!r} has {prompt!r} with a "
                    "'{}' slot (templates with a slot go in a list)"
                )
        checked[name] = tuple(values)
    return checked


def class_prompts(
    class_names: Sequence[str | Sequence[str]], prompts: Mapping[str, Sequence[str]], split_commas: bool = True
) -> list[list[str]]:
    """Each class's prompts from a per-class mapping (`check_class_prompts`), in class order.

    A class is looked up by its name as given (each entry of a synonym list, in order), then by its cleaned
    synonyms (`class_synonyms`): ``"tench, Tinca tinca"`` finds a key ``"tench"``. Keys of classes not asked for
    are ignored, so one mapping serves every subset of its classes.

    Args:
        class_names: one name, or list of synonyms, per class.
        prompts: ``{class name: [complete prompts, ...]}``.
        split_commas: commas in names separate synonyms.

    Returns:
        ``C`` lists of prompts.

    Raises:
        ValueError: no class names, a bad mapping, or a class the mapping has no key for (named, with its id).

    Examples:
        >>> class_prompts(["cat", "dog, puppy"], {"cat": ["A cat sleeps."], "dog": ["A dog barks.", "A dog runs."]})
        [['A cat sleeps.'], ['A dog barks.', 'A dog runs.']]
    """
    if isinstance(class_names, str) or len(class_names) == 0:
        raise ValueError("class_names must be a non-empty sequence of names (or of synonym lists)")
    checked = check_class_prompts(prompts)
    per_class = []
    for index, name in enumerate(class_names):
        candidates = [name] if isinstance(name, str) else list(name)
        candidates += class_synonyms(name, split_commas)
        key = next((candidate for candidate in candidates if candidate in checked), None)
        if key is None:
            raise ValueError(
                f"templates: the per-class mapping has no prompts for class {index} {name!r} "
                f"(it has {len(checked)} classes, e.g. {next(iter(checked))!r})"
            )
        per_class.append(list(checked[key]))
    return per_class


def read_templates(path: str | os.PathLike[str]) -> tuple[str, ...] | dict[str, tuple[str, ...]]:
    """Read a templates file (a command's ``--templates FILE``).

    Three formats:

    - a text file (any suffix but ``.json``): one template per non-empty line, each with one ``{}``, the line's
      surrounding whitespace stripped;
    - a ``.json`` list of templates, each with one ``{}``;
    - a ``.json`` object mapping class names to lists of complete prompts without ``{}`` (CuPL's format), checked
      by `check_class_prompts`; `unicl.evaluation.zeroshot.build_zeroshot_classifier` makes each class the mean of
      its own prompts (see `class_prompts` for how classes are looked up).

    Returns:
        A tuple of templates, or ``{class name: tuple of prompts}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty file, invalid JSON, JSON that is neither a list nor an object, or a bad entry; one line
            naming the file and the line, entry or class.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"templates file {str(path)!r} does not exist")
    where = f"templates file {str(path)!r}"
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        numbered = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        if not numbered:
            raise ValueError(f"{where} has no templates (one per line, each with one '{{}}')")
        return tuple(_check_one_template(line, f"{where} line {number}") for number, line in numbered)
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON: {error}") from None
    if isinstance(data, dict):
        return check_class_prompts(data, where)
    if not isinstance(data, list):
        raise ValueError(
            f"{where} must hold a JSON list of templates or an object mapping class names to prompt lists; "
            f"got a JSON {type(data).__name__}"
        )
    if not data:
        raise ValueError(f"{where} has no templates")
    return tuple(_check_one_template(entry, f"{where} entry {index}") for index, entry in enumerate(data))


def get_templates(source: str | os.PathLike[str]) -> tuple[str, ...] | dict[str, tuple[str, ...]]:
    """A template set by name (`TEMPLATE_SETS`: ``"default"``, ``"plain"``, ``"clip"``, ``"unicl"``) or a file for
    `read_templates`; a name wins over a file of that name in the working directory (write ``./clip`` for that).

    Raises:
        FileNotFoundError: neither a set's name nor a file.
        ValueError: a bad file (see `read_templates`).

    Examples:
        >>> from unicl.text.prompts import get_templates
        >>> len(get_templates("unicl")), get_templates("plain")
        (81, ('a photo of a {}.',))
    """
    named = {"default": DEFAULT_TEMPLATES, "plain": PLAIN_TEMPLATES}
    name = str(source)
    if name in named:
        return named[name]
    if name in _TEMPLATE_FILES:
        return _shipped_lines(_TEMPLATE_FILES[name])
    if not Path(source).is_file():
        raise FileNotFoundError(
            f"templates {name!r} is neither a template set ({', '.join(TEMPLATE_SETS)}) nor an existing file"
        )
    return read_templates(source)
