"""The loss's backend names, in a module that imports nothing, so a command's parser offers them as choices
without loading torch (`unicl.loss.backends` implements them)."""

#: Every ``backend=`` the loss takes (see `unicl.loss.backends`).
BACKENDS: tuple[str, ...] = ("auto", "dense", "chunked", "triton", "triton_rowwise")
#: The backends that run Triton kernels.
TRITON_BACKENDS: tuple[str, ...] = ("triton", "triton_rowwise")
#: Every objective the loss computes (see `unicl.loss.objectives`): UniCL's softmax and SigLIP's sigmoid.
OBJECTIVES: tuple[str, ...] = ("softmax", "sigmoid")
