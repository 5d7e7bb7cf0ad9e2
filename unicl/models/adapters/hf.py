"""transformers' CLIP and SigLIP models as unicl models: ``hf:DIR``, a local ``CLIPModel`` or ``SiglipModel``
directory with its image processor and tokenizer.

``create_hf("path/to/clip-vit-base-patch32")`` reads the directory ``save_pretrained`` of transformers wrote (or a
downloaded hub snapshot): the model (``AutoModel``, in float32), its image processor (``AutoImageProcessor``,
called on one PIL image as a torchvision-style transform; the same for training, as transformers' processors have no
augmentation) and its tokenizer (``AutoTokenizer``). Everything is read with ``local_files_only=True``: nothing is
downloaded. The tokenizer must have a ``tokenizers`` backend (a ``tokenizer.json``: CLIP's, SigLIP 2's Gemma
tokenizer, any fast tokenizer); its ids are transformers' for ``padding="max_length"`` with truncation at the text
tower's context (SigLIP's pads to that length, as it was trained).

SigLIP's text tower reads no attention mask (it pools the last position; its processors return none), so its
``encode_text`` ignores one; CLIP's reads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as HFTokenizer

from unicl._checks import first_line
from unicl.models.adapters.base import (
    AdapterModel,
    check_overrides,
    describe,
    import_optional,
    logit_scale_bound,
)
from unicl.text.tokenizer import Tokenizer

#: The prefix of transformers model names: ``hf:path/to/dir``.
PREFIX = "hf:"
#: The extra that installs transformers.
EXTRA = "hf"
#: The model types of ``config.json`` this adapter takes.
MODEL_TYPES = ("clip", "siglip")


class HFAdapter(AdapterModel):
    """A transformers ``CLIPModel`` or ``SiglipModel`` as a `unicl.UniCLModel` (see `unicl.models.adapters.base`):
    its ``get_image_features`` and ``get_text_features`` (their ``pooler_output``)."""

    kind = "hf"

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=images))  # type: ignore[operator]

    def image_encoder(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]  # features, not a tower
        """``[B, 3, S, S]`` images to the vision tower's ``pooler_output`` (``[B, width]``): CLIP's before its visual
        projection (what CLIP's linear probes fit), SigLIP's attention-pooling head's (its image embedding, as SigLIP
        has no projection). The ``backbone`` features of `unicl.evaluation.features`."""
        return self.model.vision_model(pixel_values=images).pooler_output  # type: ignore[operator]

    def _text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.spec["config"]["model_type"] == "siglip":
            attention_mask = None
        outputs = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)  # type: ignore[operator]
        return _pooled(outputs)


def _pooled(outputs: Any) -> torch.Tensor:
    """The projected features of ``get_image_features``/``get_text_features``: transformers 5 returns them as the
    output's ``pooler_output``, transformers 4 as a tensor."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs.pooler_output


class ProcessorTransform:
    """A transformers image processor as a transform: PIL image to its ``[3, S, S]`` float32 ``pixel_values``.

    Args:
        processor: the image processor.
    """

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0].float()

    def __repr__(self) -> str:
        return f"ProcessorTransform({type(self.processor).__name__})"


def _transformers() -> Any:
    return import_optional("transformers", EXTRA)


def _directory(directory: str | os.PathLike[str]) -> Path:
    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"hf:{directory}: no such directory (a transformers CLIPModel or SiglipModel folder)")
    return path


def hf_tokenizer(directory: str | os.PathLike[str], context_length: int | None = None) -> Tokenizer:
    """The tokenizer of a transformers model directory as a unicl ``Tokenizer`` with transformers' ids.

    The start and end tokens are the ones its tokenizer adds around a text (SigLIP's adds only an end token), the
    padding id is its ``pad_token_id``, the context length the text tower's ``max_position_embeddings``.

    Raises:
        ImportError: transformers is not installed.
        FileNotFoundError: no such directory.
        ValueError: a tokenizer without a ``tokenizers`` backend, or one that adds more than a start and an end token.
    """
    transformers = _transformers()
    path = _directory(directory)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        loaded = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, ImportError) as error:
        raise ValueError(f"hf:{directory}: its tokenizer cannot be read: {first_line(error)}") from None
    return _as_tokenizer(loaded, context_length or config.text_config.max_position_embeddings, f"hf:{directory}")


def _as_tokenizer(loaded: Any, context_length: int, name: str) -> Tokenizer:
    backend = getattr(loaded, "backend_tokenizer", None)
    if not isinstance(backend, HFTokenizer):
        raise ValueError(
            f"{name}: its tokenizer ({type(loaded).__name__}) has no tokenizers backend (tokenizer.json); save a fast "
            "tokenizer in the directory"
        )
    # Where the special tokens go: the ids around a text with them against the text's own ids.
    plain = loaded("a", add_special_tokens=False)["input_ids"]
    full = loaded("a")["input_ids"]
    at = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
    if at is None or at > 1 or len(full) - at - len(plain) != 1:
        raise ValueError(f"{name}: its tokenizer adds {full} around {plain}; unicl reads [start] text end rows")
    start = loaded.convert_ids_to_tokens(full[0]) if at == 1 else None
    end = loaded.convert_ids_to_tokens(full[-1])
    pad_id = loaded.pad_token_id if loaded.pad_token_id is not None else full[-1]
    # A copy without the padding and truncation transformers sets on its backend per call.
    copied = HFTokenizer.from_str(backend.to_str())
    copied.no_padding()
    copied.no_truncation()
    return Tokenizer(copied, context_length, start_token=start, end_token=end, pad_id=pad_id)


def create_hf(directory: str | os.PathLike[str], **overrides: Any) -> HFAdapter:
    """The transformers ``CLIPModel`` or ``SiglipModel`` saved in ``directory``, with its processor and tokenizer.

    Args:
        directory: a transformers model directory (``config.json``, weights, ``preprocessor_config.json``,
            tokenizer files).
        **overrides: see `unicl.models.adapters.base.check_overrides`.

    Raises:
        ImportError: transformers is not installed.
        FileNotFoundError: no such directory.
        ValueError: a model type other than CLIP or SigLIP, files transformers cannot read, an override.
    """
    transformers = _transformers()
    path = _directory(directory)
    name = f"hf:{directory}"
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        if config.model_type not in MODEL_TYPES:
            raise ValueError(f"{name} is a {config.model_type!r} model; the hf adapter takes {', '.join(MODEL_TYPES)}")
        # Trained in float32 whatever the file's dtype (the optimiser keeps float32 weights; autocast lowers them).
        model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True).float()
        processor = transformers.AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    except OSError as error:
        raise ValueError(f"{name}: {first_line(error)}") from None
    tokenizer = hf_tokenizer(path)
    return _adapter(name, model, processor, tokenizer, overrides)


def load_hf(directory: Path, spec: dict[str, Any], tokenizer: Tokenizer) -> HFAdapter:
    """The model of a saved directory, built from its stored configuration (its weights are loaded by the caller).

    Raises:
        ImportError: transformers is not installed.
        ValueError: a stored specification that is not one.
    """
    transformers = _transformers()
    try:
        fields = dict(spec["config"])
        model_type = fields.pop("model_type")
        processor_fields = dict(spec["image_processor"])
        processor_class = getattr(transformers, processor_fields.pop("image_processor_type"))
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"{directory}: the hf specification lacks its config or image processor") from None
    config = transformers.AutoConfig.for_model(model_type, **fields)
    model = transformers.AutoModel.from_config(config).float()
    processor = processor_class.from_dict(processor_fields)
    return _adapter(f"hf:{directory}", model, processor, tokenizer, {}, saved=spec)


def _adapter(
    name: str,
    model: Any,
    processor: Any,
    tokenizer: Tokenizer,
    overrides: dict[str, Any],
    saved: dict[str, Any] | None = None,
) -> HFAdapter:
    if check_overrides(name, model, overrides):
        model.gradient_checkpointing_enable()
    config = model.config
    described = describe(
        image_size=config.vision_config.image_size,
        vocab_size=config.text_config.vocab_size,
        context_length=tokenizer.context_length,
        width=config.text_config.hidden_size,
        embed_dim=getattr(config, "projection_dim", None) or config.text_config.hidden_size,
        has_bias=getattr(model, "logit_bias", None) is not None,
        max_logit_scale=(bound := logit_scale_bound(model, saved)),
    )
    spec = {
        "kind": "hf", "config": config.to_dict(), "image_processor": processor.to_dict(), "max_logit_scale": bound,
    }  # fmt: skip
    transform = ProcessorTransform(processor)
    return HFAdapter(model, described, spec, tokenizer, (transform, transform))
