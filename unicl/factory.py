"""One call for a model and what goes with it: `create_model_and_transforms`, as open_clip users know it.

The tokenizer is ``unicl.get_tokenizer(name_or_dir)`` (`unicl.models.tokenizers`), which takes the same name or
directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from unicl.data.transforms import image_transform
from unicl.models.model import UniCLModel
from unicl.models.presets import create_model
from unicl.models.serialization import load_model


def create_model_and_transforms(
    name: str | os.PathLike[str],
    pretrained: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> tuple[UniCLModel, Callable, Callable]:
    """The model, its training augmentation and its evaluation transform (open_clip's order).

    Args:
        name: a preset (`unicl.list_models`, built by `unicl.create_model`) or a directory written by
            ``save_pretrained`` (the training command's ``RUN/final``, read by `unicl.load_model`); an existing
            directory wins over a preset of the same name.
        pretrained: the preset's weights, as `unicl.create_model` takes them: a tag of `unicl.list_pretrained`, a
            ``save_pretrained`` directory, a ``.safetensors`` or a release ``.pth`` file.
        device: where to put the model (default: where it was built, the CPU).
        **overrides: configuration changes of the preset (see `unicl.models.get_config`).

    Returns:
        ``(model, train_transform, eval_transform)``: the transforms are
        ``unicl.image_transform(model, train=True)`` and ``unicl.image_transform(model)``, PIL image to
        ``[3, S, S]`` tensor for the model's image size ``S``.

    Raises:
        ValueError: an unknown preset or field, ``pretrained`` or ``overrides`` with a model directory, or weights
            that do not fit (see `unicl.create_model`).
        FileNotFoundError: missing weights or model files.

    Examples:
        >>> from PIL import Image
        >>> import unicl
        >>> model, train_transform, eval_transform = unicl.create_model_and_transforms("unicl_tiny")
        >>> pixels = eval_transform(Image.new("RGB", (32, 32)))  # unicl_tiny reads 32 x 32 images
        >>> pixels.shape, model.encode_image(pixels[None]).shape
        (torch.Size([3, 32, 32]), torch.Size([1, 64]))
    """
    if Path(name).is_dir():
        # A directory wins over a preset of the same name, as in `unicl.get_tokenizer` and the commands.
        if pretrained is not None or overrides:
            given = ", ".join([*(["pretrained"] if pretrained is not None else []), *sorted(overrides)])
            raise ValueError(
                f"pretrained and overrides go with a preset name, but {str(name)!r} is a saved model directory, "
                f"loaded as saved (got {given})"
            )
        model = load_model(name)
    else:
        model = create_model(str(name), pretrained=pretrained, **overrides)
    if device is not None:
        model = model.to(device)
    return model, image_transform(model, train=True), image_transform(model)
