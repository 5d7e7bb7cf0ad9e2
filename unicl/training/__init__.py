"""The training library: the run (`train`, `Trainer`) and its parts: fault-tolerant checkpoints, gradient caching
for large batches, step-addressed sampling, the mixing of sources, schedules, logs and the process group.

The names below are imported on first use (PEP 562), so `unicl.training.config` and `unicl.training.options`
(torch-free) can be imported by the training command before it parses its arguments without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicl._exports import lazy_exports

#: The module each public name is defined in.
_PUBLIC_NAMES = {
    "CheckpointDirectory": "unicl.training.checkpoints",
    "DamagedCheckpoint": "unicl.training.checkpoints",
    "UnusableCheckpoint": "unicl.training.checkpoints",
    "read_checkpoint": "unicl.training.checkpoints",
    "cached_backward": "unicl.training.gradient_cache",
    "batch_shares": "unicl.training.mixing",
    "join_batches": "unicl.training.mixing",
    "check_options": "unicl.training.options",
    "TrainingConfig": "unicl.training.config",
    "Trainer": "unicl.training.trainer",
    "TrainingError": "unicl.training.errors",
    "train": "unicl.training.trainer",
}

if TYPE_CHECKING:
    from unicl.training.checkpoints import CheckpointDirectory, DamagedCheckpoint, UnusableCheckpoint, read_checkpoint
    from unicl.training.config import TrainingConfig
    from unicl.training.errors import TrainingError
    from unicl.training.gradient_cache import cached_backward
    from unicl.training.mixing import batch_shares, join_batches
    from unicl.training.options import check_options
    from unicl.training.trainer import Trainer, train


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC_NAMES)

__all__ = [
    "CheckpointDirectory",
    "DamagedCheckpoint",
    "Trainer",
    "TrainingConfig",
    "TrainingError",
    "UnusableCheckpoint",
    "batch_shares",
    "cached_backward",
    "check_options",
    "join_batches",
    "read_checkpoint",
    "train",
]
