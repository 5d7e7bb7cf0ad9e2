"""The configuration of a training run: `TrainingConfig`, every option once, with its type, default and meaning.

``python -m unicl.train`` builds its parser from this class (`add_options`): each field is one option, its flag
the field's name with dashes (``batch_size`` is ``--batch-size``), its help the field's docstring, its group, metavar
and choices the field's metadata. So the command and the library cannot disagree on an option's name, type, default
or meaning, and the checks (`unicl.training.options.check_options`) name each option as the command line spells it.

Torch-free (this module imports only the standard library, `unicl._checks` and the loss's torch-free names of its
backends and objectives), so the command parses and checks its options before loading torch.

Examples:
    >>> config = TrainingConfig(model="unicl_tiny", image_folder=["digits/train"], batch_size=64, steps=400,
    ...                         output="runs/digits")
    >>> config.output, config.image_folder, config.lr
    (PosixPath('runs/digits'), [PosixPath('digits/train')], 0.0005)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import itertools
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from unicl._checks import default_workers
from unicl.loss.names import BACKENDS as LOSS_BACKENDS
from unicl.loss.names import OBJECTIVES

#: The groups of the command's help, in order.
GROUPS = ("model", "data", "optimisation", "checkpoints and faults", "evaluation", "logging and runtime")
#: The precisions a run takes.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _option(group: str, metavar: str | None = None, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A field's metadata: how the command offers it (its help is the field's docstring)."""
    return {"group": group, "metavar": metavar, "choices": choices}


@dataclass(kw_only=True)
class TrainingConfig:
    """The options of a training run (`unicl.training.train`); ``python -m unicl.train`` has one option per field.

    Only ``model``, ``batch_size``, ``steps``, ``output`` and some training data (``image_folder``, ``captions`` or
    ``webdataset``) are required; every other field has the command's default. Paths may be given as strings. The
    options are checked as a whole by `unicl.training.options.check_options` (which `unicl.training.train` calls),
    each error naming the option as the command line spells it (``--batch-size``).

    Examples:
        >>> TrainingConfig(model="unicl_tiny", image_folder=["data/digits/train"], batch_size=64, steps=400,
        ...                output="runs/digits").precision
        'auto'
    """

    # --- model -------------------------------------------------------------------------------------------------------
    model: str = field(metadata=_option("model"))
    """The preset to train (see unicl.list_models()), or an open_clip or transformers model: open_clip:ARCH (with
    --pretrained FILE) or hf:DIR (a CLIPModel or SiglipModel directory)."""
    pretrained: str | None = field(default=None, metadata=_option("model"))
    """Initial weights for the preset: a release tag of unicl.list_pretrained() (read from $UNICL_HOME/checkpoints),
    a microsoft/UniCL .pth, a save_pretrained directory or .safetensors; for open_clip:ARCH, a local open_clip
    checkpoint file."""
    tokenizer: str | None = field(default=None, metadata=_option("model"))
    """'clip' (CLIP's BPE, found on this machine), a tokenizer.json or a saved model directory; its vocabulary must
    fit the preset's text tower (default: the tokenizer saved with a --pretrained directory, else the preset's own:
    CLIP's BPE for the paper presets, and for unicl_tiny a BPE trained on this run's prompts and captions, saved as
    OUTPUT/tokenizer.json; a resumed run takes the checkpoint's tokenizer)."""
    micro_batch: int | None = field(default=None, metadata=_option("model"))
    """Gradient caching: encode the batch in micro-batches of this many samples per rank (it must divide
    --batch-size), so the encoders' activations of only one micro-batch are held; the loss and the gradients stay
    those of the whole batch (unicl.training.cached_backward; default: the whole batch at once)."""
    grad_checkpointing: bool = field(default=False, metadata=_option("model"))
    """Recompute the image and text blocks in backward: much less activation memory, about 30% more compute."""
    freeze_image: bool = field(default=False, metadata=_option("model"))
    """Fine-tuning: freeze the image tower (its encoder and projection): its parameters get no gradient, stay out of
    the optimiser and keep their values, and it runs in evaluation mode (no dropout or drop-path, BatchNorm
    statistics kept); LiT's locked image tower."""
    freeze_text: bool = field(default=False, metadata=_option("model"))
    """Fine-tuning: freeze the text tower (its encoder, embeddings and projection), as --freeze-image does the image
    tower."""

    # --- data --------------------------------------------------------------------------------------------------------
    image_folder: list[Path] = field(default_factory=list, metadata=_option("data", "DIR"))
    """An ImageFolder root of image-label data (one sub-folder per class); repeat for several; classes with the same
    name in two roots are one class."""
    classnames: list[Path] = field(default_factory=list, metadata=_option("data", "FILE"))
    """Class names for the --image-folder of the same position, one per line in folder order (commas separate
    synonyms); default: the folder names."""
    captions: list[Path] = field(default_factory=list, metadata=_option("data", "CSV"))
    """A CSV/TSV of image-text pairs with a header naming an 'image' (or 'filepath') and a 'caption' (or 'title')
    column, image paths relative to the file; repeat for several."""
    webdataset: str | None = field(default=None, metadata=_option("data", "URLS"))
    """Image-text pairs in WebDataset tar shards (a .jpg/.png/.webp and a .txt per sample): paths, http(s) or pipe:
    URLs, '{0000..0099}' ranges, '::' between lists; needs at least ranks × workers shards."""
    ratio: float | None = field(default=None, metadata=_option("data", "R"))
    """Share of each batch taken from the image-label data, in [0, 1] (default: 0.5 with both kinds of data, else all
    of the one given)."""
    captions_per_image: int = field(default=1, metadata=_option("data", "K"))
    """Sample --captions by image, each image with up to K of its captions (rows naming the same image), all of
    them its positives, the image encoded once (default: 1, each row one sample); the batch then has --batch-size
    images and up to K times as many texts."""
    hard_negatives: bool = field(default=False, metadata=_option("data"))
    """Add each sampled --captions row's 'hard_negative' column (empty: none) to the batch's texts as a text with
    no positive, which every image is contrasted against (NegCLIP's hard negatives; samples the captions by image,
    as --captions-per-image does)."""
    class_bank: bool = field(default=False, metadata=_option("data"))
    """Contrast every --image-folder image with every class of the folders, whatever classes the batch holds: the
    labelled images keep their own prompts, and each step adds one prompt of every class none of them belongs to
    (under torchrun, of every class the rank's own images lack, and a positive of other ranks' images of that
    class), a negative of every image of the batch, encoded each step."""
    hash_captions: bool = field(default=False, metadata=_option("data"))
    """Identical captions (up to case and spaces) get one label, so they are positives of each other on every rank;
    by default each image-text pair is positive only with its own text."""
    no_augmentation: bool = field(default=False, metadata=_option("data"))
    """Train on the evaluation transform instead of the training augmentation (the released models' RandAugment,
    random resized crops and random erasing; for images of 32 px or less a random shift of up to 1/16 of the
    side)."""
    check_data: bool = field(default=False, metadata=_option("data"))
    """Before the first step, read every image file's header (and its end marker, which a half-written PNG or JPEG
    lacks) and stop naming each bad file; recommended for data a run has not read before (thousands of files a
    second; WebDataset shards are not checked)."""
    skip_unreadable: bool = field(default=False, metadata=_option("data"))
    """An --image-folder or --captions image that cannot be read is replaced by the next readable one of its source
    (the batch keeps its size, the run stays reproducible), named on standard error and counted in the log and the
    final line (default: the run stops naming the file)."""
    workers: int = field(default_factory=default_workers, metadata=_option("data"))
    """Data-loading processes per rank (default: 4, or this machine's CPUs if fewer)."""

    # --- optimisation ------------------------------------------------------------------------------------------------
    batch_size: int = field(metadata=_option("optimisation", "B"))
    """Samples per rank and step (global batch: B × ranks)."""
    steps: int = field(metadata=_option("optimisation", "N"))
    """Optimizer steps; the learning-rate schedule spans them."""
    lr: float = field(default=5e-4, metadata=_option("optimisation"))
    """Peak learning rate of AdamW (default: 5e-4)."""
    tower_lr: float | None = field(default=None, metadata=_option("optimisation", "LR"))
    """Fine-tuning: the peak learning rate of the image and text towers (the pretrained weights), lower than --lr,
    which then trains only the logit scale and the logit bias (new in a --loss sigmoid run from softmax weights;
    at --logit-lr when that is given or decided);
    the towers follow the same warm-up and decay, to --min-lr × tower-lr / lr (default: --lr for every
    parameter)."""
    warmup: int = field(default=0, metadata=_option("optimisation", "STEPS"))
    """Linear warm-up steps before the cosine decay."""
    min_lr: float = field(default=0.0, metadata=_option("optimisation"))
    """Learning rate at the end of the cosine decay (default: 0)."""
    logit_lr: float | None = field(default=None, metadata=_option("optimisation"))
    """Peak learning rate of the logit scale (and the sigmoid objective's logit bias), on the same warm-up and cosine
    schedule (default: --lr with --loss softmax; with --loss sigmoid, the larger of --lr and 10 divided by the sum of
    the schedule's multipliers over --steps, the rate at which AdamW's steps of about one learning rate each can
    carry the bias its initial distance of 10 from zero within the run: 0.05 for 400 steps without warm-up)."""
    weight_decay: float = field(default=0.05, metadata=_option("optimisation"))
    """AdamW weight decay of weight matrices; norms, biases, embeddings and the temperature get none (default:
    0.05)."""
    beta1: float = field(default=0.9, metadata=_option("optimisation"))
    """AdamW beta1 (default: 0.9)."""
    beta2: float = field(default=0.999, metadata=_option("optimisation"))
    """AdamW beta2 (default: 0.999)."""
    eps: float = field(default=1e-8, metadata=_option("optimisation"))
    """AdamW epsilon (default: 1e-8)."""
    grad_clip: float = field(default=5.0, metadata=_option("optimisation"))
    """Clip the global gradient norm to this value; 0 turns clipping off (default: 5.0)."""
    loss: str = field(default="softmax", metadata=_option("optimisation", choices=OBJECTIVES))
    """The objective: softmax (UniCL's) or sigmoid (SigLIP's pairwise sigmoid with UniCL's label-aware positives;
    the model gains a learnable logit bias and starts at SigLIP's logit scale 10 and bias -10) (default: softmax)."""
    loss_backend: str = field(default="auto", metadata=_option("optimisation", "NAME", LOSS_BACKENDS))
    """The UniCLLoss backend: auto, dense, chunked, triton, triton_rowwise (default: auto)."""
    local_loss: bool = field(default=True, metadata=_option("optimisation"))
    """Each rank computes its own rows and columns of the global-batch loss (ranks times less work, the same
    gradients); --no-local-loss computes the whole global loss on every rank (default: local)."""
    precision: str = field(default="auto", metadata=_option("optimisation", choices=PRECISIONS))
    """fp32; bf16 autocast; fp16 autocast with a gradient scaler (CUDA only); auto: bf16 on CUDA, fp32 on the CPU
    (default: auto)."""

    # --- checkpoints and faults --------------------------------------------------------------------------------------
    output: Path = field(metadata=_option("checkpoints and faults", "DIR"))
    """The run's directory (on storage every node sees)."""
    save_every: int = field(default=1000, metadata=_option("checkpoints and faults", "K"))
    """Write a checkpoint every K steps (and always at the end); 0: only at the end (default: 1000)."""
    keep: int = field(default=3, metadata=_option("checkpoints and faults"))
    """How many of the newest checkpoints to keep (default: 3)."""
    resume: str | None = field(default=None, metadata=_option("checkpoints and faults", "auto|PATH"))
    """'auto': continue from the newest checkpoint in DIR/checkpoints that reads back whole (a corrupt or partial one
    is skipped with a warning), or start afresh when there is none; PATH: that checkpoint file."""
    stop_after: int | None = field(default=None, metadata=_option("checkpoints and faults", "K"))
    """End the process after step K as a crash would (no checkpoint unless --save-every falls there), leaving the
    schedule planned for --steps: how a fault is simulated."""
    checkpoint_on_signal: bool = field(default=True, metadata=_option("checkpoints and faults"))
    """On SIGTERM or SIGUSR1 (a scheduler's preemption notice) or SIGINT (Ctrl-C; a second one stops at once), sent
    to the main process or to its whole process group, finish the step, write a checkpoint and exit with status
    128 + the signal's number (143, 138, 130); costs one tiny all-reduce per step (default: on)."""

    # --- evaluation --------------------------------------------------------------------------------------------------
    eval_folder: Path | None = field(default=None, metadata=_option("evaluation", "DIR"))
    """An ImageFolder of held-out classes for zero-shot top-1/top-5 accuracy, at --eval-every and at the end."""
    eval_classnames: Path | None = field(default=None, metadata=_option("evaluation", "FILE"))
    """Class names of --eval-folder, one per line."""
    eval_every: int = field(default=0, metadata=_option("evaluation", "K"))
    """Evaluate every K steps; 0: only at the end (default: 0)."""
    eval_batch_size: int = field(default=64, metadata=_option("evaluation"))
    """Images per evaluation batch and rank (default: 64)."""

    # --- logging and runtime -----------------------------------------------------------------------------------------
    log_every: int = field(default=10, metadata=_option("logging and runtime", "K"))
    """Write loss, learning rate, logit scale and throughput to the log every K steps (default: 10)."""
    tensorboard: bool | None = field(default=None, metadata=_option("logging and runtime"))
    """Also log to OUTPUT/tensorboard (default: when the tensorboard package is installed; --tensorboard without it
    is an error)."""
    no_progress: bool = field(default=False, metadata=_option("logging and runtime"))
    """No progress bar on standard error (for logs of batch jobs)."""
    device: str = field(default="auto", metadata=_option("logging and runtime"))
    """'auto' (each rank's CUDA device by LOCAL_RANK, else the CPU), 'cpu' or 'cuda' (default: auto)."""
    seed: int = field(default=0, metadata=_option("logging and runtime"))
    """Seed of the initial weights, the data order, the augmentations and the prompt draws (default: 0)."""

    def __post_init__(self) -> None:
        # From Python, paths may come as strings (or a path where a string is taken, such as resume), lists as
        # tuples and floats as ints: the run, its checks and its stored configuration see one type per field.
        for item in dataclasses.fields(self):
            value, kind = getattr(self, item.name), field_kind(item.name)
            if kind is Path and isinstance(value, str):
                value = Path(value)
            elif kind is str and isinstance(value, Path):
                value = str(value)
            elif kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif kind == list[Path] and isinstance(value, (list, tuple)):
                value = [Path(entry) if isinstance(entry, str) else entry for entry in value]
            setattr(self, item.name, value)


def flag(name: str) -> str:
    """The command-line option of the field ``name``: ``batch_size`` is ``--batch-size``."""
    return "--" + name.replace("_", "-")


@cache
def _kinds() -> dict[str, Any]:
    return typing.get_type_hints(TrainingConfig)


def field_kind(name: str) -> Any:
    """The type of the field ``name`` with ``None`` taken out: ``int | None`` is ``int``, ``list[Path]`` stays."""
    kind = _kinds()[name]
    if isinstance(kind, types.UnionType):
        (kind,) = [member for member in typing.get_args(kind) if member is not type(None)]
    return kind


@cache
def field_docs() -> dict[str, str]:
    """Each field's docstring, as one line: the help of its option (read from this module's source, the one place
    an option's meaning is written)."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    (body,) = [node.body for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "TrainingConfig"]
    docs = {}
    for statement, following in itertools.pairwise(body):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def _help(name: str) -> str:
    """The option's help: its field's docstring, starting lower-case and without the full stop, as argparse's own
    help lines read (``%`` doubled for argparse's formatting)."""
    text = field_docs()[name].removesuffix(".")
    first = text.split()[0]
    # "Peak learning rate" reads "peak learning rate"; a name ("AdamW beta1") keeps its capitals.
    if first[:1].isupper() and (len(first) == 1 or first[1:].islower()):
        text = text[0].lower() + text[1:]
    return text.replace("%", "%%")


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add an option for every field of `TrainingConfig` to ``parser``, in groups (`GROUPS`), in the fields' order.

    A ``bool`` field that is off by default is a switch (``--check-data``); one that is on by default, or ``None``
    (decided at run time), takes ``--no-`` to turn it off (``--local-loss`` / ``--no-local-loss``). A list field is
    repeated (``--image-folder A --image-folder B``). A field without a default is a required option.
    """
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for item in dataclasses.fields(TrainingConfig):
        kind, meta = field_kind(item.name), item.metadata
        options: dict[str, Any] = {"help": _help(item.name)}
        if item.default is not dataclasses.MISSING:
            options["default"] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            options["default"] = item.default_factory()
        else:
            options["required"] = True
        if kind is bool:
            switch = options.get("default") is False
            options["action"] = "store_true" if switch else argparse.BooleanOptionalAction
        elif kind == list[Path]:
            options.update(action="append", type=Path)
        else:
            options["type"] = kind
        if meta["metavar"] is not None:
            options["metavar"] = meta["metavar"]
        if meta["choices"] is not None:
            options["choices"] = meta["choices"]
        groups[meta["group"]].add_argument(flag(item.name), dest=item.name, **options)
