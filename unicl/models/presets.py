"""Named model configurations: ``create_model(name, **overrides)`` and ``list_models()``."""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Callable
from typing import Any

from unicl.models.image import ImageConfig
from unicl.models.model import UniCLConfig, UniCLModel
from unicl.models.text import TextConfig

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


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named model: how to build its configuration, and which tokenizer its text tower reads.

    Attributes:
        config: returns a fresh `UniCLConfig`.
        tokenizer: `CLIP_TOKENIZER` or `TRAINED_TOKENIZER`.
    """

    config: Callable[[], UniCLConfig]
    tokenizer: str = CLIP_TOKENIZER


_PRESETS: dict[str, Preset] = {
    # The released UniCL architectures: Swin-T / Swin-B at 224, window 7, bias-free projections into 512.
    "unicl_swin_tiny": Preset(
        lambda: UniCLConfig(ImageConfig("swin_tiny_patch4_window7_224"), OFFICIAL_TEXT, embed_dim=512)
    ),
    "unicl_swin_base": Preset(
        lambda: UniCLConfig(ImageConfig("swin_base_patch4_window7_224"), OFFICIAL_TEXT, embed_dim=512)
    ),
    "unicl_resnet50": Preset(lambda: UniCLConfig(ImageConfig("resnet50"), PAPER_TEXT, embed_dim=512)),
    # For tests and demos: a 2-block, 128-wide ViT on 32x32 images and a 2-layer, 64-wide text tower. Patches of 16
    # (4 tokens): trained from scratch on small data, a ViT this shallow learns several times faster from 4 large
    # patches than from 16 of 8 pixels, whose 16 tokens it must first learn to combine (measured on scikit-learn's
    # digits; tests/test_train_defaults.py holds the training command to it).
    "unicl_tiny": Preset(
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
    ),
}


def list_models(pattern: str = "*") -> list[str]:
    """Preset names matching a shell-style ``pattern``, sorted."""
    return sorted(name for name in _PRESETS if fnmatch.fnmatch(name, pattern))


def get_config(name: str, **overrides: Any) -> UniCLConfig:
    """The configuration of preset ``name`` with ``overrides`` applied.

    Top-level fields are replaced (``embed_dim=256``); ``image=`` and ``text=`` take a dict of field changes
    (``text={"layers": 6}``) or a whole config.

    Raises:
        ValueError: an unknown preset (the known ones are listed) or an unknown field.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    config = _PRESETS[name].config()
    for tower in ("image", "text"):
        change = overrides.get(tower)
        if isinstance(change, dict):
            overrides[tower] = _replace(getattr(config, tower), change, tower)
    return _replace(config, overrides, "model")


def preset_tokenizer(name: str) -> str:
    """The tokenizer preset ``name`` reads: `CLIP_TOKENIZER` or `TRAINED_TOKENIZER`.

    Raises:
        ValueError: an unknown preset (the known ones are listed).

    Example:
        >>> preset_tokenizer("unicl_swin_tiny"), preset_tokenizer("unicl_tiny")
        ('clip', 'trained')
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _PRESETS[name].tokenizer


def _replace(config: Any, changes: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ValueError(f"unknown {where} config field(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(config, **changes)


def create_model(name: str, pretrained: str | os.PathLike[str] | None = None, **overrides: Any) -> UniCLModel:
    """Build preset ``name`` (see `list_models`) with ``overrides`` (see `get_config`).

    Args:
        name: the preset.
        pretrained: weights to load strictly into it: a directory written by ``model.save_pretrained`` or a
            ``.safetensors`` file with the same tensor names (see `unicl.models.serialization`).
        **overrides: configuration changes.

    Raises:
        ValueError: an unknown preset or field, a file in another format, or weights that do not fit the model
            (missing, unexpected and mis-shaped tensors are named).
        FileNotFoundError: nothing at ``pretrained``.

    Example:
        >>> import unicl
        >>> unicl.list_models()
        ['unicl_resnet50', 'unicl_swin_base', 'unicl_swin_tiny', 'unicl_tiny']
        >>> model = unicl.create_model("unicl_tiny", embed_dim=32, text={"layers": 1})
    """
    model = UniCLModel(get_config(name, **overrides))
    if pretrained is not None:
        from unicl.models.serialization import load_pretrained_into

        load_pretrained_into(model, pretrained)
    return model
