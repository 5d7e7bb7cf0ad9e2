"""The objectives the loss's engines compute: one module each, behind the contract of `unicl.loss.objectives.base`.

* `unicl.loss.objectives.softmax`: UniCL's bidirectional softmax (InfoNCE) objective, ``objective="softmax"``.
* `unicl.loss.objectives.sigmoid`: SigLIP's pairwise sigmoid objective with label-aware positives.

Adding an objective: a module here with its `Objective` subclass, its entry in `OBJECTIVES` (and its name in
`unicl.loss.names.OBJECTIVES`), the Triton kernels' branch for its ``kernel_code``, and its tests.
"""

from __future__ import annotations

from unicl.loss.objectives.base import Counted, Objective, PositiveSums, Statistics, Terms, Weights
from unicl.loss.objectives.sigmoid import SIGMOID
from unicl.loss.objectives.softmax import SOFTMAX

#: Every objective by name.
OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (SOFTMAX, SIGMOID)}

__all__ = [
    "OBJECTIVES",
    "SIGMOID",
    "SOFTMAX",
    "Counted",
    "Objective",
    "PositiveSums",
    "Statistics",
    "Terms",
    "Weights",
]
