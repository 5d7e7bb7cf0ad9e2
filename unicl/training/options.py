"""The command line of ``python -m unicl.train`` (and ``unicl-train``): every option, its default and its meaning."""

from __future__ import annotations

import argparse
from pathlib import Path

from unicl._checks import program_name
from unicl.loss.backends import BACKENDS

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
    """The argument parser of ``python -m unicl.train``."""
    parser = argparse.ArgumentParser(
        prog=program_name("unicl.train"), description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="the preset to train (see unicl.list_models())")
    model.add_argument(
        "--pretrained",
        help="initial weights for the preset: a microsoft/UniCL .pth, a save_pretrained directory or .safetensors",
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
    data.add_argument("--workers", type=int, default=4, help="data-loading processes per rank (default: 4)")

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
        "--loss-backend", choices=BACKENDS, default="auto", help="the UniCLLoss backend (default: auto)"
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
        help="on SIGTERM or SIGUSR1 (a scheduler's preemption notice) finish the step, write a checkpoint and exit "
        "with status 128 + the signal's number; costs one tiny all-reduce per step (default: on)",
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
        default=True,
        help="also log to OUTPUT/tensorboard when the tensorboard package is installed (default: on)",
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


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Reject inconsistent options with ``parser.error`` (exit status 2, a message naming the option)."""
    positive = {"--batch-size": args.batch_size, "--steps": args.steps, "--keep": args.keep,
                "--log-every": args.log_every, "--eval-batch-size": args.eval_batch_size}  # fmt: skip
    for name, value in positive.items():
        if value < 1:
            parser.error(f"{name} must be >= 1; got {value}")
    if args.micro_batch is not None and not (args.micro_batch >= 1 and args.batch_size % args.micro_batch == 0):
        parser.error(
            f"--micro-batch must be >= 1 and divide --batch-size ({args.batch_size}); got {args.micro_batch}"
        )
    not_negative = {"--workers": args.workers, "--warmup": args.warmup, "--save-every": args.save_every,
                    "--eval-every": args.eval_every, "--seed": args.seed}  # fmt: skip
    for name, value in not_negative.items():
        if value < 0:
            parser.error(f"{name} must be >= 0; got {value}")
    for name in ("lr", "min_lr", "weight_decay", "eps", "grad_clip"):
        if not getattr(args, name) >= 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0; got {getattr(args, name)}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(args, name) < 1:
            parser.error(f"--{name} must be in [0, 1); got {getattr(args, name)}")
    if args.min_lr > args.lr:
        parser.error(f"--min-lr ({args.min_lr}) must not exceed --lr ({args.lr})")
    if args.warmup > args.steps:
        parser.error(f"--warmup ({args.warmup}) must not exceed --steps ({args.steps})")
    if args.stop_after is not None and not 1 <= args.stop_after <= args.steps:
        parser.error(f"--stop-after must be in [1, --steps = {args.steps}]; got {args.stop_after}")
    if args.captions and args.webdataset:
        parser.error("give image-text data as --captions or as --webdataset, not both")
    labelled, captioned = bool(args.image_folder), bool(args.captions or args.webdataset)
    if not (labelled or captioned):
        parser.error("no training data: give --image-folder, --captions or --webdataset")
    if args.classnames and len(args.classnames) != len(args.image_folder):
        parser.error(
            f"--classnames must be given once per --image-folder ({len(args.image_folder)}); got {len(args.classnames)}"
        )
    if args.ratio is None:
        args.ratio = 0.5 if labelled and captioned else float(labelled)
    if not 0 <= args.ratio <= 1:
        parser.error(f"--ratio must be in [0, 1]; got {args.ratio}")
    if args.ratio > 0 and not labelled:
        parser.error(f"--ratio {args.ratio} takes image-label samples, but no --image-folder was given")
    if args.ratio < 1 and not captioned:
        parser.error(f"--ratio {args.ratio} takes image-text samples, but no --captions or --webdataset was given")
    if labelled and captioned and round(args.ratio * args.batch_size) in (0, args.batch_size):
        parser.error(
            f"--ratio {args.ratio} of --batch-size {args.batch_size} leaves no room for one kind of data; "
            "change either, or drop the data that gets no share"
        )
    if args.eval_classnames is not None and args.eval_folder is None:
        parser.error("--eval-classnames needs --eval-folder")
    if args.eval_every and args.eval_folder is None:
        parser.error("--eval-every needs --eval-folder")
    if args.resume is not None and args.resume != "auto" and not Path(args.resume).is_file():
        parser.error(f"--resume {args.resume!r} is neither 'auto' nor a checkpoint file")
    return args
