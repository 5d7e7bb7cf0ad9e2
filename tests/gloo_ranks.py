"""Start and end of the gloo worker processes that the distributed tests spawn, shared so every worker is torn down
the same way."""

from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path

import torch.distributed as dist


def start_rank(rank: int, world: int, init_file: str) -> None:
    """Join the gloo group of ``world`` ranks through ``init_file``; a crash in C++ (an abort) prints every Python
    thread's stack to standard error, which pytest shows with the failure."""
    faulthandler.enable()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def finish_rank(rank: int, result_dir: str, report: str) -> None:
    """Write this rank's ``report`` (empty: every check passed), wait for every rank, leave the group and exit.

    The exit skips the interpreter's finalisation: with every rank's report written and no collective pending
    (all ranks left the barrier), a rank still aborted now and then while its process finished (gloo: "terminate
    called without an active exception"; seen with torch 2.11 and 2.14; pytorch/pytorch#179291 describes gloo's
    threads aborting in interpreter finalisation). The reports are what the tests check; the teardown of torch's
    own objects is not under test here.
    """
    Path(result_dir, f"rank{rank}.txt").write_text(report)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
