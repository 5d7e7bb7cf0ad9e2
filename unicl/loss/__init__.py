"""The UniCL loss and its engines.

Layers, top down: the functional and module forms (`functional`, `module`) and distributed training
(`distributed`); the choice of backend (`backends`); the engines (`dense`, `chunked`, the Triton `kernels`) behind
one autograd function (`autograd`); the pieces every engine shares (`engine`, `targets`, `normalize`, `row_dots`,
`dtypes`).
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
