"""Data: image-label and image-text datasets, the unified batch, and the image transforms."""

from unicl.data.batches import PAIR_LABEL, UnifiedCollate
from unicl.data.datasets import CaptionPairs, LabelledFolders
from unicl.data.transforms import image_transform

__all__ = ["PAIR_LABEL", "CaptionPairs", "LabelledFolders", "UnifiedCollate", "image_transform"]
