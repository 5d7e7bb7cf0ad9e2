"""Evaluation commands: zero-shot classification, image-text retrieval, linear probes (few-shot too), and suites.

This module is the command line only: it parses, checks what the user gave, calls the library and prints. From
Python, `unicl.evaluation.zeroshot.zeroshot_accuracy`, `unicl.evaluation.retrieval.retrieval_recall` and
`unicl.evaluation.probe.run_linear_probe`; from the shell::

    python -m unicl.evaluate zeroshot --model runs/x/final --data imagenet/val --classnames imagenet --templates unicl
    python -m unicl.evaluate retrieval --model unicl_swin_tiny --pretrained in21k_yfcc14m.pth --captions coco.csv
    python -m unicl.evaluate linear-probe --model runs/x/final --train cifar10/train --test cifar10/test
    python -m unicl.evaluate linear-probe --model runs/x/final --train T --test V --shots 5 --seeds 0 1 2
    python -m unicl.evaluate suite examples/elevater_suite.json --model runs/x/final --output results/
    python -m unicl.evaluate wise-ft --model unicl_tiny --pretrained runs/start/final --fine-tuned runs/x/final \\
        --data digits/eval --alphas 0,0.5,1 --output results/wise-ft

``--model`` is a preset (with ``--pretrained`` weights) or a directory written by ``save_pretrained`` or by the
training command (``RUN/final``); the tokenizer is the model's own unless ``--tokenizer`` names another, and its
ids are checked against the text tower. ``--data`` is an ImageFolder root (one folder per class), or a labels CSV
for multi-label data (an ``image`` and a ``labels`` column of ``;``-separated class names). Class names come from
the folders (or the labels), or one per line from ``--classnames`` (in folder order; commas separate synonyms;
``imagenet`` for ImageNet-1k's curated names). Every class is the mean of its prompts from ``--templates``
(``default``, ``plain``, ``clip`` for CLIP's 80 ImageNet templates, ``unicl`` for UniCL's 81, or a file).
``--metric`` picks the reported score: top1, top5, mean_per_class_recall, map_11_point (multi-label: the 11-point
interpolated AP over the distinct scores' operating points, tied scores entering together; ELEVATER's evaluator also
counts precision 1 at recall 0, so its number is ``(1 - max precision) / 11`` higher per class) or roc_auc (two
classes). A linear probe standardises its features and ``--init text`` centres the L2 penalty on the zero-shot head
(L2-SP). The caption file is a CSV (or TSV) with an ``image`` (or ``filepath``) and a ``caption`` (or
``title``) column; an image listed on several rows is one image with several captions
(`unicl.data.datasets.CaptionPairs`). Images go through `unicl.image_transform`. The page docs/evaluation.md defines
every protocol and metric.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

# Only torch-free modules before parsing: --help answers without loading torch, torchvision or PIL. The functions that
# run after parsing import the library.
from unicl._checks import CommandParser, default_workers, first_line, program_name
from unicl.evaluation.names import (
    CLASSNAMES_OPTIONS,
    DEFAULT_METRIC,
    FEATURE_KINDS,
    INITS,
    METRIC_NAMES,
    MULTILABEL_METRIC,
    PRECISIONS,
)
from unicl.text.names import TEMPLATE_SETS

if TYPE_CHECKING:
    import torch
    from torchvision.datasets import ImageFolder

    from unicl.models.model import UniCLModel
    from unicl.text.prompts import Templates
    from unicl.text.tokenizer import Tokenizer

#: The longest message kept of an error found while running.
MESSAGE_LIMIT = 400


class _UsageError(ValueError):
    """A bad input, raised by `_stop` as one line naming the argument; `main` exits with it through the
    sub-command parser's ``error`` (argparse's format, exit status 2)."""


# --- the command line: checking what the user gave --------------------------------------------------------------------


def _stop(line: str) -> NoReturn:
    """Stop on a bad input with its one line (the only place a `_UsageError` is raised)."""
    raise _UsageError(line)


def _usage(argument: str, value: object, error: BaseException | str) -> NoReturn:
    """Stop on a bad input: ``ARGUMENT 'VALUE': PROBLEM``."""
    message = error if isinstance(error, str) else first_line(error, limit=MESSAGE_LIMIT)
    _stop(f"{argument} {str(value)!r}: {message}")


def _device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        _usage("--device", name, "not a device; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and not torch.cuda.is_available():
        _usage("--device", name, "CUDA is not available on this machine")
    return device


def _template_set(value: str | None) -> Templates:
    """``--templates``: a shipped set's name (`unicl.text.prompts.TEMPLATE_SETS`) or a file (`read_templates`)."""
    from unicl.text.prompts import get_templates

    try:
        return get_templates("default" if value is None else value)
    except (OSError, ValueError, TypeError) as error:
        _usage("--templates", value, error)


def _class_names(value: str | None, classes: list[str], data_argument: str) -> list[str]:
    """``--classnames``: the data's own class names, a shipped list's name, or a file, one name per class."""
    from unicl.data.datasets import read_class_names
    from unicl.text.prompts import imagenet_class_names

    if value is None:
        return classes
    if value in CLASSNAMES_OPTIONS:
        names = imagenet_class_names(CLASSNAMES_OPTIONS[value])
    else:
        try:
            names = read_class_names(value)
        except (OSError, ValueError) as error:
            _usage("--classnames", value, error)
    if len(names) != len(classes):
        _usage(
            "--classnames", value,
            f"has {len(names)} names; {data_argument} has {len(classes)} classes (one name per line, in folder order)",
        )  # fmt: skip
    return names


def _image_folder(argument: str, path: Path) -> ImageFolder:
    from torchvision.datasets import ImageFolder

    if not path.is_dir():
        _usage(argument, path, "is not a directory (an ImageFolder root: one sub-folder of images per class)")
    try:
        return ImageFolder(str(path))
    except (FileNotFoundError, ValueError) as error:  # no class folders, or folders without images
        _usage(argument, path, error)


def _metric(value: str | None, classes: int, multilabel: bool) -> str:
    from unicl.evaluation.metrics import check_metric_fits

    metric = value if value is not None else (MULTILABEL_METRIC if multilabel else DEFAULT_METRIC)
    try:
        return check_metric_fits(metric, classes, multilabel)
    except ValueError as error:
        _usage("--metric", metric, error)


def _zeroshot_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Check a zeroshot command's data, names, templates and metric before any model is loaded."""
    from unicl.evaluation.label_files import MultiLabelImages

    data: Path = args.data
    dataset: ImageFolder | MultiLabelImages
    if data.is_dir():
        dataset = _image_folder("--data", data)
    elif data.is_file():
        try:
            dataset = MultiLabelImages(data)
        except (OSError, ValueError) as error:
            _usage("--data", data, error)
    else:
        _usage("--data", data, "does not exist (expected an ImageFolder root or a labels CSV)")
    multilabel = isinstance(dataset, MultiLabelImages)
    class_names = _class_names(args.classnames, dataset.classes, "--data")
    return {
        "dataset": dataset,
        "class_names": class_names,
        "templates": _checked_templates(args.templates, class_names),
        "metric": _metric(args.metric, len(dataset.classes), multilabel),
    }


def _checked_templates(value: str | None, class_names: list[str]) -> Templates:
    from unicl.text.prompts import class_prompts

    templates = _template_set(value)
    if isinstance(templates, Mapping):
        try:
            class_prompts(class_names, templates)  # every class has prompts: checked before the model loads
        except ValueError as error:
            _usage("--templates", value, error)
    return templates


def _retrieval_inputs(args: argparse.Namespace) -> dict[str, Any]:
    from unicl.data.datasets import CaptionPairs

    try:
        return {"captions": CaptionPairs(args.captions)}
    except (OSError, ValueError) as error:
        _usage("--captions", args.captions, error)


def _linear_probe_inputs(args: argparse.Namespace) -> dict[str, Any]:
    train = _image_folder("--train", args.train)
    test = _image_folder("--test", args.test)
    if test.classes != train.classes:
        missing = sorted(set(test.classes) ^ set(train.classes))[:5]
        _usage("--test", args.test, f"must have --train's classes in the same order; they differ in {missing}")
    if args.shots is not None and args.shots < 1:
        _usage("--shots", args.shots, "must be >= 1 (training images per class)")
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        _usage("--seeds", " ".join(map(str, args.seeds)), "must be distinct")
    if args.seeds is not None and len(args.seeds) > 1 and args.shots is None:
        _usage("--seeds", " ".join(map(str, args.seeds)), "several seeds need --shots K (few-shot sampling)")
    if args.shots == 1 and args.l2 is None:
        _usage("--shots", 1, "leaves nothing to hold out for choosing the L2 strength: give --l2")
    if args.shots is not None:
        _check_shots(args.shots, train)
    if args.cache_dir is not None:
        _check_cache_dir(args.cache_dir)
    if args.l2 is not None and not args.l2 > 0:
        _usage("--l2", args.l2, "must be > 0")
    if args.init != "text" and (args.templates is not None or args.classnames is not None):
        _usage("--init", args.init, "--classnames and --templates are for --init text (the zero-shot head)")
    # The text embeddings that start a zero-shot head live in the joint space: --init text means projected features.
    features = args.features or ("projected" if args.init == "text" else "backbone")
    if args.init == "text" and features != "projected":
        _usage("--features", features, "--init text starts the head from text embeddings: use --features projected")
    class_names = _class_names(args.classnames, train.classes, "--train")
    return {
        "train": train,
        "test": test,
        "class_names": class_names,
        "templates": _checked_templates(args.templates, class_names),
        "metric": _metric(args.metric, len(train.classes), multilabel=False),
        "features": features,
    }


def _check_shots(shots: int, train: ImageFolder) -> None:
    """Every class of ``--train`` has ``--shots`` images: counted from the folder listing, before anything loads."""
    from unicl.evaluation.protocols import check_shots

    try:
        check_shots(train.targets, shots, classes=len(train.classes), class_names=train.classes)
    except ValueError as error:
        _usage("--shots", shots, f"{first_line(error, limit=MESSAGE_LIMIT)} in --train")


def _check_cache_dir(cache_dir: Path) -> None:
    """``--cache-dir`` is (or can become) a writable directory: checked before the model loads."""
    if cache_dir.exists() and not cache_dir.is_dir():
        _usage("--cache-dir", cache_dir, "is not a directory")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _usage("--cache-dir", cache_dir, error)
    if not os.access(cache_dir, os.W_OK | os.X_OK):
        _usage("--cache-dir", cache_dir, "is not writable")


def _within(filename: object, directory: Path) -> bool:
    if not isinstance(filename, (str, os.PathLike)):
        return False
    return Path(filename).resolve().is_relative_to(directory.resolve())


def _load_model(args: argparse.Namespace) -> UniCLModel:
    from unicl.models.presets import create_model, is_model_name, list_models
    from unicl.models.serialization import load_model

    source = Path(args.model)
    if source.is_dir():
        if args.pretrained is not None:
            _usage("--pretrained", args.pretrained, "goes with a preset name; --model is already a model directory")
        try:
            return load_model(source)
        except (OSError, ValueError, ImportError) as error:
            _usage("--model", args.model, error)
    if not is_model_name(args.model):
        _usage(
            "--model", args.model,
            f"is neither a model directory (save_pretrained, or a training run's final/) nor a model name "
            f"({', '.join(list_models())})",
        )  # fmt: skip
    try:
        return create_model(args.model, pretrained=args.pretrained)
    except (OSError, ValueError, ImportError) as error:
        # A bad checkpoint file is --pretrained's fault; an adapter's missing library or directory is --model's.
        _usage("--pretrained" if args.pretrained is not None else "--model", args.pretrained or args.model, error)


def _tokenizer(args: argparse.Namespace, model: UniCLModel) -> Tokenizer:
    """``--tokenizer``, by default the model's own (`unicl.models.model_tokenizer`: a model directory's, the one saved
    with ``--pretrained`` weights, in their directory or beside their ``.safetensors`` file, else the preset's);
    either way checked against the text tower."""
    from unicl.models.tokenizers import check_tokenizer_fits, get_tokenizer, model_tokenizer

    try:
        if args.tokenizer is not None:
            source, argument = args.tokenizer, "--tokenizer"
            # A saved directory's tokenizer keeps the context it was trained with; other sources take the tower's.
            context_length = None if Path(source).is_dir() else model.config.text.context_length
            tokenizer = get_tokenizer(source, context_length)
        else:
            source, argument = args.model, "--tokenizer (default: the model's own)"
            tokenizer = model_tokenizer(args.model, args.pretrained)
    except (OSError, ValueError) as error:
        _usage(argument, source, error)
    try:
        check_tokenizer_fits(tokenizer, model.config, argument="--tokenizer")
    except ValueError as error:
        _stop(first_line(error, limit=MESSAGE_LIMIT))  # the message names --tokenizer
    return tokenizer


# --- the command line: running ------------------------------------------------------------------------------------


#: The argument that names each command's images, for errors found while reading them.
DATA_ARGUMENTS = {"zeroshot": "--data", "retrieval": "--captions", "linear-probe": "--train/--test"}


def _needs_text(args: argparse.Namespace) -> bool:
    """Whether the command encodes text: a linear probe with a head that starts at 0 reads images only (so it runs on a
    model saved without a tokenizer)."""
    return args.command != "linear-probe" or args.init == "text"


def _run_task(args: argparse.Namespace, inputs: dict[str, Any], model: UniCLModel, tokenizer: Tokenizer | None) -> dict:
    """Run a checked command; an error is blamed on an argument only when it comes from what that argument names."""
    from unicl.data.unreadable import UnreadableImage, unreadable_message

    try:
        return _evaluate(args, inputs, model, tokenizer)
    except UnreadableImage as error:  # an unreadable or broken image, found only when it is read
        _stop(f"{DATA_ARGUMENTS[args.command]}: {unreadable_message(error)}")
    except OSError as error:
        cache_dir = getattr(args, "cache_dir", None)
        if cache_dir is not None and (_within(error.filename, cache_dir) or _within(error.filename2, cache_dir)):
            _usage("--cache-dir", cache_dir, error)
        raise


def _evaluate(args: argparse.Namespace, inputs: dict[str, Any], model: UniCLModel, tokenizer: Tokenizer | None) -> dict:
    from unicl.data.transforms import image_transform
    from unicl.data.unreadable import reporting_unreadable
    from unicl.evaluation.inference import InferenceOptions
    from unicl.evaluation.probe import run_linear_probe
    from unicl.evaluation.retrieval import retrieval_recall
    from unicl.evaluation.zeroshot import zeroshot_accuracy

    transform = image_transform(model)
    inference = InferenceOptions(
        batch_size=args.batch_size, workers=args.workers, device=_device(args.device), precision=args.precision,
        progress=not args.no_progress,
    )  # fmt: skip
    # The tokenizer is loaded for every command that encodes text (_needs_text).
    if args.command == "zeroshot":
        assert tokenizer is not None
        inputs["dataset"].transform = transform
        return zeroshot_accuracy(
            model, reporting_unreadable(inputs["dataset"]), inputs["class_names"], tokenizer,
            templates=inputs["templates"], metric=inputs["metric"], inference=inference,
        )  # fmt: skip
    if args.command == "retrieval":
        assert tokenizer is not None
        inputs["captions"].transform = transform
        return retrieval_recall(model, reporting_unreadable(inputs["captions"]), tokenizer, inference=inference)
    inputs["train"].transform = transform
    inputs["test"].transform = transform
    return run_linear_probe(
        model, reporting_unreadable(inputs["train"]), reporting_unreadable(inputs["test"]),
        features=inputs["features"], shots=args.shots, seeds=tuple(args.seeds) if args.seeds is not None else (0,),
        init=args.init,
        class_names=inputs["class_names"], tokenizer=tokenizer, templates=inputs["templates"],
        metric=inputs["metric"], l2=args.l2, cache_dir=args.cache_dir, inference=inference,
    )  # fmt: skip


def _check_common(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        _usage("--batch-size", args.batch_size, "must be >= 1")
    if args.workers < 0:
        _usage("--workers", args.workers, "must be >= 0")
    _device(args.device)


INPUTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "zeroshot": _zeroshot_inputs,
    "retrieval": _retrieval_inputs,
    "linear-probe": _linear_probe_inputs,
}


def format_results(results: Mapping[str, Any]) -> str:
    """``key=value`` pairs of the numbers and names of ``results`` (floats to 4 decimals), one line."""
    shown = []
    if isinstance(results.get("mean"), Mapping) and isinstance(results.get("std"), Mapping):  # few-shot over seeds
        shown += [f"{key}={value:.4f}±{results['std'][key]:.4f}" for key, value in results["mean"].items()]
    for key, value in results.items():
        if isinstance(value, float):
            shown.append(f"{key}={value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{key}={value:.3g}")
        elif isinstance(value, (int, str)):
            shown.append(f"{key}={value}")
    return " ".join(shown)


class _EntryParser(CommandParser):
    """The parser of a suite's entries: an error stops with its line (`_stop`), which the suite reports as its
    config's, instead of printing the entry's usage."""

    def error(self, message: str) -> NoReturn:
        _stop(message)


def build_parser(parser_class: type[CommandParser] = CommandParser) -> CommandParser:
    """The ``python -m unicl.evaluate`` parser, its sub-commands' parsers of ``parser_class`` too.

    Built from torch-free data (`unicl.evaluation.names`): ``--help`` loads no torch.
    """
    Parser = parser_class
    parser = Parser(
        prog=program_name("unicl.evaluate"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    common = Parser(add_help=False)
    common.add_argument(
        "--model",
        required=True,
        help="a preset name, a directory written by save_pretrained or unicl.train, open_clip:ARCH (with --pretrained "
        "FILE) or hf:DIR (a transformers CLIPModel or SiglipModel directory)",
    )
    common.add_argument(
        "--pretrained", help="weights for the preset: a release's tag (unicl.list_pretrained, read from "
        "$UNICL_HOME/checkpoints), a microsoft/UniCL .pth, or unicl safetensors (a file or a save_pretrained "
        "directory)",
    )  # fmt: skip
    common.add_argument(
        "--tokenizer",
        help="default: the model's own (its directory's tokenizer.json, else its preset's); or 'clip' (CLIP's BPE), "
        "a tokenizer.json, or a directory written by save_pretrained",
    )
    common.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    common.add_argument(
        "--workers", type=int, default=default_workers(), help="data-loading processes (default: 4, or this "
        "machine's CPUs if fewer)",
    )  # fmt: skip
    common.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda:1', ...")
    common.add_argument(
        "--precision", choices=PRECISIONS, default="bf16", help="bf16 autocast on CUDA (always fp32 on the CPU)"
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    results = Parser(add_help=False)
    results.add_argument("--json", type=Path, help="also write the results here as JSON")
    names = Parser(add_help=False)
    names.add_argument(
        "--classnames",
        help="one class name per line, in folder order (commas separate synonyms), or 'imagenet' (CLIP's curated "
        "ImageNet-1k names) or 'imagenet-unicl' (UniCL's copy)",
    )
    names.add_argument(
        "--templates",
        help=f"prompt templates: a set ({', '.join(TEMPLATE_SETS)}: 'clip' is CLIP's 80 ImageNet templates, "
        "'unicl' UniCL's 81), or a file: one template with {} per line, a JSON list, or a JSON per-class mapping of "
        "prompts (default: default)",
    )
    metric = Parser(add_help=False)
    metric.add_argument("--metric", choices=METRIC_NAMES, help="the score to report (default: top1; map_11_point for "
                        "a labels CSV)")  # fmt: skip
    probe_metric = Parser(add_help=False)
    probe_metric.add_argument("--metric", choices=METRIC_NAMES, help="the score that chooses the L2 strength and is "
                              "reported (default: top1; map_11_point is for multi-label data)")  # fmt: skip

    zeroshot = commands.add_parser(
        "zeroshot", parents=[common, results, names, metric],
        help="zero-shot classification on an ImageFolder or a labels CSV",
        description="Zero-shot classification: each image gets the class whose prompts' mean embedding is nearest.",
    )  # fmt: skip
    zeroshot.add_argument(
        "--data", required=True, type=Path, help="an ImageFolder root, or a CSV of image and ';'-separated labels"
    )

    retrieval = commands.add_parser(
        "retrieval", parents=[common, results], help="image-text retrieval on a caption file",
        description="Recall@1/5/10 both ways; an image is a hit when any of its captions is in the top k.",
    )  # fmt: skip
    retrieval.add_argument("--captions", required=True, type=Path, help="a CSV/TSV of image paths and captions")

    probe = commands.add_parser(
        "linear-probe", parents=[common, results, names, probe_metric],
        help="a logistic-regression head on frozen features",
        description="A linear probe: a multinomial logistic regression on frozen image features, standardised per "
        "dimension with the training samples' mean and scale (CLIP's and clip_benchmark's probes fit raw or unit-norm "
        "features), its L2 strength chosen on a held-out part of the training split, scored on the test split; "
        "--shots K for few-shot.",
    )  # fmt: skip
    probe.add_argument("--train", required=True, type=Path, help="the training split: an ImageFolder root")
    probe.add_argument("--test", required=True, type=Path, help="the test split: an ImageFolder with the same classes")
    probe.add_argument(
        "--features", choices=FEATURE_KINDS,
        help="image features before the projection (backbone: the default, as CLIP's probes) or the projected "
        "embedding (the default with --init text)",
    )  # fmt: skip
    probe.add_argument("--shots", type=int, help="few-shot: K training images per class, drawn per seed")
    probe.add_argument("--seeds", type=int, nargs="+", help="few-shot seeds (default: 0); mean and std over them")
    probe.add_argument(
        "--init", choices=INITS, default="random",
        help="random: the head starts at 0 with plain L2; text: it starts at the class prompts' text embeddings times "
        "the logit scale and its L2 penalty is centred there (L2-SP), not ELEVATER's ordinary weight decay toward 0 "
        "from that start",
    )  # fmt: skip
    probe.add_argument(
        "--l2", type=float, help="a fixed L2 strength λ instead of the held-out sweep (needed for --shots 1); the "
        "penalty is λ/2·||W - W0||² on standardised features",
    )  # fmt: skip
    probe.add_argument("--cache-dir", type=Path, help="cache the image features here (safetensors) for later runs")

    suite = commands.add_parser(
        "suite", parents=[common], help="run a JSON/TOML list of evaluations and tabulate them",
        description="Run every entry of CONFIG (see docs/evaluation.md), one JSON per entry in --output, then "
        "results.csv and results.md; entries whose JSON exists are skipped (--force redoes them).",
    )  # fmt: skip
    suite.add_argument("config", type=Path, help="a .json (or .toml) suite: a list of entries, or {entries: [...]}")
    suite.add_argument("--output", required=True, type=Path, help="the directory of the results")
    suite.add_argument("--root", type=Path, help="where relative dataset paths start (default: the config's 'root', "
                       "else its folder)")  # fmt: skip
    suite.add_argument("--force", action="store_true", help="redo entries whose results exist")

    wise_ft = commands.add_parser(
        "wise-ft", parents=[common, names, metric],
        help="WiSE-FT: mixes of the initial and the fine-tuned weights, each evaluated, in one table",
        description="WiSE-FT (weight-space ensembles): for each coefficient α of --alphas, the weights (1 − α)·initial "
        "+ α·fine-tuned (floating-point parameters and buffers; other buffers the fine-tuned's), with --model "
        "(and --pretrained) the initial weights, as the fine-tuning run was given them, and --fine-tuned its "
        "final/ directory; each mix is evaluated zero-shot on --data or by a --suite, and OUTPUT gets wise_ft.md, "
        "wise_ft.csv and wise_ft.json, one row per α. The tokenizer is the fine-tuned directory's.",
    )  # fmt: skip
    wise_ft.add_argument("--fine-tuned", required=True, type=Path, help="the fine-tuned model: a training run's "
                         "final/ or a save_pretrained directory of --model's architecture")  # fmt: skip
    wise_ft.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="the mixing coefficients, comma-separated: 0 "
                         "is the initial model, 1 the fine-tuned (default: 0,0.25,0.5,0.75,1)")  # fmt: skip
    wise_ft.add_argument("--data", type=Path, help="zero-shot evaluation: an ImageFolder root, or a CSV of image and "
                         "';'-separated labels")  # fmt: skip
    wise_ft.add_argument("--suite", type=Path, help="evaluate each mix by this suite config (.json or .toml) "
                         "instead, its results in OUTPUT/alpha-A/")  # fmt: skip
    wise_ft.add_argument("--root", type=Path, help="where the suite's relative dataset paths start (default: the "
                         "config's 'root', else its folder)")  # fmt: skip
    wise_ft.add_argument("--output", required=True, type=Path, help="the directory of the table (and of the suites' "
                         "results)")  # fmt: skip
    wise_ft.add_argument("--save", type=float, metavar="ALPHA", help="also write the mix of this coefficient to "
                         "OUTPUT/model-alpha-ALPHA (save_pretrained, with the tokenizer)")  # fmt: skip
    wise_ft.add_argument("--force", action="store_true", help="redo suite entries whose results exist")
    return parser


def _prepare_suite(args: argparse.Namespace, config: Path, argument: str) -> tuple[list, list]:
    """Read the suite ``config`` (named ``argument`` in errors) and check every entry before the first one runs:
    ``(entries, [(entry, its parsed arguments, its checked inputs), ...])``."""
    from unicl.evaluation.suite import read_suite

    try:
        entries = read_suite(config, root=args.root)
    except (OSError, ValueError) as error:
        _usage(argument, config, error)
    common = [
        "--model", args.model, "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        "--device", args.device, "--precision", args.precision,
        *(["--pretrained", args.pretrained] if args.pretrained is not None else []),
        *(["--tokenizer", args.tokenizer] if args.tokenizer is not None else []),
        *(["--no-progress"] if args.no_progress else []),
    ]  # fmt: skip
    parser = build_parser(_EntryParser)
    prepared = []
    for number, entry in enumerate(entries, 1):
        try:
            entry_args = parser.parse_args([entry.task, *common, *entry.arguments()])
            prepared.append((entry, entry_args, INPUTS[entry.task](entry_args)))
        except _UsageError as error:
            _usage(argument, config, f"entry {number} ({entry.name!r}): {error}")
    return entries, prepared


def _suite_runner(
    config: Path, argument: str, prepared: list, load: Callable[[], UniCLModel],
    tokenizer_of: Callable[[UniCLModel], Tokenizer],
) -> Callable[[int], dict[str, Any]]:  # fmt: skip
    """The suite's ``run_entry``: the model loads (``load``) when the first entry needs it (a rerun with every entry
    done loads nothing), the tokenizer (``tokenizer_of``) when the first entry that encodes text does."""
    loaded: dict[str, Any] = {}

    def run_entry(index: int) -> dict[str, Any]:
        if "model" not in loaded:
            loaded["model"] = load()
        entry, entry_args, inputs = prepared[index]
        if "tokenizer" not in loaded and _needs_text(entry_args):
            loaded["tokenizer"] = tokenizer_of(loaded["model"])
        try:
            return _run_task(entry_args, inputs, loaded["model"], loaded.get("tokenizer"))
        except (OSError, ValueError) as error:  # the entries before it are saved: a rerun resumes at this one
            message = str(error) if isinstance(error, _UsageError) else first_line(error, limit=MESSAGE_LIMIT)
            _usage(argument, config, f"entry {index + 1} ({entry.name!r}): {message}")

    return run_entry


def _fingerprint(args: argparse.Namespace) -> dict[str, Any]:
    """`unicl.evaluation.suite.model_fingerprint` of the command's model, hashed without loading it (a finished
    suite's rerun stays instant)."""
    from unicl.evaluation.suite import model_fingerprint

    try:
        return model_fingerprint(args.model, args.pretrained, args.tokenizer, args.precision)
    except OSError as error:
        _usage("--model/--pretrained/--tokenizer", error.filename, error)


def _run_suite(args: argparse.Namespace) -> dict[str, Any]:
    from unicl.evaluation.suite import ForeignResultsError, run_suite

    entries, prepared = _prepare_suite(args, args.config, "config")
    run_entry = _suite_runner(args.config, "config", prepared, lambda: _load_model(args), lambda m: _tokenizer(args, m))
    fingerprint = _fingerprint(args)
    try:
        return run_suite(entries, args.output, run_entry, force=args.force, log=sys.stderr, fingerprint=fingerprint)
    except ForeignResultsError as error:
        _usage("--output", args.output, error)


def _alphas(value: str) -> list[float]:
    """``--alphas``: distinct finite numbers, separated by commas."""
    try:
        alphas = [float(part) for part in value.split(",")]
    except ValueError:
        _usage("--alphas", value, "expected numbers separated by commas, such as 0,0.25,0.5,0.75,1")
    if not all(math.isfinite(alpha) for alpha in alphas) or len(set(alphas)) != len(alphas):
        _usage("--alphas", value, "expected distinct finite numbers, such as 0,0.25,0.5,0.75,1")
    return alphas


def _fine_tuned_model(args: argparse.Namespace, initial: UniCLModel) -> UniCLModel:
    """``--fine-tuned``: a model directory of ``--model``'s architecture."""
    from unicl.evaluation.wise_ft import check_interpolable
    from unicl.models.serialization import load_model

    try:
        fine_tuned = load_model(args.fine_tuned)
    except (OSError, ValueError) as error:
        _usage("--fine-tuned", args.fine_tuned, error)
    try:
        check_interpolable(initial, fine_tuned)
    except ValueError as error:
        _usage("--fine-tuned", args.fine_tuned, f"cannot be mixed with --model {args.model}: {error}")
    return fine_tuned


def _warn_other_start(args: argparse.Namespace) -> None:
    """A warning on standard error when the fine-tuning run (its ``training.json``) started from other weights than
    ``--model`` and ``--pretrained`` name: mixing with another start is allowed, but usually a forgotten option."""
    try:
        summary = json.loads((args.fine_tuned / "training.json").read_text())
        options = summary["options"]
        started = (options["model"], options.get("pretrained"))
        # The run's relative paths resolve where it ran (older runs did not record it: here, then).
        ran_in = Path(summary.get("working_directory") or Path.cwd())
    except (OSError, ValueError, KeyError, TypeError):  # not a training run's final/: nothing to compare with
        return

    from unicl.models.adapters import model_source

    def where(pretrained: str | None, base: Path) -> str | None:
        """A file or directory as its absolute path; a release's tag (or a missing file) as it is spelt."""
        if pretrained is None or not (base / pretrained).exists():
            return pretrained
        return str((base / pretrained).resolve())

    # Compared as places, not spellings: hf:DIR (and a model directory) by its resolved directory.
    same_model = model_source(started[0], ran_in) == model_source(args.model)
    if not same_model or where(started[1], ran_in) != where(args.pretrained, Path.cwd()):
        print(
            f"warning: --fine-tuned {args.fine_tuned} was trained from --model {started[0]} --pretrained {started[1]},"
            f" not from --model {args.model} --pretrained {args.pretrained}: the mixes start from other weights",
            file=sys.stderr,
        )


def _run_wise_ft(args: argparse.Namespace) -> dict[str, Any]:
    """WiSE-FT: every ``--alphas`` mix of ``--model`` (the initial weights) and ``--fine-tuned``, evaluated on
    ``--data`` (zero-shot) or by ``--suite``, in one table; ``--save ALPHA`` also writes that mix."""
    from unicl.evaluation.suite import ForeignResultsError, run_suite, source_digest
    from unicl.evaluation.wise_ft import interpolated_model, write_wise_ft_tables

    alphas = _alphas(args.alphas)
    if args.save is not None and not math.isfinite(args.save):
        _usage("--save", args.save, "must be a finite mixing coefficient")
    if not args.fine_tuned.is_dir():
        _usage("--fine-tuned", args.fine_tuned, "is not a directory (a training run's final/ or save_pretrained's)")
    if (args.data is None) == (args.suite is None):
        _stop("give the evaluation as --data (an ImageFolder or labels CSV, zero-shot) or as --suite (a suite config)")
    if args.suite is not None and (args.classnames, args.templates, args.metric) != (None, None, None):
        _usage("--suite", args.suite, "its entries name their own --classnames, --templates and --metric")
    if args.data is not None:
        inputs = _zeroshot_inputs(args)
    else:
        entries, prepared = _prepare_suite(args, args.suite, "--suite")
        fingerprint = {**_fingerprint(args), "fine_tuned": str(args.fine_tuned),
                       "fine_tuned_digest": source_digest(args.fine_tuned)}  # fmt: skip
    _warn_other_start(args)
    initial = _load_model(args)
    fine_tuned = _fine_tuned_model(args, initial)
    # The fine-tuned run's tokenizer, the one `zeroshot --model RUN/final` uses (a run started from --pretrained
    # weights keeps theirs), unless --tokenizer names another.
    tokenizer = _tokenizer(argparse.Namespace(model=str(args.fine_tuned), pretrained=None, tokenizer=args.tokenizer),
                           fine_tuned)  # fmt: skip
    results: list[tuple[float, dict[str, float]]] = []
    for alpha in alphas:
        started = time.perf_counter()
        model = interpolated_model(initial, fine_tuned, alpha)
        if args.data is not None:
            scored = _run_task(argparse.Namespace(**{**vars(args), "command": "zeroshot"}), inputs, model, tokenizer)
            scores = {name: float(scored[name]) for name in ("top1", "top5", scored["metric"]) if name in scored}
        else:
            # Called within this iteration, so the lambdas see this α's model.
            run_entry = _suite_runner(args.suite, "--suite", prepared, lambda: model, lambda _: tokenizer)  # noqa: B023
            try:
                run_suite(entries, args.output / f"alpha-{alpha:g}", run_entry, force=args.force, log=sys.stderr,
                          fingerprint={**fingerprint, "alpha": alpha})  # fmt: skip
            except ForeignResultsError as error:
                _usage("--output", args.output, error)
            records = [json.loads((args.output / f"alpha-{alpha:g}" / f"{e.name}.json").read_text()) for e in entries]
            scores = {record["name"]: float(record["score"]) for record in records}
        results.append((alpha, scores))
        shown = " ".join(f"{name}={score:.4f}" for name, score in scores.items())
        print(f"alpha={alpha:g}: {shown} in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    details = {
        "model": args.model, "pretrained": args.pretrained, "fine_tuned": str(args.fine_tuned),
        "evaluation": {"data": str(args.data)} if args.data is not None else {"suite": str(args.suite)},
    }  # fmt: skip
    paths = write_wise_ft_tables(results, args.output, details)
    summary: dict[str, Any] = {name: str(path) for name, path in paths.items()}
    if args.save is not None:
        saved = args.output / f"model-alpha-{args.save:g}"
        interpolated_model(initial, fine_tuned, args.save).save_pretrained(saved, tokenizer=tokenizer)
        summary["saved"] = str(saved)
        print(f"alpha={args.save:g} saved in {saved}", file=sys.stderr)
    return summary


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of command ``name`` (its errors show its own usage)."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the command in ``argv`` (default: ``sys.argv``), print its results on one line and return them.

    Every bad input ends the process with one line naming the argument (exit status 2), never a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        _check_common(args)
        if args.command in ("suite", "wise-ft"):
            summary = _run_suite(args) if args.command == "suite" else _run_wise_ft(args)
            print(Path(summary["markdown"]).read_text(), end="")
            return summary
        inputs = INPUTS[args.command](args)
        model = _load_model(args)
        results = _run_task(args, inputs, model, _tokenizer(args, model) if _needs_text(args) else None)
    except _UsageError as error:
        _subcommand(parser, args.command).error(str(error))
    except (OSError, ValueError) as error:  # bad data found while running (an unreadable image, say)
        _subcommand(parser, args.command).error(first_line(error, limit=MESSAGE_LIMIT))
    print(format_results(results))
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
