"""open_clip's models as unicl models: ``open_clip:ARCH`` with a local checkpoint file, open_clip's transforms and
its tokenizer.

``create_open_clip("ViT-B-32", pretrained="weights.pt")`` builds open_clip's architecture ``ViT-B-32`` (any name of
``open_clip.list_models()``, including one added with ``open_clip.add_model_config``) and loads the file with
open_clip's own loader (``open_clip.load_checkpoint``: its checkpoints, OpenAI's, DDP-prefixed ones). Nothing is
downloaded: ``pretrained`` is a file on this machine, never one of open_clip's hub tags; without it the model keeps
its random initialisation. The tokenizer is open_clip's ``SimpleTokenizer`` (CLIP's BPE, the same ids), the
transforms are open_clip's ``image_transform_v2`` of the model's preprocessing configuration.

Architectures whose tokenizer or text tower open_clip fetches from the Hugging Face hub (``hf_tokenizer_name``,
``hf_model_name``, the SigLIP families) are refused with one line.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from unicl._checks import first_line
from unicl.models.adapters.base import (
    AdapterModel,
    check_overrides,
    describe,
    import_optional,
    logit_scale_bound,
)
from unicl.text.tokenizer import Tokenizer

#: The prefix of open_clip model names: ``open_clip:ViT-B-32``.
PREFIX = "open_clip:"
#: The extra that installs open_clip.
EXTRA = "open_clip"
#: open_clip's configuration file, written beside unicl's so that ``open_clip.create_model("local-dir:DIR")`` reads
#: the architecture and preprocessing of a saved directory too.
OPEN_CLIP_CONFIG = "open_clip_config.json"


class OpenCLIPAdapter(AdapterModel):
    """An open_clip ``CLIP`` or ``CustomTextCLIP`` as a `unicl.UniCLModel` (see `unicl.models.adapters.base`).

    Images and texts go through open_clip's ``encode_image`` and ``encode_text`` (which reads no mask: its text
    tower is causal and pools at the end token).
    """

    kind = "open_clip"

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)  # type: ignore[operator]

    def _text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return self.model.encode_text(input_ids)  # type: ignore[operator]

    def image_encoder(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # features, not a tower
        """``[B, 3, S, S]`` images to the ViT's pooled ``[B, width]`` features before its projection (what CLIP's
        linear probes fit; the ``backbone`` features of `unicl.evaluation.features`).

        Raises:
            ValueError: an image tower other than open_clip's ``VisionTransformer`` (a timm or ResNet tower).
        """
        visual: Any = self.model.visual
        if not all(hasattr(visual, part) for part in ("_embeds", "transformer", "_pool")):
            raise ValueError(
                f"open_clip:{self.spec['arch']}'s image tower ({type(visual).__name__}) gives no features before its "
                "projection here: use the projected features"
            )
        # VisionTransformer.forward without its last step, the projection (open_clip's own parts, in its order).
        return visual._pool(visual.transformer(visual._embeds(images)))[0]

    def save_pretrained(self, directory: str | os.PathLike[str], tokenizer: Tokenizer | None = None) -> Path:
        """`AdapterModel.save_pretrained`, and open_clip's ``open_clip_config.json`` beside it: the directory is also
        ``open_clip.create_model("local-dir:DIR")``'s, which `unicl.load_model` uses to rebuild the model."""
        target = super().save_pretrained(directory, tokenizer)
        payload = {"model_cfg": self.spec["model_cfg"], "preprocess_cfg": self.spec["preprocess_cfg"]}
        (target / OPEN_CLIP_CONFIG).write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        return target


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without open_clip's warning that no weights were loaded: the adapter loads them itself, next."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _open_clip() -> Any:
    return import_optional("open_clip", EXTRA)


def model_config(arch: str) -> dict[str, Any]:
    """open_clip's configuration of architecture ``arch``, checked to need nothing from the hub.

    Raises:
        ImportError: open_clip is not installed.
        ValueError: an unknown architecture (some known ones are named) or one whose tokenizer or text tower comes
            from the Hugging Face hub.
    """
    open_clip = _open_clip()
    if arch not in open_clip.list_models():
        known = open_clip.list_models()
        raise ValueError(
            f"unknown open_clip architecture {arch!r}; open_clip knows {len(known)}, e.g. "
            f"{', '.join([name for name in known if name.startswith('ViT-B') and 'SigLIP' not in name][:6])} "
            "(open_clip.list_models())"
        )
    config = open_clip.get_model_config(arch)
    text = config.get("text_cfg", {})
    if "hf_tokenizer_name" in text or "hf_model_name" in text or "siglip" in arch.lower():
        raise ValueError(
            f"open_clip:{arch} reads a tokenizer or text tower from the Hugging Face hub, which unicl does not "
            "download; use an architecture with CLIP's tokenizer, or the model's transformers directory (hf:DIR)"
        )
    if text.get("tokenizer_kwargs", {}).get("clean", "lower") != "lower" or text.get("tokenizer_kwargs", {}).get(
        "reduction_mask"
    ):
        raise ValueError(f"open_clip:{arch}'s tokenizer settings {text['tokenizer_kwargs']} are not CLIP's")
    return config


def open_clip_tokenizer(arch: str, context_length: int | None = None) -> Tokenizer:
    """open_clip's tokenizer of ``arch`` as a unicl ``Tokenizer``: CLIP's BPE (``Tokenizer.clip``, the ids of
    open_clip's ``SimpleTokenizer``) with the architecture's context length.

    Raises:
        ImportError: open_clip is not installed.
        ValueError: see `model_config`.
    """
    config = model_config(arch)
    return Tokenizer.clip(context_length or config.get("text_cfg", {}).get("context_length", 77))


def create_open_clip(arch: str, pretrained: str | os.PathLike[str] | None = None, **overrides: Any) -> OpenCLIPAdapter:
    """open_clip's architecture ``arch`` with the weights of the local file ``pretrained`` (random weights without).

    Args:
        arch: an open_clip architecture (``"ViT-B-32"``).
        pretrained: a checkpoint file open_clip reads (``.pt``, ``.pth``, ``.bin``, ``.safetensors``).
        **overrides: see `unicl.models.adapters.base.check_overrides`.

    Raises:
        ImportError: open_clip is not installed.
        FileNotFoundError: no file at ``pretrained``.
        ValueError: see `model_config`; a file open_clip cannot load into the architecture; an override.
    """
    config = model_config(arch)
    if pretrained is not None and not Path(pretrained).is_file():
        raise FileNotFoundError(
            f"pretrained={str(pretrained)!r} is not a file: open_clip:{arch} takes a local checkpoint file "
            "(unicl downloads nothing, and open_clip's hub tags are not read)"
        )
    open_clip = _open_clip()
    with _quiet():
        model = open_clip.create_model(arch, pretrained=None)
    if pretrained is not None:
        try:
            open_clip.load_checkpoint(model, str(pretrained), strict=True)
        except (RuntimeError, KeyError, ValueError, OSError) as error:
            raise ValueError(
                f"pretrained={str(pretrained)!r} does not fit open_clip:{arch}: {first_line(error)}"
            ) from None
    preprocess = dict(model.visual.preprocess_cfg)
    return _adapter(arch, model, config, preprocess, overrides)


def load_open_clip(directory: Path, spec: dict[str, Any]) -> OpenCLIPAdapter:
    """The model of a saved directory, built from its stored configuration (its weights are loaded by the caller).

    Raises:
        ImportError: open_clip is not installed.
        ValueError: a stored specification that is not one.
    """
    open_clip = _open_clip()
    try:
        arch, config, preprocess = spec["arch"], spec["model_cfg"], spec["preprocess_cfg"]
    except (KeyError, TypeError):
        raise ValueError(f"{directory}: the open_clip specification lacks arch, model_cfg or preprocess_cfg") from None
    with _quiet():
        model = open_clip.create_model(f"local-dir:{directory}", load_weights=False)
    return _adapter(arch, model, config, preprocess, {}, saved=spec)


def _adapter(
    arch: str,
    model: torch.nn.Module,
    config: dict[str, Any],
    preprocess: dict[str, Any],
    overrides: dict[str, Any],
    saved: dict[str, Any] | None = None,
) -> OpenCLIPAdapter:
    name = PREFIX + arch
    if check_overrides(name, model, overrides):
        model.set_grad_checkpointing(True)  # type: ignore[operator]
    size = preprocess["size"]
    # JSON stores a (height, width) size as a list.
    transform = import_optional("open_clip.transform", EXTRA)
    cfg = transform.PreprocessCfg(**{**preprocess, "size": size if isinstance(size, int) else tuple(size)})
    transforms = (transform.image_transform_v2(cfg, is_train=True), transform.image_transform_v2(cfg, is_train=False))
    text = config.get("text_cfg", {})
    context_length = text.get("context_length", 77)
    described = describe(
        image_size=size if isinstance(size, int) else int(size[0]),
        vocab_size=text.get("vocab_size", 49408),
        context_length=context_length,
        width=text.get("width", 512),
        embed_dim=config["embed_dim"],
        has_bias=getattr(model, "logit_bias", None) is not None,
        max_logit_scale=(bound := logit_scale_bound(model, saved)),
    )
    spec = {
        "kind": "open_clip", "arch": arch, "model_cfg": copy.deepcopy(config), "preprocess_cfg": preprocess,
        "max_logit_scale": bound,
    }  # fmt: skip
    return OpenCLIPAdapter(model, described, spec, lambda: Tokenizer.clip(context_length), transforms)
