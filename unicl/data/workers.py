"""Data-loading workers that leave the stop signals to their main process.

SLURM signals every process of a job step (``SIGTERM``, ``SIGUSR1``), and a terminal's Ctrl-C the whole foreground
process group (``SIGINT``): the DataLoader's worker processes too. A worker that dies of such a signal fails the main
process's next batch, with the DataLoader's error and a traceback, before the main process can answer the signal
(a training run writes a checkpoint, `unicl.training.signals`); `worker_ignores_stop_signals` keeps the workers
serving until the main process shuts them down.
"""

from __future__ import annotations

import os
import signal
import threading

#: The signals a training run answers with a checkpoint and a clean exit (status 128 + the signal's number), which
#: the workers leave to their main process.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def worker_ignores_stop_signals(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores the stop signals sent to its whole process group.

    A worker that died of the group's ``SIGTERM`` (or left on the group's ``SIGINT``) would fail the main process's
    next batch; ignoring them, it goes on serving batches until the main process, which noted the signal, has
    finished its step and shuts the workers down. A ``SIGTERM`` from the main process itself (what the DataLoader
    sends a worker that does not leave when asked) still ends the worker: where ``signal.sigwaitinfo`` exists, a
    thread takes every ``SIGTERM`` and tells the two apart by the sender's process id; elsewhere ``SIGTERM`` keeps
    the DataLoader's handler. A worker whose main process has died leaves on its own (the DataLoader's watchdog).

    Args:
        worker_id: the worker's number (unused: every worker does the same).
    """
    for number in STOP_SIGNALS:
        if number != signal.SIGTERM:
            signal.signal(number, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    # Blocked (not ignored: an ignored signal is discarded), the signal waits for the thread, which every later
    # thread's inherited mask leaves alone.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_leave_on_main_process_sigterm, args=(os.getppid(),), daemon=True).start()


def _leave_on_main_process_sigterm(main_process: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == main_process:
            os._exit(0)
