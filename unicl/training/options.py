"""The checks of a training run's options: what ``python -m unicl.train`` and `unicl.training.train` refuse
before anything is built.

Torch-free (this module imports only the standard library and `unicl.training.config`), so the command checks its
options before loading torch. Every option, with its type, default and meaning, is a field of
`unicl.training.config.TrainingConfig`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from unicl.training.config import TrainingConfig, field_kind, flag

#: How a type reads in an error.
_TYPE_NAMES = {bool: "True or False", int: "an int", float: "a number", str: "a string", Path: "a path"}


def _check_types(config: TrainingConfig) -> None:
    """Each field holds a value of its type (``None`` only where the field allows it)."""
    for item in dataclasses.fields(config):
        value, kind = getattr(config, item.name), field_kind(item.name)
        if value is None and item.default is None:
            continue
        if kind == list[Path]:
            fits = isinstance(value, list) and all(isinstance(entry, Path) for entry in value)
            wanted = "a list of paths"
        elif kind in (int, float):
            # bool is an int to Python, never a count or a rate here.
            fits = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
            wanted = _TYPE_NAMES[kind]
        else:
            fits, wanted = isinstance(value, kind), _TYPE_NAMES[kind]
        if not fits:
            raise TypeError(f"{flag(item.name)} must be {wanted}; got {value!r}")


def text_labelled(config: TrainingConfig) -> bool:
    """Whether the run's batches hold other texts than one per image, and so carry ``text_labels``:
    ``--class-bank``, ``--captions-per-image`` above 1 or ``--hard-negatives``."""
    return config.class_bank or config.captions_per_image > 1 or config.hard_negatives


def check_options(config: TrainingConfig) -> TrainingConfig:
    """Check the options of a run, and fill in the ones whose default depends on others (``ratio``).

    Args:
        config: the options (``python -m unicl.train`` builds them from its command line).

    Returns:
        The configuration to run: ``config`` with ``ratio`` set when it was ``None`` (``config`` itself is left as
        it was).

    Raises:
        TypeError: an option of the wrong type (given from Python), in one line naming it.
        ValueError: the first inconsistent option, in one line that names it as the command line spells it.
    """
    if not isinstance(config, TrainingConfig):
        raise TypeError(f"config must be a unicl.training.TrainingConfig; got {type(config).__name__}")
    _check_types(config)
    positive = {"--batch-size": config.batch_size, "--steps": config.steps, "--keep": config.keep,
                "--log-every": config.log_every, "--eval-batch-size": config.eval_batch_size}  # fmt: skip
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1; got {value}")
    if config.micro_batch is not None and not (config.micro_batch >= 1 and config.batch_size % config.micro_batch == 0):
        raise ValueError(
            f"--micro-batch must be >= 1 and divide --batch-size ({config.batch_size}); got {config.micro_batch}"
        )
    not_negative = {"--workers": config.workers, "--warmup": config.warmup, "--save-every": config.save_every,
                    "--eval-every": config.eval_every, "--seed": config.seed}  # fmt: skip
    for name, value in not_negative.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0; got {value}")
    for name in ("lr", "min_lr", "weight_decay", "eps", "grad_clip"):
        if not getattr(config, name) >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0; got {getattr(config, name)}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(config, name) < 1:
            raise ValueError(f"--{name} must be in [0, 1); got {getattr(config, name)}")
    for name in ("tower_lr", "logit_lr"):
        if getattr(config, name) is not None and not getattr(config, name) >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0; got {getattr(config, name)}")
    if config.tower_lr is not None and config.freeze_image and config.freeze_text:
        raise ValueError("--tower-lr has no tower to train: --freeze-image and --freeze-text freeze both")
    if config.min_lr > config.lr:
        raise ValueError(f"--min-lr ({config.min_lr}) must not exceed --lr ({config.lr})")
    if config.warmup > config.steps:
        raise ValueError(f"--warmup ({config.warmup}) must not exceed --steps ({config.steps})")
    if config.stop_after is not None and not 1 <= config.stop_after <= config.steps:
        raise ValueError(f"--stop-after must be in [1, --steps = {config.steps}]; got {config.stop_after}")
    if config.captions and config.webdataset:
        raise ValueError("give image-text data as --captions or as --webdataset, not both")
    labelled, captioned = bool(config.image_folder), bool(config.captions or config.webdataset)
    if not (labelled or captioned):
        raise ValueError("no training data: give --image-folder, --captions or --webdataset")
    # Checked here, before torch loads, so a mistyped path is refused at once and named by its option.
    for folder in config.image_folder:
        if not Path(folder).is_dir():
            raise ValueError(f"--image-folder {str(folder)!r} is not a directory")
    for captions in config.captions or ():
        if not Path(captions).is_file():
            raise ValueError(f"--captions {str(captions)!r} is not a file")
    if config.eval_folder is not None and not Path(config.eval_folder).is_dir():
        raise ValueError(f"--eval-folder {str(config.eval_folder)!r} is not a directory")
    if config.classnames and len(config.classnames) != len(config.image_folder):
        raise ValueError(
            f"--classnames must be given once per --image-folder ({len(config.image_folder)}); "
            f"got {len(config.classnames)}"
        )
    ratio = config.ratio if config.ratio is not None else 0.5 if labelled and captioned else float(labelled)
    if not 0 <= ratio <= 1:
        raise ValueError(f"--ratio must be in [0, 1]; got {ratio}")
    if ratio > 0 and not labelled:
        raise ValueError(f"--ratio {ratio} takes image-label samples, but no --image-folder was given")
    if ratio < 1 and not captioned:
        raise ValueError(f"--ratio {ratio} takes image-text samples, but no --captions or --webdataset was given")
    if labelled and captioned and round(ratio * config.batch_size) in (0, config.batch_size):
        raise ValueError(
            f"--ratio {ratio} of --batch-size {config.batch_size} leaves no room for one kind of data; "
            "change either, or drop the data that gets no share"
        )
    if config.captions_per_image < 1:
        raise ValueError(f"--captions-per-image must be >= 1; got {config.captions_per_image}")
    grouped = config.captions_per_image > 1 or config.hard_negatives
    if grouped and not config.captions:
        option = "--captions-per-image" if config.captions_per_image > 1 else "--hard-negatives"
        raise ValueError(f"{option} samples --captions files by image; give --captions (WebDataset pairs are single)")
    if config.class_bank and not (labelled and ratio > 0):
        raise ValueError("--class-bank contrasts --image-folder images with every class: give --image-folder data")
    if config.class_bank and config.webdataset and ratio < 1:
        raise ValueError("--class-bank takes image-text data as --captions files; --webdataset pairs do not combine")
    if (grouped or config.class_bank) and config.hash_captions:
        raise ValueError(
            "--hash-captions does not combine with --class-bank, --captions-per-image or --hard-negatives (a caption's "
            "label there is its image's)"
        )
    if config.eval_classnames is not None and config.eval_folder is None:
        raise ValueError("--eval-classnames needs --eval-folder")
    if config.eval_every and config.eval_folder is None:
        raise ValueError("--eval-every needs --eval-folder")
    if config.resume is not None and config.resume != "auto" and not Path(config.resume).is_file():
        raise ValueError(f"--resume {config.resume!r} is neither 'auto' nor a checkpoint file")
    return dataclasses.replace(config, ratio=ratio)
