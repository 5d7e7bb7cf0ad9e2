"""Data: image-label and image-text datasets, the unified batch, and the image transforms.

The names below are imported on first use (`unicl._exports`): the datasets and batches need no timm or model, which
only the transforms load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicl._exports import lazy_exports

#: The module each public name is defined in.
_PUBLIC_NAMES = {
    "PAIR_LABEL": "unicl.data.batches",
    "UnifiedCollate": "unicl.data.batches",
    "CaptionPairs": "unicl.data.datasets",
    "LabelledFolders": "unicl.data.datasets",
    "image_transform": "unicl.data.transforms",
}

if TYPE_CHECKING:
    from unicl.data.batches import PAIR_LABEL, UnifiedCollate
    from unicl.data.datasets import CaptionPairs, LabelledFolders
    from unicl.data.transforms import image_transform

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC_NAMES)

__all__ = ["PAIR_LABEL", "CaptionPairs", "LabelledFolders", "UnifiedCollate", "image_transform"]
