"""unicl's own checkpoint format: safetensors weights and a JSON config in one directory, no pickle.

``save_pretrained(model, directory)`` writes ``directory/model.safetensors`` and ``directory/config.json``;
`load_model` rebuilds the model from the config and restores every tensor bit for bit, in its saved dtype.
Loading is strict: a missing or unexpected tensor, or one of the wrong shape, raises one error that names them, and a
truncated or foreign file says so instead of failing deep inside a parser.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unicl.models.image import ImageConfig
from unicl.models.model import UniCLConfig, UniCLModel
from unicl.models.text import TextConfig
from unicl.text.tokenizer import Tokenizer

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: Bumped whenever the layout of ``config.json`` or the tensor names change incompatibly.
FORMAT_VERSION = 1


def save_pretrained(
    model: UniCLModel, directory: str | os.PathLike[str], tokenizer: Tokenizer | None = None
) -> Path:
    """Write ``model``'s tensors and configuration to ``directory`` (created if needed), and its tokenizer if given.

    Each weight and configuration file is written to a temporary name and renamed into place, so a reader never
    sees a half-written file. With the tokenizer saved beside them (``Tokenizer.save``), ``unicl.get_tokenizer``
    and the commands read the directory's own tokenizer by default.

    Args:
        model: the model to save.
        directory: where ``model.safetensors`` and ``config.json`` go.
        tokenizer: the tokenizer the model was trained with (``tokenizer.json``, ``tokenizer_config.json``).

    Returns:
        The directory.

    Raises:
        TypeError: ``model`` is not a `unicl.UniCLModel`, or ``tokenizer`` not a ``Tokenizer``.
    """
    if not isinstance(model, UniCLModel):
        raise TypeError(f"model must be a unicl.UniCLModel; got {type(model).__name__}")
    if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
        raise TypeError(f"tokenizer must be a unicl.text.tokenizer.Tokenizer; got {type(tokenizer).__name__}")
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        # First: a reader that finds the weights finds their tokenizer (never CLIP's by default in its place).
        tokenizer.save(target)
    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    config = {"format_version": FORMAT_VERSION, "model": dataclasses.asdict(model.config)}
    with _replacing(target / WEIGHTS_NAME) as temporary:
        # One metadata entry: safetensors writes metadata from a hash map in a random order, and a single entry
        # keeps the file's bytes a function of the weights (two runs that agree compare equal with cmp).
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    with _replacing(target / CONFIG_NAME) as temporary:
        temporary.write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    return target


class _replacing:
    """A temporary path beside ``path`` that replaces ``path`` when the block succeeds (and vanishes if it fails)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Path:
        handle, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(handle)
        self.temporary = Path(name)
        return self.temporary

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if error is None:
            os.replace(self.temporary, self.path)
        else:
            self.temporary.unlink(missing_ok=True)


def read_config(directory: str | os.PathLike[str]) -> UniCLConfig:
    """The `UniCLConfig` saved in ``directory/config.json``.

    Raises:
        FileNotFoundError: no such directory or file.
        ValueError: the file is not a unicl configuration of a known format version.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: expected a directory written by save_pretrained")
    try:
        saved = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); was it written by save_pretrained?") from error
    if not isinstance(saved, dict) or saved.get("format_version") != FORMAT_VERSION or "model" not in saved:
        raise ValueError(
            f"{path} is not a unicl model configuration of format version {FORMAT_VERSION} "
            f"(found format_version={saved.get('format_version') if isinstance(saved, dict) else None!r})"
        )
    return _config_from_dict(saved["model"], path)


def _config_from_dict(fields: Any, path: Path) -> UniCLConfig:
    if not isinstance(fields, dict):
        raise ValueError(f"{path}: 'model' must be an object of configuration fields")
    nested = {"image": ImageConfig, "text": TextConfig}
    values = dict(fields)
    for name, kind in nested.items():
        if name in values:
            values[name] = _build(kind, values[name], f"{path}: model.{name}")
    return _build(UniCLConfig, values, f"{path}: model")


def _build(kind: type, values: Any, where: str) -> Any:
    """``kind(**values)`` with unknown or missing fields reported by name."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be an object of fields; got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {unknown}; known: {sorted(known)}")
    return kind(**values)


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


def load_model(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> UniCLModel:
    """The model saved by `save_pretrained` in ``directory``, bit for bit.

    Args:
        directory: written by `save_pretrained` (or ``UniCLModel.save_pretrained``).
        device: where to put the model.

    Raises:
        FileNotFoundError: the directory or one of its files is missing.
        ValueError: a corrupt, truncated or foreign file, or tensors that do not fit the saved configuration.

    Example:
        >>> import tempfile, torch, unicl
        >>> model = unicl.create_model("unicl_tiny")
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = model.save_pretrained(folder)
        ...     again = unicl.load_model(folder)
        >>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
        True
    """
    config = read_config(directory)
    model = UniCLModel(config)
    load_weights_strictly(model, read_weights(Path(directory) / WEIGHTS_NAME), str(Path(directory) / WEIGHTS_NAME))
    return model.to(device)


#: Suffixes of ``torch.save`` files, read as release checkpoints of microsoft/UniCL.
OFFICIAL_SUFFIXES = (".pth", ".pt", ".bin")


def load_pretrained_into(model: UniCLModel, pretrained: str | os.PathLike[str]) -> UniCLModel:
    """Load ``pretrained`` into ``model``, strictly: a `save_pretrained` directory, a ``.safetensors`` file
    with unicl's tensor names, or a released microsoft/UniCL checkpoint (``.pth``, ``.pt``, ``.bin``; see
    `unicl.models.official`).

    Raises:
        FileNotFoundError: nothing at ``pretrained``.
        ValueError: a file in another format, or tensors that do not fit ``model``.
    """
    from unicl.models.official import convert_official_state_dict, read_official_checkpoint

    path = Path(pretrained)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    elif path.suffix in OFFICIAL_SUFFIXES:
        tensors = convert_official_state_dict(read_official_checkpoint(path), model)
        load_weights_strictly(model, tensors, f"{path} (a microsoft/UniCL checkpoint, renamed)")
        return model
    elif path.is_file() and path.suffix != ".safetensors":
        raise ValueError(
            f"pretrained={str(pretrained)!r}: expected a directory written by save_pretrained, a .safetensors "
            f"file, or a microsoft/UniCL checkpoint ({', '.join(OFFICIAL_SUFFIXES)}); got a "
            f"{path.suffix or 'suffix-less'} file"
        )
    load_weights_strictly(model, read_weights(path), str(path))
    return model
