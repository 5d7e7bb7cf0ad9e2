"""Encoders, projection heads, the UniCL model and its presets."""

from unicl.models.heads import projection_head
from unicl.models.image import ImageConfig, ImageEncoder
from unicl.models.model import UniCLConfig, UniCLModel
from unicl.models.presets import create_model, get_config, list_models, preset_tokenizer
from unicl.models.serialization import load_model, save_pretrained
from unicl.models.text import TextConfig, TextTransformer
from unicl.models.tokenizers import check_tokenizer_fits, get_tokenizer, model_tokenizer

__all__ = [
    "ImageConfig",
    "ImageEncoder",
    "TextConfig",
    "TextTransformer",
    "UniCLConfig",
    "UniCLModel",
    "check_tokenizer_fits",
    "create_model",
    "get_config",
    "get_tokenizer",
    "list_models",
    "load_model",
    "model_tokenizer",
    "preset_tokenizer",
    "projection_head",
    "save_pretrained",
]
