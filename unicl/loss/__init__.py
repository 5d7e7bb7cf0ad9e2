"""The UniCL losses (the softmax and the sigmoid objective) and their engines.

Layers, top down: the functional and module forms (`functional`, `module`) and distributed training
(`distributed`); the choice of backend (`backends`); the engines (`dense`, `chunked`, the Triton `kernels`) behind
one autograd function (`autograd`), for each objective of `objectives`; the pieces the engines share (`engine`,
`targets`, `normalize`, `row_dots`, `matmul`, `dtypes`). Each option of the loss is checked once, at the public
entry (`unicl_loss`, `unicl_sigmoid_loss`, `UniCLLoss`, `UniCLSigmoidLoss`, `distributed_unicl_loss`,
`similarity_terms`, `row_terms`); the layers below trust their callers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicl._exports import lazy_exports

#: The module each public name is defined in (imported on first use, so `unicl.loss.names` reads without torch).
_PUBLIC_NAMES = {
    "BACKENDS": "unicl.loss.names",
    "DEFAULT_LOGIT_SCALE": "unicl.loss.functional",
    "REDUCTIONS": "unicl.loss.functional",
    "OBJECTIVES": "unicl.loss.names",
    "SIGMOID_LOGIT_BIAS": "unicl.loss.functional",
    "SIGMOID_LOGIT_SCALE": "unicl.loss.functional",
    "UniCLLoss": "unicl.loss.module",
    "UniCLSigmoidLoss": "unicl.loss.module",
    "distributed_unicl_loss": "unicl.loss.distributed",
    "normalize_features": "unicl.loss.normalize",
    "row_terms": "unicl.loss.backends",
    "similarity_terms": "unicl.loss.backends",
    "target_keys": "unicl.loss.targets",
    "unicl_loss": "unicl.loss.functional",
    "unicl_sigmoid_loss": "unicl.loss.functional",
}

if TYPE_CHECKING:
    from unicl.loss.backends import row_terms, similarity_terms
    from unicl.loss.distributed import distributed_unicl_loss
    from unicl.loss.functional import (
        DEFAULT_LOGIT_SCALE,
        REDUCTIONS,
        SIGMOID_LOGIT_BIAS,
        SIGMOID_LOGIT_SCALE,
        unicl_loss,
        unicl_sigmoid_loss,
    )
    from unicl.loss.module import UniCLLoss, UniCLSigmoidLoss
    from unicl.loss.names import BACKENDS, OBJECTIVES
    from unicl.loss.normalize import normalize_features
    from unicl.loss.targets import target_keys

__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC_NAMES)

__all__ = [
    "BACKENDS",
    "DEFAULT_LOGIT_SCALE",
    "OBJECTIVES",
    "REDUCTIONS",
    "SIGMOID_LOGIT_BIAS",
    "SIGMOID_LOGIT_SCALE",
    "UniCLLoss",
    "UniCLSigmoidLoss",
    "distributed_unicl_loss",
    "normalize_features",
    "row_terms",
    "similarity_terms",
    "target_keys",
    "unicl_loss",
    "unicl_sigmoid_loss",
]
