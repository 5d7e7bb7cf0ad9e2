"""Encoders, projection heads, the UniCL model, the preset registry, saved models and the released checkpoints."""

from unicl.models.heads import projection_head
from unicl.models.image import ImageConfig, ImageEncoder
from unicl.models.model import UniCLConfig, UniCLModel
from unicl.models.presets import (
    Preset,
    create_model,
    get_config,
    list_models,
    preset_tokenizer,
    register_model,
    unregister_model,
)
from unicl.models.pretrained import PretrainedCheckpoint, checkpoint_dir, get_pretrained, list_pretrained
from unicl.models.serialization import load_model, save_pretrained
from unicl.models.text import TextConfig, TextTransformer
from unicl.models.tokenizers import check_tokenizer_fits, get_tokenizer, model_tokenizer

__all__ = [
    "ImageConfig",
    "ImageEncoder",
    "Preset",
    "PretrainedCheckpoint",
    "TextConfig",
    "TextTransformer",
    "UniCLConfig",
    "UniCLModel",
    "check_tokenizer_fits",
    "checkpoint_dir",
    "create_model",
    "get_config",
    "get_pretrained",
    "get_tokenizer",
    "list_models",
    "list_pretrained",
    "load_model",
    "model_tokenizer",
    "preset_tokenizer",
    "projection_head",
    "register_model",
    "save_pretrained",
    "unregister_model",
]
