"""The checks of a training run's options: what ``python -m unicl.train`` refuses before anything is built.

Torch-free (this module imports only the standard library), so the command checks its options before loading torch.
The command's parser, with every option's default and meaning, is `unicl.train.build_parser`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def check_options(args: argparse.Namespace) -> argparse.Namespace:
    """Check the options of a run, and fill in the ones whose default depends on others (``ratio``).

    Args:
        args: the options as ``python -m unicl.train``'s parser (`unicl.train.build_parser`) returns them.

    Returns:
        ``args``, with ``ratio`` set when it was ``None``.

    Raises:
        ValueError: the first inconsistent option, in one line that names it as the command line spells it.
    """
    positive = {"--batch-size": args.batch_size, "--steps": args.steps, "--keep": args.keep,
                "--log-every": args.log_every, "--eval-batch-size": args.eval_batch_size}  # fmt: skip
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    if args.micro_batch is not None and not (args.micro_batch >= 1 and args.batch_size % args.micro_batch == 0):
        raise ValueError(
            f"--micro-batch must be >= 1 and divide --batch-size ({args.batch_size}); got {args.micro_batch}"
        )
    not_negative = {"--workers": args.workers, "--warmup": args.warmup, "--save-every": args.save_every,
                    "--eval-every": args.eval_every, "--seed": args.seed}  # fmt: skip
    for name, value in not_negative.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0; got {value}")
    for name in ("lr", "min_lr", "weight_decay", "eps", "grad_clip"):
        if not getattr(args, name) >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0; got {getattr(args, name)}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(args, name) < 1:
            raise ValueError(f"--{name} must be in [0, 1); got {getattr(args, name)}")
    if args.min_lr > args.lr:
        raise ValueError(f"--min-lr ({args.min_lr}) must not exceed --lr ({args.lr})")
    if args.warmup > args.steps:
        raise ValueError(f"--warmup ({args.warmup}) must not exceed --steps ({args.steps})")
    if args.stop_after is not None and not 1 <= args.stop_after <= args.steps:
        raise ValueError(f"--stop-after must be in [1, --steps = {args.steps}]; got {args.stop_after}")
    if args.captions and args.webdataset:
        raise ValueError("give image-text data as --captions or as --webdataset, not both")
    labelled, captioned = bool(args.image_folder), bool(args.captions or args.webdataset)
    if not (labelled or captioned):
        raise ValueError("no training data: give --image-folder, --captions or --webdataset")
    # Checked here, before torch loads, so a mistyped path is refused at once and named by its option.
    for folder in args.image_folder:
        if not Path(folder).is_dir():
            raise ValueError(f"--image-folder {str(folder)!r} is not a directory")
    for captions in args.captions or ():
        if not Path(captions).is_file():
            raise ValueError(f"--captions {str(captions)!r} is not a file")
    if args.eval_folder is not None and not Path(args.eval_folder).is_dir():
        raise ValueError(f"--eval-folder {str(args.eval_folder)!r} is not a directory")
    if args.classnames and len(args.classnames) != len(args.image_folder):
        raise ValueError(
            f"--classnames must be given once per --image-folder ({len(args.image_folder)}); got {len(args.classnames)}"
        )
    if args.ratio is None:
        args.ratio = 0.5 if labelled and captioned else float(labelled)
    if not 0 <= args.ratio <= 1:
        raise ValueError(f"--ratio must be in [0, 1]; got {args.ratio}")
    if args.ratio > 0 and not labelled:
        raise ValueError(f"--ratio {args.ratio} takes image-label samples, but no --image-folder was given")
    if args.ratio < 1 and not captioned:
        raise ValueError(f"--ratio {args.ratio} takes image-text samples, but no --captions or --webdataset was given")
    if labelled and captioned and round(args.ratio * args.batch_size) in (0, args.batch_size):
        raise ValueError(
            f"--ratio {args.ratio} of --batch-size {args.batch_size} leaves no room for one kind of data; "
            "change either, or drop the data that gets no share"
        )
    if args.eval_classnames is not None and args.eval_folder is None:
        raise ValueError("--eval-classnames needs --eval-folder")
    if args.eval_every and args.eval_folder is None:
        raise ValueError("--eval-every needs --eval-folder")
    if args.resume is not None and args.resume != "auto" and not Path(args.resume).is_file():
        raise ValueError(f"--resume {args.resume!r} is neither 'auto' nor a checkpoint file")
    return args
