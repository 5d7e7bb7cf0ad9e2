"""Text: the tokenizer, class labels as prompts, and labels for captions."""

from unicl.text.captions import canonical_caption, caption_labels
from unicl.text.prompts import LabelToPrompt, class_prompts, get_templates, imagenet_class_names
from unicl.text.tokenizer import Tokenizer

__all__ = [
    "LabelToPrompt",
    "Tokenizer",
    "canonical_caption",
    "caption_labels",
    "class_prompts",
    "get_templates",
    "imagenet_class_names",
]
