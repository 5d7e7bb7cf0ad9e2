"""Building blocks of UniCL training runs: fault-tolerant checkpoints and gradient caching for large batches."""

from unicl.training.checkpoints import CheckpointDirectory
from unicl.training.gradient_cache import cached_backward

__all__ = ["CheckpointDirectory", "cached_backward"]
