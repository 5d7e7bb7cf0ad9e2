"""Building blocks of UniCL training runs: fault-tolerant checkpoints and gradient caching for large batches."""

from unicl.training.checkpoints import CheckpointDirectory, DamagedCheckpoint, UnusableCheckpoint, read_checkpoint
from unicl.training.gradient_cache import cached_backward

__all__ = ["CheckpointDirectory", "DamagedCheckpoint", "UnusableCheckpoint", "cached_backward", "read_checkpoint"]
