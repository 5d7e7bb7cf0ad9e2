"""The installed commands ``unicl-train`` and ``unicl-evaluate``.

A console script ends with ``sys.exit(function())``, which turns any returned value other than ``None`` or an int
into exit status 1 (and prints it); the commands' ``main`` functions return their results for Python callers, so
these wrappers return nothing: a finished run exits with status 0.
"""

from __future__ import annotations


def train_command() -> None:
    """``unicl-train``: ``python -m unicl.train`` (see `unicl.training.trainer.main`)."""
    from unicl.train import main

    main()


def evaluate_command() -> None:
    """``unicl-evaluate``: ``python -m unicl.evaluate`` (see `unicl.evaluate.main`)."""
    from unicl.evaluate import main

    main()
