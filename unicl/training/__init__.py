"""The training library: the run (`train`, `Trainer`) and its parts: fault-tolerant checkpoints, gradient caching
for large batches, step-addressed sampling, the mixing of sources, schedules, logs and the process group.

The names below are imported on first use (PEP 562), so `unicl.training.config` and `unicl.training.options`
(torch-free) can be imported by the training command before it parses its arguments without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicl._exports import lazy_package

if TYPE_CHECKING:
    from unicl.training.checkpoints import CheckpointDirectory as CheckpointDirectory
    from unicl.training.checkpoints import DamagedCheckpoint as DamagedCheckpoint
    from unicl.training.checkpoints import UnusableCheckpoint as UnusableCheckpoint
    from unicl.training.checkpoints import read_checkpoint as read_checkpoint
    from unicl.training.config import TrainingConfig as TrainingConfig
    from unicl.training.errors import TrainingError as TrainingError
    from unicl.training.gradient_cache import cached_backward as cached_backward
    from unicl.training.mixing import batch_shares as batch_shares
    from unicl.training.mixing import join_batches as join_batches
    from unicl.training.options import check_options as check_options
    from unicl.training.trainer import Trainer as Trainer
    from unicl.training.trainer import train as train


__getattr__, __dir__, __all__ = lazy_package(
    __name__,
    {
        "unicl.training.checkpoints": [
            "CheckpointDirectory",
            "DamagedCheckpoint",
            "UnusableCheckpoint",
            "read_checkpoint",
        ],
        "unicl.training.config": ["TrainingConfig"],
        "unicl.training.errors": ["TrainingError"],
        "unicl.training.gradient_cache": ["cached_backward"],
        "unicl.training.mixing": ["batch_shares", "join_batches"],
        "unicl.training.options": ["check_options"],
        "unicl.training.trainer": ["Trainer", "train"],
    },
)
