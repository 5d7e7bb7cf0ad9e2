"""The UniCL loss and its engines.

Layers, top down: the functional and module forms (`functional`, `module`) and distributed training
(`distributed`); the choice of backend (`backends`); the engines (`dense`, `chunked`, the Triton `kernels`) behind
one autograd function (`autograd`); the pieces the engines share (`engine`, `targets`, `normalize`, `row_dots`,
`matmul`, `dtypes`). Each option of the loss is checked once, at the public entry (`unicl_loss`, `UniCLLoss`,
`distributed_unicl_loss`, `similarity_terms`, `row_terms`); the layers below trust their callers.
"""

from unicl.loss.backends import BACKENDS, row_terms, similarity_terms
from unicl.loss.distributed import distributed_unicl_loss
from unicl.loss.functional import DEFAULT_LOGIT_SCALE, REDUCTIONS, unicl_loss
from unicl.loss.module import UniCLLoss
from unicl.loss.normalize import normalize_features
from unicl.loss.targets import target_keys

__all__ = [
    "BACKENDS",
    "DEFAULT_LOGIT_SCALE",
    "REDUCTIONS",
    "UniCLLoss",
    "distributed_unicl_loss",
    "normalize_features",
    "row_terms",
    "similarity_terms",
    "target_keys",
    "unicl_loss",
]
