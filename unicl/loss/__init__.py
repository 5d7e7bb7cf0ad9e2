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

from unicl._exports import lazy_package

if TYPE_CHECKING:
    from unicl.loss.backends import row_terms as row_terms
    from unicl.loss.backends import similarity_terms as similarity_terms
    from unicl.loss.distributed import distributed_unicl_loss as distributed_unicl_loss
    from unicl.loss.functional import DEFAULT_LOGIT_SCALE as DEFAULT_LOGIT_SCALE
    from unicl.loss.functional import REDUCTIONS as REDUCTIONS
    from unicl.loss.functional import SIGMOID_LOGIT_BIAS as SIGMOID_LOGIT_BIAS
    from unicl.loss.functional import SIGMOID_LOGIT_SCALE as SIGMOID_LOGIT_SCALE
    from unicl.loss.functional import unicl_loss as unicl_loss
    from unicl.loss.functional import unicl_sigmoid_loss as unicl_sigmoid_loss
    from unicl.loss.module import UniCLLoss as UniCLLoss
    from unicl.loss.module import UniCLSigmoidLoss as UniCLSigmoidLoss
    from unicl.loss.names import BACKENDS as BACKENDS
    from unicl.loss.names import OBJECTIVES as OBJECTIVES
    from unicl.loss.normalize import normalize_features as normalize_features
    from unicl.loss.targets import target_keys as target_keys

# Imported on first use, so `unicl.loss.names` reads without torch.
__getattr__, __dir__, __all__ = lazy_package(
    __name__,
    {
        "unicl.loss.backends": ["row_terms", "similarity_terms"],
        "unicl.loss.distributed": ["distributed_unicl_loss"],
        "unicl.loss.functional": [
            "DEFAULT_LOGIT_SCALE",
            "REDUCTIONS",
            "SIGMOID_LOGIT_BIAS",
            "SIGMOID_LOGIT_SCALE",
            "unicl_loss",
            "unicl_sigmoid_loss",
        ],
        "unicl.loss.module": ["UniCLLoss", "UniCLSigmoidLoss"],
        "unicl.loss.names": ["BACKENDS", "OBJECTIVES"],
        "unicl.loss.normalize": ["normalize_features"],
        "unicl.loss.targets": ["target_keys"],
    },
)
