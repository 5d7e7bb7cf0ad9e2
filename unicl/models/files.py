"""The files of a saved model directory: their names, atomic writes, safetensors reads and strict loading.

This module knows files and state dicts, not the model class, so that both `unicl.UniCLModel.save_pretrained` (in
`unicl.models.model`) and `unicl.models.serialization` (which builds models) can use it without importing each
other. A directory holds ``model.safetensors`` (every tensor, no pickle), ``config.json`` (the configuration and
`FORMAT_VERSION`) and, when given, the tokenizer (``tokenizer.json``, ``tokenizer_config.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unicl.models.atomic import replacing
from unicl.text.tokenizer import Tokenizer

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: Bumped whenever the layout of ``config.json`` or the tensor names change incompatibly.
FORMAT_VERSION = 1


def write_model_directory(
    directory: str | os.PathLike[str],
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    tokenizer: Tokenizer | None = None,
    key: str = "model",
) -> Path:
    """Write a model's tensors, its configuration and its tokenizer (if given) to ``directory`` (created if needed).

    Each weight and configuration file is written to a temporary name and renamed into place, so a reader never
    sees a half-written file; the tokenizer goes first, so a reader that finds the weights finds their tokenizer
    (never CLIP's by default in its place).

    Args:
        directory: where ``model.safetensors`` and ``config.json`` go.
        state_dict: the tensors, by name.
        config: the configuration as plain JSON values (``dataclasses.asdict`` of a `unicl.models.model.UniCLConfig`).
        tokenizer: the tokenizer the model was trained with.
        key: the entry of ``config.json`` that holds ``config``: ``"model"`` for a `unicl.UniCLModel`,
            ``"adapter"`` for the model of another library (`unicl.models.adapters`).

    Returns:
        The directory.

    Raises:
        TypeError: ``tokenizer`` is not a ``Tokenizer``.
    """
    if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be a unicl.text.tokenizer.Tokenizer; got {type(tokenizer).__name__}")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        tokenizer.save(target)
    tensors = {name: tensor.detach().contiguous() for name, tensor in state_dict.items()}
    saved = {"format_version": FORMAT_VERSION, key: config}
    with replacing(target / WEIGHTS_NAME) as temporary:
        # One metadata entry: safetensors writes metadata from a hash map in a random order, and a single entry
        # keeps the file's bytes a function of the weights (two runs that agree compare equal with cmp).
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    with replacing(target / CONFIG_NAME) as temporary:
        temporary.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    return target


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is truncated, corrupt or not a safetensors file (a pickled ``.pth``, say).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{path} is not a readable safetensors file: it is truncated, corrupt or in another format ({error})"
        ) from error


def load_weights_strictly(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load ``tensors`` into ``model`` exactly: every name present, none extra, every shape equal; the tensors keep
    their dtype (``assign=True``), so a round trip is bit for bit.

    Raises:
        ValueError: naming the missing and unexpected tensors and the shape mismatches (up to 10 of each).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(
        f"{name}: checkpoint {tuple(tensors[name].shape)}, model {tuple(expected[name].shape)}"
        for name in set(expected) & set(tensors)
        if tensors[name].shape != expected[name].shape
    )
    problems = [
        f"{len(items)} {what}: {items[:10]}{' ...' if len(items) > 10 else ''}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("of the wrong shape", wrong_shape))
        if items
    ]
    if problems:
        raise ValueError(f"{source} does not fit this model: " + "; ".join(problems))
    model.load_state_dict(tensors, strict=True, assign=True)
