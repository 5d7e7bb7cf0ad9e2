"""unicl: Unified Contrastive Learning for PyTorch."""

from unicl.captions import caption_labels
from unicl.distributed import distributed_unicl_loss
from unicl.loss import unicl_loss
from unicl.nn import UniCLLoss
from unicl.targets import target_keys

__version__ = "0.1.0"

__all__ = ["UniCLLoss", "__version__", "caption_labels", "distributed_unicl_loss", "target_keys", "unicl_loss"]
