"""The error of a training run that cannot start or go on (torch-free, so every layer of the run can raise it)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to change."""
