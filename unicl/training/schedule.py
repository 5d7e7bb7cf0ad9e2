"""The learning-rate schedule: linear warm-up, then a cosine decay to a floor."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(steps: int, warmup: int, floor: float = 0.0) -> Callable[[int], float]:
    """The learning-rate multiplier of step ``t`` (for ``torch.optim.lr_scheduler.LambdaLR``).

    ``(t + 1) / warmup`` during the first ``warmup`` steps, then ``floor + (1 − floor)·(1 + cos(π·p))/2`` with
    ``p = (t − warmup) / (steps − warmup)`` the progress through the decay, reaching ``floor`` at ``t = steps``.

    Args:
        steps: the steps the schedule spans.
        warmup: warm-up steps, ``0 <= warmup <= steps``.
        floor: the final multiplier (``min_lr / lr``), in ``[0, 1]``.

    Examples:
        >>> schedule = warmup_cosine(steps=10, warmup=2)
        >>> tuple(round(schedule(t), 3) for t in (0, 1, 2, 6, 10))
        (0.5, 1.0, 1.0, 0.5, 0.0)
    """
    if not 0 <= warmup <= steps:
        raise ValueError(f"warmup must be in [0, steps = {steps}]; got {warmup}")
    if not 0 <= floor <= 1:
        raise ValueError(f"floor must be in [0, 1]; got {floor}")

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2

    return multiplier
