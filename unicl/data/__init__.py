"""Data: image-label and image-text datasets, the unified batch, and the image transforms.

The names below are imported on first use (`unicl._exports`): the datasets and batches need no timm or model, which
only the transforms load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicl._exports import lazy_package

if TYPE_CHECKING:
    from unicl.data.batches import PAIR_LABEL as PAIR_LABEL
    from unicl.data.batches import UnifiedCollate as UnifiedCollate
    from unicl.data.datasets import CaptionPairs as CaptionPairs
    from unicl.data.datasets import LabelledFolders as LabelledFolders
    from unicl.data.transforms import image_transform as image_transform

__getattr__, __dir__, __all__ = lazy_package(
    __name__,
    {
        "unicl.data.batches": ["PAIR_LABEL", "UnifiedCollate"],
        "unicl.data.datasets": ["CaptionPairs", "LabelledFolders"],
        "unicl.data.transforms": ["image_transform"],
    },
)
