"""The training command: ``python -m unicl.train`` (or ``unicl-train``); ``--help`` lists every option.

The command parses and checks the options, then hands them to the library's `unicl.training.trainer.train`. Until
the options are parsed and checked it imports nothing but the standard library, `unicl._checks` and
`unicl.training.options` (torch and timm take seconds to load), so ``--help`` and a mistyped option answer at once.
Every user error, found by argparse, by the checks of `unicl.training.options` or once the run is being built (a
missing folder, a tokenizer that does not fit, a checkpoint that cannot be resumed), is reported the same way:
argparse's usage line and ``PROG: error: MESSAGE`` on standard error, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from unicl._checks import CommandParser, default_workers, program_name
from unicl.loss.names import BACKENDS as LOSS_BACKENDS
from unicl.training.options import check_options

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
    """The argument parser of ``python -m unicl.train`` (torch-free: ``--help`` loads nothing heavy)."""
    parser = CommandParser(
        prog=program_name("unicl.train"), description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="the preset to train (see unicl.list_models())")
    model.add_argument(
        "--pretrained",
        help="initial weights for the preset: a release tag of unicl.list_pretrained() (read from "
        "$UNICL_HOME/checkpoints), a microsoft/UniCL .pth, a save_pretrained directory or .safetensors",
    )
    model.add_argument(
        "--tokenizer",
        help="'clip' (CLIP's BPE, found on this machine), a tokenizer.json or a saved model directory; its "
        "vocabulary must fit the preset's text tower (default: the tokenizer saved with a --pretrained directory, "
        "else the preset's own: CLIP's BPE for the paper presets, and for unicl_tiny a BPE trained on this run's "
        "prompts and captions, saved as OUTPUT/tokenizer.json; a resumed run takes the checkpoint's tokenizer)",
    )
    model.add_argument(
        "--micro-batch",
        type=int,
        default=None,
        help="gradient caching: encode the batch in micro-batches of this many samples per rank (it must divide "
        "--batch-size), so the encoders' activations of only one micro-batch are held; the loss and the "
        "gradients stay those of the whole batch (unicl.training.cached_backward; default: the whole batch at once)",
    )
    model.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="recompute the image and text blocks in backward: much less activation memory, about 30%% more compute",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--image-folder",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="an ImageFolder root of image-label data (one sub-folder per class); repeat for several; classes with "
        "the same name in two roots are one class",
    )
    data.add_argument(
        "--classnames",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="class names for the --image-folder of the same position, one per line in folder order (commas "
        "separate synonyms); default: the folder names",
    )
    data.add_argument(
        "--captions",
        action="append",
        type=Path,
        default=[],
        metavar="CSV",
        help="a CSV/TSV of image-text pairs with a header naming an 'image' (or 'filepath') and a 'caption' (or "
        "'title') column, image paths relative to the file; repeat for several",
    )
    data.add_argument(
        "--webdataset",
        metavar="URLS",
        help="image-text pairs in WebDataset tar shards (a .jpg/.png/.webp and a .txt per sample): paths, http(s) "
        "or pipe: URLs, '{0000..0099}' ranges, '::' between lists; needs at least ranks × workers shards",
    )
    data.add_argument(
        "--ratio",
        type=float,
        metavar="R",
        help="share of each batch taken from the image-label data, in [0, 1] (default: 0.5 with both kinds of data, "
        "else all of the one given)",
    )
    data.add_argument(
        "--hash-captions",
        action="store_true",
        help="identical captions (up to case and spaces) get one label, so they are positives of each other on "
        "every rank; by default each image-text pair is positive only with its own text",
    )
    data.add_argument(
        "--no-augmentation",
        action="store_true",
        help="train on the evaluation transform instead of the training augmentation (the released models' "
        "RandAugment, random resized crops and random erasing; for images of 32 px or less a random shift of up to "
        "1/16 of the side)",
    )
    data.add_argument(
        "--check-data",
        action="store_true",
        help="before the first step, read every image file's header (and its end marker, which a half-written PNG "
        "or JPEG lacks) and stop naming each bad file; recommended for data a run has not read before (thousands of "
        "files a second; WebDataset shards are not checked)",
    )
    data.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="an --image-folder or --captions image that cannot be read is replaced by the next readable one of its "
        "source (the batch keeps its size, the run stays reproducible), named on standard error and counted in the "
        "log and the final line (default: the run stops naming the file)",
    )
    data.add_argument(
        "--workers", type=int, default=default_workers(),
        help="data-loading processes per rank (default: 4, or this machine's CPUs if fewer)",
    )  # fmt: skip

    optimization = parser.add_argument_group("optimisation")
    optimization.add_argument(
        "--batch-size", type=int, required=True, metavar="B", help="samples per rank and step (global batch: B × ranks)"
    )
    optimization.add_argument(
        "--steps", type=int, required=True, metavar="N", help="optimizer steps; the learning-rate schedule spans them"
    )
    optimization.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of AdamW (default: 5e-4)")
    optimization.add_argument(
        "--warmup", type=int, default=0, metavar="STEPS", help="linear warm-up steps before the cosine decay"
    )
    optimization.add_argument(
        "--min-lr", type=float, default=0.0, help="learning rate at the end of the cosine decay (default: 0)"
    )
    optimization.add_argument(
        "--weight-decay",
        type=float,
        default=0.05,
        help="AdamW weight decay of weight matrices; norms, biases, embeddings and the temperature get none "
        "(default: 0.05)",
    )
    optimization.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1 (default: 0.9)")
    optimization.add_argument("--beta2", type=float, default=0.999, help="AdamW beta2 (default: 0.999)")
    optimization.add_argument("--eps", type=float, default=1e-8, help="AdamW epsilon (default: 1e-8)")
    optimization.add_argument(
        "--grad-clip",
        type=float,
        default=5.0,
        help="clip the global gradient norm to this value; 0 turns clipping off (default: 5.0)",
    )
    optimization.add_argument(
        "--loss-backend",
        default="auto",
        choices=LOSS_BACKENDS,
        metavar="NAME",
        help="the UniCLLoss backend: " + ", ".join(LOSS_BACKENDS) + " (default: auto)",
    )
    optimization.add_argument(
        "--local-loss",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each rank computes its own rows and columns of the global-batch loss (ranks times less work, the "
        "same gradients); --no-local-loss computes the whole global loss on every rank (default: local)",
    )
    optimization.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="fp32; bf16 autocast; fp16 autocast with a gradient scaler (CUDA only); auto: bf16 on CUDA, fp32 on "
        "the CPU (default: auto)",
    )

    checkpoints = parser.add_argument_group("checkpoints and faults")
    checkpoints.add_argument(
        "--output", type=Path, required=True, metavar="DIR", help="the run's directory (on storage every node sees)"
    )
    checkpoints.add_argument(
        "--save-every",
        type=int,
        default=1000,
        metavar="K",
        help="write a checkpoint every K steps (and always at the end); 0: only at the end (default: 1000)",
    )
    checkpoints.add_argument(
        "--keep", type=int, default=3, help="how many of the newest checkpoints to keep (default: 3)"
    )
    checkpoints.add_argument(
        "--resume",
        metavar="auto|PATH",
        help="'auto': continue from the newest checkpoint in DIR/checkpoints that reads back whole (a corrupt or "
        "partial one is skipped with a warning), or start afresh when there is none; PATH: that checkpoint file",
    )
    checkpoints.add_argument(
        "--stop-after",
        type=int,
        metavar="K",
        help="end the process after step K as a crash would (no checkpoint unless --save-every falls there), "
        "leaving the schedule planned for --steps: how a fault is simulated",
    )

    checkpoints.add_argument(
        "--checkpoint-on-signal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="on SIGTERM or SIGUSR1 (a scheduler's preemption notice) or SIGINT (Ctrl-C; a second one stops at "
        "once), sent to the main process or to its whole process group, finish the step, write a checkpoint and exit "
        "with status 128 + the signal's number (143, 138, 130); costs one tiny all-reduce per step (default: on)",
    )

    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument(
        "--eval-folder",
        type=Path,
        metavar="DIR",
        help="an ImageFolder of held-out classes for zero-shot top-1/top-5 accuracy, at --eval-every and at the end",
    )
    evaluation.add_argument(
        "--eval-classnames", type=Path, metavar="FILE", help="class names of --eval-folder, one per line"
    )
    evaluation.add_argument(
        "--eval-every",
        type=int,
        default=0,
        metavar="K",
        help="evaluate every K steps; 0: only at the end (default: 0)",
    )
    evaluation.add_argument(
        "--eval-batch-size", type=int, default=64, help="images per evaluation batch and rank (default: 64)"
    )

    logging = parser.add_argument_group("logging and runtime")
    logging.add_argument(
        "--log-every",
        type=int,
        default=10,
        metavar="K",
        help="write loss, learning rate, logit scale and throughput to the log every K steps (default: 10)",
    )
    logging.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also log to OUTPUT/tensorboard (default: when the tensorboard package is installed; --tensorboard "
        "without it is an error)",
    )
    logging.add_argument(
        "--no-progress", action="store_true", help="no progress bar on standard error (for logs of batch jobs)"
    )
    logging.add_argument(
        "--device",
        default="auto",
        help="'auto' (each rank's CUDA device by LOCAL_RANK, else the CPU), 'cpu' or 'cuda' (default: auto)",
    )
    logging.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initial weights, the data order, the augmentations and the prompt draws (default: 0)",
    )
    return parser


def main(argv: list[str] | None = None) -> Path | None:
    """Parse the options, train, and return ``OUTPUT/final`` (``None`` when stopped early by ``--stop-after``).

    Raises:
        unicl._checks.CommandError: a user error, already reported in argparse's format (exit status 2).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_options(args)
    except ValueError as error:
        parser.error(str(error))
    try:
        # torch, timm and the data libraries load only now that the options are known to be sound.
        from unicl.training.trainer import TrainingError, train

        try:
            return train(args)
        except (TrainingError, FileNotFoundError, ValueError, ImportError) as error:
            # Bad data or settings found while building the run: one line naming the problem, no traceback.
            parser.error(" ".join(str(error).split()))
    except KeyboardInterrupt:
        # A Ctrl-C before the loop, or a second one during it (the first asks for a checkpoint): stop at once.
        parser.exit(
            128 + signal.SIGINT,
            f"{parser.prog}: interrupted: the step in progress is lost; the checkpoints already in "
            f"{args.output / 'checkpoints'} resume with --resume auto\n",
        )


if __name__ == "__main__":
    main()
