"""unicl: Unified Contrastive Learning for PyTorch."""

from unicl.loss import UniCLLoss, unicl_loss
from unicl.targets import target_keys

__version__ = "0.1.0"

__all__ = ["UniCLLoss", "__version__", "target_keys", "unicl_loss"]
