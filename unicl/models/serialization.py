"""unicl's own checkpoint format: safetensors weights and a JSON config in one directory, no pickle.

``save_pretrained(model, directory)`` writes ``directory/model.safetensors`` and ``directory/config.json`` (the files
themselves are `unicl.models.files`'s); `load_model` rebuilds the model from the config and restores every tensor bit
for bit, in its saved dtype. Loading is strict: a missing or unexpected tensor, or one of the wrong shape, raises one
error that names them, and a truncated or foreign file says so instead of failing deep inside a parser.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from unicl.models.adapters import ADAPTER_KEY, load_adapter
from unicl.models.files import CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME, load_weights_strictly, read_weights
from unicl.models.image import ImageConfig
from unicl.models.model import UniCLConfig, UniCLModel
from unicl.models.official import convert_official_state_dict, read_official_checkpoint
from unicl.models.text import TextConfig
from unicl.text.tokenizer import Tokenizer

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "OFFICIAL_SUFFIXES",
    "WEIGHTS_NAME",
    "load_model",
    "load_pretrained_into",
    "load_weights_strictly",
    "read_config",
    "read_weights",
    "save_pretrained",
]


def save_pretrained(model: UniCLModel, directory: str | os.PathLike[str], tokenizer: Tokenizer | None = None) -> Path:
    """Write ``model``'s tensors and configuration to ``directory`` (created if needed), and its tokenizer if given:
    the function form of ``model.save_pretrained(directory, tokenizer)``.

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
    return model.save_pretrained(directory, tokenizer)


def read_config(directory: str | os.PathLike[str]) -> UniCLConfig:
    """The `UniCLConfig` saved in ``directory/config.json``.

    Raises:
        FileNotFoundError: no such directory or file.
        ValueError: the file is not a unicl configuration of a known format version, or is an adapter model's
            (`unicl.models.adapters`, whose configuration is its library's).
    """
    saved, path = _read_saved(directory)
    if "model" not in saved:
        raise ValueError(
            f"{path} holds the model of another library ({saved[ADAPTER_KEY].get('kind')!r}), not a UniCLConfig"
        )
    return _config_from_dict(saved["model"], path)


def _read_saved(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], Path]:
    """``config.json`` of a saved directory, checked: a unicl model's (``"model"``) or an adapter's (``"adapter"``)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: expected a directory written by save_pretrained")
    try:
        saved = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); was it written by save_pretrained?") from error
    if (
        not isinstance(saved, dict)
        or saved.get("format_version") != FORMAT_VERSION
        or not ("model" in saved or isinstance(saved.get(ADAPTER_KEY), dict))
    ):
        raise ValueError(
            f"{path} is not a unicl model configuration of format version {FORMAT_VERSION} "
            f"(found format_version={saved.get('format_version') if isinstance(saved, dict) else None!r})"
        )
    return saved, path


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


def load_model(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> UniCLModel:
    """The model saved by `save_pretrained` in ``directory``, bit for bit.

    An adapter model's directory (``open_clip:``, ``hf:``; `unicl.models.adapters`) is rebuilt from the
    configuration, weights and tokenizer saved in it, without the original checkpoint or model directory.

    Args:
        directory: written by `save_pretrained` (or ``UniCLModel.save_pretrained``).
        device: where to put the model.

    Raises:
        FileNotFoundError: the directory or one of its files is missing.
        ValueError: a corrupt, truncated or foreign file, or tensors that do not fit the saved configuration.
        ImportError: an adapter model whose library is not installed.

    Examples:
        >>> import tempfile, torch, unicl
        >>> model = unicl.create_model("unicl_tiny")
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = model.save_pretrained(folder)
        ...     again = unicl.load_model(folder)
        >>> all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
        True
    """
    saved, _ = _read_saved(directory)
    weights = Path(directory) / WEIGHTS_NAME
    if ADAPTER_KEY in saved:
        # An adapter model is rebuilt from its library's stored configuration and its saved tokenizer alone.
        adapter = load_adapter(Path(directory), saved[ADAPTER_KEY], Tokenizer.from_pretrained(directory))
        load_weights_strictly(adapter.model, read_weights(weights), str(weights))
        return adapter.to(device)
    model = UniCLModel(read_config(directory))
    load_weights_strictly(model, read_weights(weights), str(weights))
    return model.to(device)


#: Suffixes of ``torch.save`` files, read as release checkpoints of microsoft/UniCL.
OFFICIAL_SUFFIXES = (".pth", ".pt", ".bin")


def load_pretrained_into(model: UniCLModel, pretrained: str | os.PathLike[str]) -> UniCLModel:
    """Load ``pretrained`` into ``model``, strictly: a `save_pretrained` directory, a ``.safetensors`` file
    with unicl's tensor names, or a released microsoft/UniCL checkpoint (``.pth``, ``.pt``, ``.bin``; see
    `unicl.models.official`).

    The one tensor a checkpoint may lack is the logit bias of a model built for the sigmoid objective: weights
    trained with the softmax objective have none, and the model keeps its own initial bias.

    Raises:
        FileNotFoundError: nothing at ``pretrained``.
        ValueError: a file in another format, or tensors that do not fit ``model``.
    """
    path = Path(pretrained)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    elif path.suffix in OFFICIAL_SUFFIXES:
        tensors = convert_official_state_dict(read_official_checkpoint(path), model)
        load_weights_strictly(model, _with_own_bias(model, tensors), f"{path} (a microsoft/UniCL checkpoint, renamed)")
        return model
    elif path.is_file() and path.suffix != ".safetensors":
        raise ValueError(
            f"pretrained={str(pretrained)!r}: expected a directory written by save_pretrained, a .safetensors "
            f"file, or a microsoft/UniCL checkpoint ({', '.join(OFFICIAL_SUFFIXES)}); got a "
            f"{path.suffix or 'suffix-less'} file"
        )
    load_weights_strictly(model, _with_own_bias(model, read_weights(path)), str(path))
    return model


def _with_own_bias(model: UniCLModel, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with the model's own logit bias added where the model has one and the checkpoint does not."""
    if model.logit_bias is None or "logit_bias" in tensors:
        return tensors
    return {**tensors, "logit_bias": model.logit_bias.detach().clone()}
