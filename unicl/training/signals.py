"""Stop requests from the job scheduler or the terminal: a signal noted now, acted on at the next step boundary.

Clusters warn a job before they end it: SLURM sends ``SIGTERM`` (and, with ``--signal=USR1@120``, ``SIGUSR1`` two
minutes ahead), Kubernetes sends ``SIGTERM`` and waits a grace period, and torchrun passes ``SIGTERM`` on to its
workers; Ctrl-C sends ``SIGINT``. SLURM and the terminal signal every process of the job step or of the foreground
process group, the data-loading workers too, not only the main process. Handled here, such a signal lets the run write
a checkpoint at the end of the step it is in, instead of losing every step since the last one: the main process notes
it (`StopSignals`), and the workers leave it to the main process
(`unicl.data.workers.worker_ignores_stop_signals`), which shuts them down when it stops.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from unicl.data.workers import STOP_SIGNALS


class StopSignals:
    """Within a ``with`` block, note the first of ``signals`` received instead of dying of it.

    Outside the main thread (where Python cannot install handlers) nothing is installed and nothing is noted, and a
    signal the process ignores (a background job's ``SIGINT``) stays ignored. Once a signal has been noted, ``SIGINT``
    gets its previous handler back, so a second Ctrl-C stops at once (``KeyboardInterrupt``). The previous handlers
    come back when the block ends.

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
        if self.received:
            return
        self.received = number
        if signal.SIGINT in self._previous:
            signal.signal(signal.SIGINT, self._previous[signal.SIGINT])

    def __enter__(self) -> StopSignals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for number in self.signals:
                if signal.getsignal(number) is not signal.SIG_IGN:
                    self._previous[number] = signal.signal(number, self._note)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
