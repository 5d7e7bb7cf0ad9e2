"""Building blocks of UniCL training runs: fault-tolerant checkpoints."""

from unicl.training.checkpoints import CheckpointDirectory

__all__ = ["CheckpointDirectory"]
