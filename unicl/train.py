"""The training command: ``python -m unicl.train`` (or ``unicl-train``); ``--help`` lists every option.

The command is a thin layer over the library: it parses the options into a `unicl.training.TrainingConfig` (its
parser is built from that class's fields), checks them (`unicl.training.check_options`) and hands them to
`unicl.training.train`. Until the options are parsed and checked it imports nothing but the standard library,
`unicl._checks`, `unicl.training.config` and `unicl.training.options` (torch and timm take seconds to load), so
``--help`` and a mistyped option answer at once. Every user error, found by argparse, by the checks of
`unicl.training.options` or once the run is being built (a missing folder, a tokenizer that does not fit, a
checkpoint that cannot be resumed), is reported the same way: argparse's usage line and ``PROG: error: MESSAGE`` on
standard error, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from unicl._checks import CommandParser, program_name
from unicl.loss.names import BACKENDS as LOSS_BACKENDS
from unicl.training.config import TrainingConfig, add_options
from unicl.training.options import check_options

__all__ = ["LOSS_BACKENDS", "build_parser", "main", "parse_config"]

DESCRIPTION = """\
Train a UniCL model on image-label data (ImageFolder roots), image-text data (a caption CSV/TSV, or WebDataset tar
shards) or both, on one process or under torchrun on many GPUs and nodes.

    python -m unicl.train --model unicl_swin_tiny --image-folder imagenet/train --webdataset 'cc3m/{0000..0331}.tar' \\
        --batch-size 128 --steps 100000 --warmup 5000 --output runs/swin-t
    torchrun --nproc-per-node 8 -m unicl.train ... --resume auto

Every batch holds --ratio × --batch-size labelled samples (class names drawn into prompts) and the rest image-text
pairs. Checkpoints go to OUTPUT/checkpoints (atomically; --resume auto takes the newest that reads back whole), a
JSONL log to OUTPUT/log.jsonl, the final weights (save_pretrained format) and tokenizer to OUTPUT/final. A run
stopped at any step and resumed ends with the weights of an uninterrupted run (bit for bit on the CPU).
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m unicl.train``: one option per field of `TrainingConfig`
    (`unicl.training.config.add_options`), torch-free, so ``--help`` loads nothing heavy."""
    parser = CommandParser(
        prog=program_name("unicl.train"), description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_options(parser)
    return parser


def parse_config(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> TrainingConfig:
    """The configuration ``python -m unicl.train ARGV`` runs, not yet checked (argparse's own errors exit).

    Args:
        argv: the command's options as strings (default: ``sys.argv[1:]``).
        parser: the command's parser (default: a new `build_parser`).
    """
    return TrainingConfig(**vars((parser or build_parser()).parse_args(argv)))


def main(argv: list[str] | None = None) -> Path | None:
    """Parse the options, train, and return ``OUTPUT/final`` (``None`` when stopped early by ``--stop-after``).

    Raises:
        unicl._checks.CommandError: a user error, already reported in argparse's format (exit status 2).
    """
    parser = build_parser()
    config = parse_config(argv, parser)
    try:
        config = check_options(config)
    except ValueError as error:
        parser.error(str(error))
    try:
        # torch, timm and the data libraries load only now that the options are known to be sound.
        from unicl.training.trainer import TrainingError, train

        try:
            return train(config)
        except (TrainingError, FileNotFoundError, ValueError, ImportError) as error:
            # Bad data or settings found while building the run: one line naming the problem, no traceback.
            parser.error(" ".join(str(error).split()))
    except KeyboardInterrupt:
        # A Ctrl-C before the loop, or a second one during it (the first asks for a checkpoint): stop at once.
        parser.exit(
            128 + signal.SIGINT,
            f"{parser.prog}: interrupted: the step in progress is lost; the checkpoints already in "
            f"{config.output / 'checkpoints'} resume with --resume auto\n",
        )


if __name__ == "__main__":
    main()
