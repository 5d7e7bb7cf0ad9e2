"""The preset registry: `register_model`, `create_model(name, pretrained=...)`, `list_models`, `get_config`.

A preset is a name for a model configuration and the tokenizer its text tower reads (`Preset`). The four presets
below are registered when this module is imported; `register_model` adds one of your own, which every function here,
`unicl.create_model_and_transforms`, `unicl.image_transform`, `unicl.get_tokenizer` and the commands' ``main(argv)``
called in the same process then know by name.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import os
from collections.abc import Callable
from typing import Any

from unicl.models.adapters import ADAPTER_FAMILIES, create_adapter, is_adapter_name
from unicl.models.image import ImageConfig
from unicl.models.model import UniCLConfig, UniCLModel
from unicl.models.pretrained import resolve_pretrained
from unicl.models.serialization import load_pretrained_into
from unicl.models.text import TextConfig
from unicl.text.tokenizer import CLIP_VOCAB_SIZE

#: The paper's text tower: 12 layers, 512 wide, 8 heads, 77 tokens, CLIP's 49,408-token vocabulary.
PAPER_TEXT = TextConfig(vocab_size=49408, context_length=77, width=512, layers=12, heads=8)
#: The text tower of the released UniCL models (microsoft/UniCL v1.0): the paper's, with QuickGELU, LayerNorm
#: epsilon 1e-12 and the sequence read out at the largest id (CLIP BPE's end-of-text token).
OFFICIAL_TEXT = dataclasses.replace(PAPER_TEXT, activation="quick_gelu", norm_eps=1e-12, pool="argmax")

#: A preset's tokenizer is CLIP's byte-level BPE (found on this machine, see ``Tokenizer.clip``).
CLIP_TOKENIZER = "clip"
#: A preset's tokenizer is trained on each run's own prompts and captions (a byte-level BPE with the text tower's
#: vocabulary size and context length) and saved with the run: right for small towers and new domains.
TRAINED_TOKENIZER = "trained"
#: The tokenizers a preset may name.
TOKENIZERS = (CLIP_TOKENIZER, TRAINED_TOKENIZER)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named model: how to build its configuration, and which tokenizer its text tower reads.

    Attributes:
        config: returns a fresh `UniCLConfig`.
        tokenizer: `CLIP_TOKENIZER` or `TRAINED_TOKENIZER`.
    """

    config: Callable[[], UniCLConfig]
    tokenizer: str = CLIP_TOKENIZER


#: The registry: preset name to `Preset`. Filled by `register_model`, never written to directly.
_PRESETS: dict[str, Preset] = {}


def register_model(
    name: str,
    config_or_factory: UniCLConfig | Callable[[], UniCLConfig],
    tokenizer: str = CLIP_TOKENIZER,
    overwrite: bool = False,
) -> Preset:
    """Register a preset: ``create_model(name)`` and every other function that takes a preset name then know it.

    Args:
        name: the preset's name.
        config_or_factory: its `UniCLConfig` (each use gets a deep copy, so a model never shares or changes the
            registered one) or a function returning a fresh one.
        tokenizer: `CLIP_TOKENIZER` (``"clip"``: CLIP's BPE, 49,408 ids) or `TRAINED_TOKENIZER` (``"trained"``: one
            trained on each run's own text and saved with it).
        overwrite: replace a preset of the same name instead of refusing it.

    Returns:
        The registered `Preset`.

    Raises:
        ValueError: a name that is taken (without ``overwrite``) or empty, an unknown tokenizer, or CLIP's tokenizer
            for a text tower that embeds fewer than its 49,408 ids.
        TypeError: ``config_or_factory`` is neither a `UniCLConfig` nor a function returning one.

    Examples:
        >>> import unicl
        >>> from unicl.models import get_config
        >>> _ = unicl.register_model("my_tiny", get_config("unicl_tiny", embed_dim=32), tokenizer="trained")
        >>> unicl.create_model("my_tiny").config.embed_dim
        32
        >>> unicl.register_model("my_tiny", get_config("unicl_tiny"))
        Traceback (most recent call last):
        ...
        ValueError: model 'my_tiny' is already registered; pass overwrite=True to replace it
        >>> _ = unicl.models.unregister_model("my_tiny")
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string; got {name!r}")
    if name in _PRESETS and not overwrite:
        raise ValueError(f"model {name!r} is already registered; pass overwrite=True to replace it")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {', '.join(map(repr, TOKENIZERS))}; got {tokenizer!r}")
    if isinstance(config_or_factory, UniCLConfig):
        registered = copy.deepcopy(config_or_factory)

        def factory() -> UniCLConfig:
            return copy.deepcopy(registered)

    elif callable(config_or_factory):
        factory = config_or_factory
    else:
        kind = type(config_or_factory).__name__
        raise TypeError(f"config_or_factory must be a UniCLConfig or a function returning one; got {kind}")
    # Built once now, so that a factory that fails or returns something else fails here, not at first use.
    made = factory()
    if not isinstance(made, UniCLConfig):
        raise TypeError(f"config_or_factory of {name!r} must return a UniCLConfig; it returned {type(made).__name__}")
    if tokenizer == CLIP_TOKENIZER and made.text.vocab_size < CLIP_VOCAB_SIZE:
        # Refused here rather than as an index error inside the embedding at the first forward.
        raise ValueError(
            f"model {name!r}: its text tower embeds {made.text.vocab_size} ids but CLIP's tokenizer has "
            f"{CLIP_VOCAB_SIZE:,}; register it with tokenizer={TRAINED_TOKENIZER!r} or a text vocab_size of at least "
            f"{CLIP_VOCAB_SIZE}"
        )
    preset = Preset(factory, tokenizer)
    _PRESETS[name] = preset
    return preset


def unregister_model(name: str) -> Preset:
    """Remove preset ``name`` from the registry (a test's or a notebook's own preset, say) and return it.

    Raises:
        ValueError: an unknown preset (the known ones are listed).
    """
    preset = _preset(name)
    del _PRESETS[name]
    return preset


# The released UniCL architectures: Swin-T / Swin-B at 224, window 7, bias-free projections into 512.
register_model(
    "unicl_swin_tiny", lambda: UniCLConfig(ImageConfig("swin_tiny_patch4_window7_224"), OFFICIAL_TEXT, embed_dim=512)
)
register_model(
    "unicl_swin_base", lambda: UniCLConfig(ImageConfig("swin_base_patch4_window7_224"), OFFICIAL_TEXT, embed_dim=512)
)
register_model("unicl_resnet50", lambda: UniCLConfig(ImageConfig("resnet50"), PAPER_TEXT, embed_dim=512))
# For tests and demos: a 2-block, 128-wide ViT on 32x32 images and a 2-layer, 64-wide text tower. Patches of 16
# (4 tokens): trained from scratch on small data, a ViT this shallow learns several times faster from 4 large
# patches than from 16 of 8 pixels, whose 16 tokens it must first learn to combine (measured on scikit-learn's
# digits; tests/test_train_defaults.py holds the training command to it).
register_model(
    "unicl_tiny",
    lambda: UniCLConfig(
        ImageConfig(
            "vit_tiny_patch16_224",
            image_size=32,
            timm_kwargs={"patch_size": 16, "depth": 2, "embed_dim": 128, "num_heads": 2},
        ),
        TextConfig(vocab_size=1000, context_length=16, width=64, layers=2, heads=2),
        embed_dim=64,
    ),
    tokenizer=TRAINED_TOKENIZER,
)


def list_models(pattern: str = "*") -> list[str]:
    """Preset names matching a shell-style ``pattern``, sorted, then the adapter families that match it:
    ``"hf:<dir>"`` (a transformers CLIP or SigLIP directory) and ``"open_clip:<arch>"`` (an open_clip
    architecture), whose models `create_model` builds by name (``"open_clip:ViT-B-32"``; see
    `unicl.models.adapters`).

    Examples:
        >>> list_models("unicl_swin*"), list_models("open_clip:*")
        (['unicl_swin_base', 'unicl_swin_tiny'], ['open_clip:<arch>'])
    """
    presets = sorted(name for name in _PRESETS if fnmatch.fnmatch(name, pattern))
    return presets + [family for family in ADAPTER_FAMILIES if fnmatch.fnmatch(family, pattern)]


def is_model_name(name: object) -> bool:
    """Whether ``name`` is a preset's name or an adapter model's (``open_clip:ARCH``, ``hf:DIR``)."""
    return is_adapter_name(name) or (isinstance(name, str) and name in _PRESETS)


def get_config(name: str, **overrides: Any) -> UniCLConfig:
    """The configuration of preset ``name`` with ``overrides`` applied.

    Top-level fields are replaced (``embed_dim=256``); ``image=`` and ``text=`` take a dict of field changes
    (``text={"layers": 6}``) or a whole config.

    Raises:
        ValueError: an unknown preset (the known ones are listed) or an unknown field.
    """
    config = _preset(name).config()
    for tower in ("image", "text"):
        change = overrides.get(tower)
        if isinstance(change, dict):
            overrides[tower] = _replace(getattr(config, tower), change, tower)
    return _replace(config, overrides, "model")


def preset_tokenizer(name: str) -> str:
    """The tokenizer preset ``name`` reads: `CLIP_TOKENIZER` or `TRAINED_TOKENIZER`.

    Raises:
        ValueError: an unknown preset (the known ones are listed).

    Examples:
        >>> preset_tokenizer("unicl_swin_tiny"), preset_tokenizer("unicl_tiny")
        ('clip', 'trained')
    """
    return _preset(name).tokenizer


def _preset(name: str) -> Preset:
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _PRESETS[name]


def _replace(config: Any, changes: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown {where} config field(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(config, **changes)


def create_model(name: str, pretrained: str | os.PathLike[str] | None = None, **overrides: Any) -> UniCLModel:
    """Build preset ``name`` (see `list_models`) with ``overrides`` (see `get_config`), and load its weights; or the
    adapter model ``open_clip:ARCH`` / ``hf:DIR`` (`unicl.models.adapters.create_adapter`).

    Args:
        name: the preset, or an adapter model name.
        pretrained: weights to load strictly into it: the tag of a released checkpoint (see `unicl.list_pretrained`;
            read from `unicl.models.pretrained.checkpoint_dir`, checked against its SHA-256 where known), a
            directory written by ``model.save_pretrained``, a ``.safetensors`` file with the same tensor names, or a
            release file (``.pth``, ``.pt``, ``.bin``; see `unicl.models.serialization`).
            For ``open_clip:ARCH``: a local checkpoint file of open_clip's; ``hf:DIR`` takes none.
        **overrides: configuration changes (an adapter takes only those of
            `unicl.models.adapters.base.check_overrides`).

    Raises:
        ValueError: an unknown preset or field, a tag of another preset, a file in another format or not the
            release's, or weights that do not fit the model (missing, unexpected and mis-shaped tensors are named).
        FileNotFoundError: nothing at ``pretrained`` (for a tag: the path looked at and the URL to fetch it from).
        ImportError: an adapter model whose library is not installed (the extra to install is named).

    Examples:
        >>> import unicl
        >>> unicl.list_models()
        ['unicl_resnet50', 'unicl_swin_base', 'unicl_swin_tiny', 'unicl_tiny', 'hf:<dir>', 'open_clip:<arch>']
        >>> model = unicl.create_model("unicl_tiny", embed_dim=32, text={"layers": 1})
    """
    if is_adapter_name(name):
        return create_adapter(name, pretrained, **overrides)
    config = get_config(name, **overrides)
    # The weights' path first: a missing or unchecked file fails before the (slow) model is built.
    source = None if pretrained is None else resolve_pretrained(name, pretrained)
    model = UniCLModel(config)
    if source is not None:
        load_pretrained_into(model, source)
    return model
