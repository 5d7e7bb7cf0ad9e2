"""The installed commands ``unicl-train`` and ``unicl-evaluate``.

A console script ends with ``sys.exit(function())``, which turns any returned value other than ``None`` or an int
into exit status 1 (and prints it); the commands' ``main`` functions return their results for Python callers, so
these wrappers return nothing: a finished run exits with status 0, a refused one with argparse's status 2
(`unicl._checks.CommandError`). Each imports its command only when called, and the commands load torch only after
parsing, so ``unicl-train --help`` answers at once (with ``usage: unicl-train``: `unicl._checks.program_name`).
"""

from __future__ import annotations


def train_command() -> None:
    """``unicl-train``: ``python -m unicl.train`` (see `unicl.train.main`)."""
    from unicl.train import main

    main()


def evaluate_command() -> None:
    """``unicl-evaluate``: ``python -m unicl.evaluate`` (see `unicl.evaluate.main`)."""
    from unicl.evaluate import main

    main()
