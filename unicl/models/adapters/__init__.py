"""Models of other libraries as unicl models: ``open_clip:ARCH`` (open_clip's architectures and checkpoint files)
and ``hf:DIR`` (a transformers ``CLIPModel`` or ``SiglipModel`` directory).

Each is an `AdapterModel`, a `unicl.UniCLModel` over the wrapped model, so ``unicl.create_model``,
``unicl.create_model_and_transforms``, ``unicl.get_tokenizer``, the zero-shot heads, ``save_pretrained`` with
``unicl.load_model``, and the training and evaluation commands take these names as they take a preset's. open_clip
and transformers are optional (``pip install 'unicl[open_clip]'``, ``'unicl[hf]'``) and imported on first use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from unicl.models.adapters.base import ADAPTER_KEY, AdapterModel
from unicl.models.adapters.hf import HFAdapter, create_hf, hf_tokenizer, load_hf
from unicl.models.adapters.open_clip import OpenCLIPAdapter, create_open_clip, load_open_clip, open_clip_tokenizer
from unicl.text.tokenizer import Tokenizer

__all__ = [
    "ADAPTER_FAMILIES",
    "ADAPTER_KEY",
    "AdapterModel",
    "HFAdapter",
    "OpenCLIPAdapter",
    "adapter_tokenizer",
    "create_adapter",
    "is_adapter_name",
    "load_adapter",
    "model_source",
]

#: The adapter families as `unicl.list_models` shows them: the form of their model names.
ADAPTER_FAMILIES = ("hf:<dir>", "open_clip:<arch>")


def is_adapter_name(name: object) -> bool:
    """Whether ``name`` is an adapter model name (``open_clip:ARCH`` or ``hf:DIR``)."""
    return isinstance(name, str) and name.startswith(("open_clip:", "hf:"))


def model_source(name: str, working_directory: str | os.PathLike[str] | None = None) -> str:
    """``name`` with the directory it names made absolute (``hf:DIR``'s, or a model directory's), so that two
    spellings of one model compare equal; a preset or ``open_clip:ARCH`` name as it is.

    Args:
        name: a model name as ``--model`` takes it.
        working_directory: where a relative directory in ``name`` was given (a finished training run's, from its
            ``training.json``); the current directory when ``None``.

    Examples:
        >>> import os
        >>> model_source("hf:.") == f"hf:{os.getcwd()}", model_source("open_clip:ViT-B-32")
        (True, 'open_clip:ViT-B-32')
    """
    base = Path.cwd() if working_directory is None else Path(working_directory)
    if name.startswith("hf:"):
        return "hf:" + str((base / name[len("hf:") :]).resolve())
    return str((base / name).resolve()) if (base / name).is_dir() else name


def _split(name: str) -> tuple[str, str]:
    kind, _, rest = name.partition(":")
    if not rest:
        raise ValueError(
            f"model {name!r} names no {'architecture' if kind == 'open_clip' else 'directory'} after '{kind}:'"
        )
    return kind, rest


def create_adapter(name: str, pretrained: str | os.PathLike[str] | None = None, **overrides: Any) -> AdapterModel:
    """The adapter model ``name`` (see the module docstring).

    Args:
        name: ``open_clip:ARCH`` or ``hf:DIR``.
        pretrained: for ``open_clip:``, a local checkpoint file (random weights without); ``hf:`` takes none (the
            directory holds the weights).
        **overrides: see `unicl.models.adapters.base.check_overrides`.

    Raises:
        ImportError: the library is not installed (the extra to install is named).
        FileNotFoundError: a missing file or directory.
        ValueError: an unknown architecture, a model of another kind, weights that do not fit, an override.
    """
    kind, rest = _split(name)
    if kind == "open_clip":
        return create_open_clip(rest, pretrained, **overrides)
    if pretrained is not None:
        raise ValueError(
            f"pretrained goes with open_clip: names; {name} holds its own weights (got {str(pretrained)!r})"
        )
    return create_hf(rest, **overrides)


def adapter_tokenizer(name: str, context_length: int | None = None) -> Tokenizer:
    """The tokenizer of adapter model ``name``, with the ids its library gives.

    Raises:
        ImportError, FileNotFoundError, ValueError: as `create_adapter`.
    """
    kind, rest = _split(name)
    return open_clip_tokenizer(rest, context_length) if kind == "open_clip" else hf_tokenizer(rest, context_length)


def load_adapter(directory: Path, spec: Any, tokenizer: Tokenizer) -> AdapterModel:
    """The adapter model of a saved directory, built from its ``config.json`` entry ``spec``, without weights (the
    caller loads them) or the original checkpoint.

    Raises:
        ImportError: the library is not installed.
        ValueError: an unknown adapter kind or a specification that is not one.
    """
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "open_clip":
        return load_open_clip(directory, spec)
    if kind == "hf":
        return load_hf(directory, spec, tokenizer)
    raise ValueError(f"{directory}: unknown adapter kind {kind!r} (known: open_clip, hf)")
