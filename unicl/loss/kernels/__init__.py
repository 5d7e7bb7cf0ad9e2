"""Fused Triton kernels of the UniCL loss, imported only when a Triton backend runs.

* `unicl.loss.kernels.availability`: whether they can run here (no Triton import).
* `unicl.loss.kernels.tiles`: what both schedules share (the similarity tile, the factor vectors, the
  softmax-gradient arguments, the row log-sum-exp kernel).
* `unicl.loss.kernels.one_pass`: the one-pass schedule (``backend="triton"``).
* `unicl.loss.kernels.two_pass`: the two-pass schedule (``backend="triton_rowwise"``).
* `unicl.loss.kernels.plan`, `unicl.loss.kernels.tuning`: launch plans and tile configurations.
* `unicl.loss.kernels.compile_report`: what the compiler makes of every kernel, for a GPU that need not be present.
"""

from unicl._exports import lazy_exports

# No public names of its own: the modules above are reachable as attributes once ``unicl`` is imported.
__getattr__, __dir__ = lazy_exports(__name__, {})
