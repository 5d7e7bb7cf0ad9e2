"""Text: the tokenizer, class labels as prompts, and labels for captions.

The names below are imported on first use (`unicl._exports`), so `unicl.text.names` reads without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicl._exports import lazy_package

if TYPE_CHECKING:
    from unicl.text.captions import canonical_caption as canonical_caption
    from unicl.text.captions import caption_labels as caption_labels
    from unicl.text.prompts import LabelToPrompt as LabelToPrompt
    from unicl.text.prompts import class_prompts as class_prompts
    from unicl.text.prompts import get_templates as get_templates
    from unicl.text.prompts import imagenet_class_names as imagenet_class_names
    from unicl.text.tokenizer import Tokenizer as Tokenizer

__getattr__, __dir__, __all__ = lazy_package(
    __name__,
    {
        "unicl.text.captions": ["canonical_caption", "caption_labels"],
        "unicl.text.prompts": ["LabelToPrompt", "class_prompts", "get_templates", "imagenet_class_names"],
        "unicl.text.tokenizer": ["Tokenizer"],
    },
)
