"""unicl: Unified Contrastive Learning for PyTorch.

The public names below are imported on first use (PEP 562), so ``import unicl`` and the commands' ``--help`` answer
without loading torch or timm. Each lives in one package (see the Design page); ``unicl.X`` is the same object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicl._exports import lazy_package
from unicl._versions import check_supported_versions

__version__ = "0.1.0"

check_supported_versions()

#: The packages, reachable as attributes (``unicl.models.ImageConfig``) after a plain ``import unicl``.
_PACKAGES = ("data", "evaluation", "loss", "models", "text", "training")

if TYPE_CHECKING:
    from unicl.data.transforms import image_transform as image_transform
    from unicl.factory import create_model_and_transforms as create_model_and_transforms
    from unicl.loss.distributed import distributed_unicl_loss as distributed_unicl_loss
    from unicl.loss.functional import unicl_loss as unicl_loss
    from unicl.loss.functional import unicl_sigmoid_loss as unicl_sigmoid_loss
    from unicl.loss.module import UniCLLoss as UniCLLoss
    from unicl.loss.module import UniCLSigmoidLoss as UniCLSigmoidLoss
    from unicl.loss.targets import target_keys as target_keys
    from unicl.models.model import UniCLModel as UniCLModel
    from unicl.models.presets import create_model as create_model
    from unicl.models.presets import list_models as list_models
    from unicl.models.presets import register_model as register_model
    from unicl.models.pretrained import list_pretrained as list_pretrained
    from unicl.models.serialization import load_model as load_model
    from unicl.models.tokenizers import get_tokenizer as get_tokenizer
    from unicl.text.captions import caption_labels as caption_labels


__getattr__, __dir__, __all__ = lazy_package(
    __name__,
    {
        "unicl.data.transforms": ["image_transform"],
        "unicl.factory": ["create_model_and_transforms"],
        "unicl.loss.distributed": ["distributed_unicl_loss"],
        "unicl.loss.functional": ["unicl_loss", "unicl_sigmoid_loss"],
        "unicl.loss.module": ["UniCLLoss", "UniCLSigmoidLoss"],
        "unicl.loss.targets": ["target_keys"],
        "unicl.models.model": ["UniCLModel"],
        "unicl.models.presets": ["create_model", "list_models", "register_model"],
        "unicl.models.pretrained": ["list_pretrained"],
        "unicl.models.serialization": ["load_model"],
        "unicl.models.tokenizers": ["get_tokenizer"],
        "unicl.text.captions": ["caption_labels"],
    },
    _PACKAGES,
)
__all__ += ["__version__"]
