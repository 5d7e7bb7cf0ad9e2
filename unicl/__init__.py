"""unicl: Unified Contrastive Learning for PyTorch.

The public names below are imported on first use (PEP 562), so ``import unicl`` and the commands' ``--help`` answer
without loading torch or timm. Each lives in one package (see the Design page); ``unicl.X`` is the same object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicl._exports import lazy_exports
from unicl._versions import check_supported_versions

__version__ = "0.1.0"

check_supported_versions()

#: The module each public name is defined in.
_PUBLIC_NAMES = {
    "UniCLLoss": "unicl.loss.module",
    "UniCLSigmoidLoss": "unicl.loss.module",
    "unicl_loss": "unicl.loss.functional",
    "unicl_sigmoid_loss": "unicl.loss.functional",
    "distributed_unicl_loss": "unicl.loss.distributed",
    "target_keys": "unicl.loss.targets",
    "caption_labels": "unicl.text.captions",
    "image_transform": "unicl.data.transforms",
    "UniCLModel": "unicl.models.model",
    "create_model": "unicl.models.presets",
    "list_models": "unicl.models.presets",
    "register_model": "unicl.models.presets",
    "list_pretrained": "unicl.models.pretrained",
    "create_model_and_transforms": "unicl.factory",
    "load_model": "unicl.models.serialization",
    "get_tokenizer": "unicl.models.tokenizers",
}
#: The packages, reachable as attributes (``unicl.models.ImageConfig``) after a plain ``import unicl``.
_PACKAGES = ("data", "evaluation", "loss", "models", "text", "training")

if TYPE_CHECKING:
    from unicl.data.transforms import image_transform
    from unicl.factory import create_model_and_transforms
    from unicl.loss.distributed import distributed_unicl_loss
    from unicl.loss.functional import unicl_loss, unicl_sigmoid_loss
    from unicl.loss.module import UniCLLoss, UniCLSigmoidLoss
    from unicl.loss.targets import target_keys
    from unicl.models.model import UniCLModel
    from unicl.models.presets import create_model, list_models, register_model
    from unicl.models.pretrained import list_pretrained
    from unicl.models.serialization import load_model
    from unicl.models.tokenizers import get_tokenizer
    from unicl.text.captions import caption_labels


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC_NAMES, _PACKAGES)

__all__ = [
    "UniCLLoss",
    "UniCLModel",
    "UniCLSigmoidLoss",
    "__version__",
    "caption_labels",
    "create_model",
    "create_model_and_transforms",
    "distributed_unicl_loss",
    "get_tokenizer",
    "image_transform",
    "list_models",
    "list_pretrained",
    "load_model",
    "register_model",
    "target_keys",
    "unicl_loss",
    "unicl_sigmoid_loss",
]
