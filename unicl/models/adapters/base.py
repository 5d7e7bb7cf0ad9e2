"""What every adapter model shares: a wrapped open_clip or transformers model seen as a `unicl.UniCLModel`.

`AdapterModel` is a `unicl.UniCLModel` (so every function of the library that takes one takes it) whose towers,
projections, logit scale and logit bias are those of the wrapped model, ``self.model``: nothing is copied, and the
state dict is the wrapped model's under ``model.``. ``config`` is a `unicl.UniCLConfig` that describes the wrapped
model as far as the library asks (text vocabulary and context, image size, embedding width, logit-bias presence);
the wrapped model is built from its own library's configuration, kept in ``spec``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unicl.models.files import write_model_directory
from unicl.models.image import ImageConfig
from unicl.models.model import UniCLConfig, UniCLModel
from unicl.models.text import TextConfig
from unicl.text.tokenizer import Tokenizer

#: The key of ``config.json`` that marks a saved adapter model (a `unicl.UniCLModel` directory has ``"model"``).
ADAPTER_KEY = "adapter"


def import_optional(module: str, extra: str) -> ModuleType:
    """``module``, imported on first use, or one line naming the extra that installs it.

    Raises:
        ImportError: the library is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{module} is not installed: pip install 'unicl[{extra}]'") from None


class AdapterModel(UniCLModel):
    """A model of another library as a `unicl.UniCLModel`: ``encode_image``, ``encode_text``, ``forward``, the
    (clamped, bounded) logit scale and bias, ``param_groups`` and ``save_pretrained`` act on the wrapped model.

    Subclasses say how to encode (`_image_features`, `_text_features`) and what to save (`spec`).

    Args:
        model: the wrapped ``nn.Module``; it must hold a ``logit_scale`` parameter in log space (CLIP's) and may hold
            a ``logit_bias`` (SigLIP's).
        config: the `unicl.UniCLConfig` that describes it (see the module docstring).
        spec: the JSON-ready description `unicl.load_model` rebuilds the wrapped model from (no checkpoint file).
        tokenizer: the tokenizer its text tower reads, saved with it, or a function that makes it (called once, on
            first use: CLIP's BPE takes a second to build).
        transforms: ``(train, eval)`` callables from a PIL image to a ``[3, S, S]`` float tensor.
    """

    #: The adapter family, the prefix of its model names (``"open_clip"``, ``"hf"``).
    kind: str = ""

    def __init__(
        self,
        model: nn.Module,
        config: UniCLConfig,
        spec: dict[str, Any],
        tokenizer: Tokenizer | Callable[[], Tokenizer],
        transforms: tuple[Callable, Callable],
    ) -> None:
        # UniCLModel's own towers are not built: the wrapped model's are used.
        nn.Module.__init__(self)
        self.config = config
        self.model = model
        self.spec = spec
        self._tokenizer = tokenizer
        self.transforms = transforms

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the wrapped model's text tower reads (its library's token ids)."""
        if not isinstance(self._tokenizer, Tokenizer):
            self._tokenizer = self._tokenizer()
        return self._tokenizer

    @property
    def logit_scale(self) -> nn.Parameter:  # type: ignore[override]  # the wrapped model holds it
        """The wrapped model's logit scale (log space, 0-dim)."""
        return self.model.logit_scale  # type: ignore[return-value]

    @property
    def logit_bias(self) -> nn.Parameter | None:  # type: ignore[override]  # the wrapped model holds it
        """The wrapped model's logit bias (0-dim or ``[1]``), or ``None`` for a model without one."""
        return getattr(self.model, "logit_bias", None)

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``[B, 3, S, S]`` images to ``[B, embed_dim]`` embeddings, the wrapped model's own (unit rows when
        ``normalize``)."""
        features = self._image_features(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """``[B, L]`` ids (and mask, where the wrapped model reads one) to ``[B, embed_dim]`` embeddings, the wrapped
        model's own (unit rows when ``normalize``)."""
        features = self._text_features(input_ids, attention_mask)
        return F.normalize(features, dim=-1) if normalize else features

    def image_transform(self, train: bool = False) -> Callable:
        """The wrapped library's own transform from a PIL image to a ``[3, S, S]`` tensor (its training augmentation
        when ``train``)."""
        return self.transforms[0] if train else self.transforms[1]

    def save_pretrained(self, directory: str | os.PathLike[str], tokenizer: Tokenizer | None = None) -> Path:
        """Write the wrapped model's tensors (its own names), ``spec`` and the tokenizer (``tokenizer`` or the
        model's own) to ``directory``; `unicl.load_model` rebuilds the model from them alone, bit for bit.

        Raises:
            TypeError: ``tokenizer`` is not a ``Tokenizer``.
        """
        return write_model_directory(
            directory, self.model.state_dict(), self.spec, tokenizer or self.tokenizer, key=ADAPTER_KEY
        )

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimiser groups: weight decay on matrices; none on norms, biases, the logit scale and bias, and the token,
        position and class embeddings."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            lowered = name.lower()
            exempt = parameter.dim() < 2 or any(word in lowered for word in ("embed", "position", "class_"))
            (no_decay if exempt else decay).append(parameter)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def check_overrides(name: str, model: nn.Module, overrides: dict[str, Any]) -> bool:
    """Check what an adapter model takes of `unicl.create_model`'s ``overrides`` and return whether gradient
    checkpointing is asked for.

    An adapter's configuration is its library's. It takes ``image={"grad_checkpointing": ...}`` and
    ``text={"grad_checkpointing": ...}``, and ``init_temperature`` with ``logit_bias`` (the training command's sigmoid
    start) for a model that has a logit bias, whose pretrained scale and bias it keeps.

    Raises:
        ValueError: any other override, or a logit bias asked of a model without one.
    """
    checkpointing = False
    for key, value in overrides.items():
        if key in ("image", "text") and isinstance(value, dict) and set(value) <= {"grad_checkpointing"}:
            checkpointing = checkpointing or bool(value.get("grad_checkpointing"))
        elif key in ("init_temperature", "logit_bias"):
            if getattr(model, "logit_bias", None) is None:
                raise ValueError(
                    f"{name} has no logit bias, which the sigmoid objective needs: train it with the softmax "
                    "objective, or use a SigLIP model"
                )
        else:
            raise ValueError(
                f"{name} takes no configuration override {key}={value!r}: its configuration is its library's "
                "(only image/text grad_checkpointing apply)"
            )
    return checkpointing


def describe(
    image_size: int,
    vocab_size: int,
    context_length: int,
    width: int,
    embed_dim: int,
    has_bias: bool,
    max_logit_scale: float,
) -> UniCLConfig:
    """The `unicl.UniCLConfig` that describes an adapter model to the library: the image side, the text vocabulary
    and context, the text width and the embedding width.

    ``max_logit_scale`` is `logit_scale_bound` of the pretrained weights, kept in the saved specification.
    """
    return UniCLConfig(
        image=ImageConfig(model_name="adapter", image_size=image_size),
        text=TextConfig(vocab_size=vocab_size, context_length=context_length, width=width, layers=0, heads=1),
        embed_dim=embed_dim,
        logit_bias=0.0 if has_bias else None,
        max_logit_scale=max_logit_scale,
    )


def logit_scale_bound(model: nn.Module, spec: dict[str, Any] | None = None) -> float:
    """The bound of an adapter's logit scale: the one its saved specification holds, else CLIP's 100 or the wrapped
    model's own scale ``exp(logit_scale)`` where that is larger (SigLIP trains its scale without a bound, to about
    110–120, and a bound below it would change the pretrained model's logits)."""
    if spec is not None and "max_logit_scale" in spec:
        return float(spec["max_logit_scale"])
    logit_scale = model.logit_scale
    if not isinstance(logit_scale, torch.Tensor):
        raise TypeError(f"the wrapped model's logit_scale must be a tensor; got {type(logit_scale).__name__}")
    return max(100.0, float(logit_scale.detach().float().exp()))
