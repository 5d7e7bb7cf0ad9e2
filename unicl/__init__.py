"""unicl: Unified Contrastive Learning for PyTorch."""

from unicl.captions import caption_labels
from unicl.distributed import distributed_unicl_loss
from unicl.loss import unicl_loss
from unicl.models import UniCLModel, create_model, get_tokenizer, list_models, load_model
from unicl.nn import UniCLLoss
from unicl.targets import target_keys
from unicl.transforms import image_transform

__version__ = "0.1.0"

__all__ = [
    "UniCLLoss",
    "UniCLModel",
    "__version__",
    "caption_labels",
    "create_model",
    "distributed_unicl_loss",
    "get_tokenizer",
    "image_transform",
    "list_models",
    "load_model",
    "target_keys",
    "unicl_loss",
]
