"""Text: the tokenizer, class labels as prompts, and labels for captions.

The names below are imported on first use (`unicl._exports`), so `unicl.text.names` reads without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicl._exports import lazy_exports

#: The module each public name is defined in.
_PUBLIC_NAMES = {
    "LabelToPrompt": "unicl.text.prompts",
    "Tokenizer": "unicl.text.tokenizer",
    "canonical_caption": "unicl.text.captions",
    "caption_labels": "unicl.text.captions",
    "class_prompts": "unicl.text.prompts",
    "get_templates": "unicl.text.prompts",
    "imagenet_class_names": "unicl.text.prompts",
}

if TYPE_CHECKING:
    from unicl.text.captions import canonical_caption, caption_labels
    from unicl.text.prompts import LabelToPrompt, class_prompts, get_templates, imagenet_class_names
    from unicl.text.tokenizer import Tokenizer

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC_NAMES)

__all__ = [
    "LabelToPrompt",
    "Tokenizer",
    "canonical_caption",
    "caption_labels",
    "class_prompts",
    "get_templates",
    "imagenet_class_names",
]
