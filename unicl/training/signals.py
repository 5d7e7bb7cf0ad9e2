"""Stop requests from the job scheduler: a signal noted now, acted on at the next step boundary.

Clusters warn a job before they end it: SLURM sends ``SIGTERM`` (and, with ``--signal=USR1@120``, ``SIGUSR1`` two
minutes ahead), Kubernetes sends ``SIGTERM`` and waits a grace period, and torchrun passes ``SIGTERM`` on to its
workers. Handled here, such a signal lets the run write a checkpoint at the end of the step it is in, instead of losing
every step since the last one.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

#: The signals a run answers with a checkpoint and a clean exit.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Within a ``with`` block, note the first of ``signals`` received instead of dying of it.

    Outside the main thread (where Python cannot install handlers) nothing is installed and nothing is noted. The
    previous handlers come back when the block ends.

    Args:
        signals: the signals to note.
        enabled: install nothing when ``False``.

    Attributes:
        received: the number of the first signal received, or 0.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS, enabled: bool = True) -> None:
        self.signals = signals
        self.enabled = enabled
        self.received = 0
        self._previous: dict[signal.Signals, Any] = {}

    def _note(self, number: int, frame: FrameType | None) -> None:
        if not self.received:
            self.received = number

    def __enter__(self) -> StopSignals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for number in self.signals:
                self._previous[number] = signal.signal(number, self._note)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
