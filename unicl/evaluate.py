"""Evaluation commands: zero-shot classification, image-text retrieval, linear probes (few-shot too), and suites.

From Python, `zeroshot_accuracy` and `retrieval_recall` (linear probes: `unicl.evaluation.run_linear_probe`); from
the shell::

    python -m unicl.evaluate zeroshot --model runs/x/final --data imagenet/val --classnames imagenet --templates unicl
    python -m unicl.evaluate retrieval --model unicl_swin_tiny --pretrained in21k_yfcc14m.pth --captions coco.csv
    python -m unicl.evaluate linear-probe --model runs/x/final --train cifar10/train --test cifar10/test
    python -m unicl.evaluate linear-probe --model runs/x/final --train T --test V --shots 5 --seeds 0 1 2
    python -m unicl.evaluate suite examples/elevater_suite.json --model runs/x/final --output results/

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
``title``) column; an image listed on several rows is one image with several captions. Images go through
`unicl.image_transform`. The page docs/evaluation.md defines every protocol and metric.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from unicl._checks import check_positive_int, first_line, program_name
from unicl.data.datasets import load_rgb, read_caption_file, read_class_names
from unicl.data.transforms import image_transform
from unicl.evaluation.inference import inference_autocast, inference_batches
from unicl.evaluation.label_files import MultiLabelImages
from unicl.evaluation.metrics import METRICS, compute_metric
from unicl.evaluation.probe import run_linear_probe
from unicl.evaluation.protocols import check_shots
from unicl.evaluation.zeroshot import build_zeroshot_classifier, zeroshot_logits
from unicl.models import UniCLModel, create_model, list_models, load_model
from unicl.text.prompts import (
    DEFAULT_TEMPLATES,
    TEMPLATE_SETS,
    Templates,
    class_prompts,
    get_templates,
    imagenet_class_names,
)
from unicl.text.tokenizer import Tokenizer

TOP_K = (1, 5)
RECALL_AT = (1, 5, 10)
#: The metric a command reports when ``--metric`` is not given.
DEFAULT_METRIC = "top1"
MULTILABEL_METRIC = "map_11_point"
#: ``--classnames`` names of the shipped class-name lists: ImageNet-1k's as CLIP curated them, and UniCL's copy.
CLASS_NAME_SETS = {"imagenet": "clip", "imagenet-unicl": "unicl"}


class UsageError(ValueError):
    """A bad command-line input; the message is one line that names the argument."""


class UnreadableImage(OSError):
    """An image of the command's data that cannot be read or decoded, found only when it is read."""


def _read_or_report(read: Callable[[Any], Any], argument: Any) -> Any:
    try:
        return read(argument)
    except UnreadableImage:
        raise
    except (OSError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError; a bad mode a ValueError
        raise UnreadableImage(first_line(error, limit=400)) from error


class _ReportingLoader:
    """An ImageFolder's ``loader`` whose read errors are `UnreadableImage` (a class, so worker processes can take
    it)."""

    def __init__(self, loader: Callable[[str], Any]) -> None:
        self.loader = loader

    def __call__(self, path: str) -> Any:
        return _read_or_report(self.loader, path)


class _ReportingDataset(Dataset):
    """``dataset`` (with its ``classes``) whose samples' read errors are `UnreadableImage`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return _read_or_report(self.dataset.__getitem__, index)


def _reporting_unreadable(dataset: Dataset) -> Dataset:
    """``dataset`` with its image-read errors raised as `UnreadableImage`; an ImageFolder stays one (the feature
    cache identifies it by its files)."""
    if isinstance(dataset, ImageFolder):
        if not isinstance(dataset.loader, _ReportingLoader):
            dataset.loader = _ReportingLoader(dataset.loader)
        return dataset
    return dataset if isinstance(dataset, (_ReportingDataset, CaptionFile)) else _ReportingDataset(dataset)


def _unreadable_message(error: UnreadableImage) -> str:
    """The error's own line, also when a DataLoader worker re-raised it with the worker's traceback in front."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught "):
        last = lines[-1]
        # The traceback names the type with its module, except for __main__ (python -m unicl.evaluate).
        name = type(error).__qualname__
        for prefix in (f"{type(error).__module__}.{name}: ", f"{name}: "):
            last = last.removeprefix(prefix)
        return last[:400]
    return first_line(error, limit=400)


class CaptionFile(Dataset):
    """``(image, caption)`` rows of a CSV/TSV file (see the module docstring), images through ``transform``.

    Attributes:
        image_paths: the distinct images, in first-seen order.
        image_index: ``[rows]`` which distinct image each row's caption describes.
        captions: every row's caption.

    Raises:
        FileNotFoundError: the file or one of its images is missing.
        ValueError: no header with an image and a caption column, or no rows.
    """

    def __init__(self, path: str | Path, transform: Callable[[Image.Image], torch.Tensor] | None) -> None:
        rows = read_caption_file(path)
        index_of: dict[Path, int] = {}
        self.image_index: list[int] = [index_of.setdefault(image_path, len(index_of)) for image_path, _ in rows]
        self.image_paths = list(index_of)
        self.captions = [caption for _, caption in rows]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.transform is None:
            raise RuntimeError("CaptionFile.transform is not set")
        return self.transform(_read_or_report(load_rgb, self.image_paths[index]))


def check_metric_fits(metric: str, num_classes: int, multilabel: bool) -> str:
    """Return ``metric`` if it scores data of ``num_classes`` classes (multi-label or not), else raise.

    ``map_11_point`` is for multi-label data only and multi-label data only has it; ``roc_auc`` needs exactly two
    classes; ``top5`` at least five.

    Raises:
        ValueError: an unknown metric (the message lists them) or one that does not fit the data.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if multilabel and metric != MULTILABEL_METRIC:
        raise ValueError(f"{metric} scores one class per image; multi-label data is scored with {MULTILABEL_METRIC}")
    if not multilabel and metric == MULTILABEL_METRIC:
        raise ValueError(
            f"{metric} is for multi-label data (a labels CSV); this data has one class per image: use top1 or "
            "mean_per_class_recall"
        )
    if metric == "roc_auc" and num_classes != 2:
        raise ValueError(f"roc_auc scores binary data (2 classes); this data has {num_classes} classes")
    if metric == "top5" and num_classes < 5:
        raise ValueError(f"top5 needs at least 5 classes; this data has {num_classes}")
    return metric


def classification_results(scores: torch.Tensor, targets: torch.Tensor, metric: str | None = None) -> dict[str, Any]:
    """The metrics every classification command reports, from all of a dataset's scores.

    Args:
        scores: ``[N, C]`` class scores.
        targets: ``[N]`` class ids, or ``[N, C]`` multi-hot (multi-label data).
        metric: the dataset's metric (default ``top1``, or ``map_11_point`` for multi-label targets).

    Returns:
        Single-label: ``{"top1", "top5" (with >= 5 classes), metric (when another), "metric", "images", "classes"}``;
        multi-label: ``{"map_11_point", "metric", "images", "classes"}``.

    Raises:
        ValueError: a metric that does not fit the data (`check_metric_fits`).
    """
    multilabel = targets.dim() == 2
    num_images, num_classes = scores.shape
    if metric is None:
        metric = MULTILABEL_METRIC if multilabel else DEFAULT_METRIC
    check_metric_fits(metric, num_classes, multilabel)
    names = [metric] if multilabel else [f"top{k}" for k in TOP_K if k <= num_classes]
    names += [] if metric in names else [metric]
    results: dict[str, Any] = {name: compute_metric(name, scores, targets) for name in names}
    return {**results, "metric": metric, "images": num_images, "classes": num_classes}


@torch.no_grad()
def zeroshot_scores(
    model: UniCLModel,
    dataset: Dataset,
    classifier: torch.Tensor,
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot logits of every image of ``dataset`` against ``classifier`` and the images' targets.

    Args:
        model: the model (moved to ``device``, put in eval mode).
        dataset: ``(image tensor, target)`` samples: a class id, or a ``[C]`` multi-hot row.
        classifier: ``[C, D]`` from `unicl.evaluation.zeroshot.build_zeroshot_classifier`.
        batch_size: images per batch.
        workers: data-loading processes.
        device: where to run.
        precision: ``"fp32"``, or ``"bf16"`` (autocast, on CUDA only).
        progress: show a progress bar on standard error.

    Returns:
        ``([N, C] float32 logits 100·cos, [N] or [N, C] targets)``, on the CPU.
    """
    check_positive_int("batch_size", batch_size)
    device = torch.device(device)
    model = model.to(device).eval()
    scores, targets = [], []
    for images, batch_targets in inference_batches(dataset, batch_size, workers, progress, "zero-shot"):
        with inference_autocast(device, precision):
            features = model.encode_image(images.to(device))
        scores.append(zeroshot_logits(features.float(), classifier).cpu())
        targets.append(torch.as_tensor(batch_targets))
    if not scores:
        raise ValueError("dataset has no images")
    return torch.cat(scores), torch.cat(targets)


@torch.no_grad()
def zeroshot_accuracy(
    model: UniCLModel,
    dataset: Dataset,
    class_names: Sequence[str | Sequence[str]],
    tokenizer: Tokenizer,
    *,
    templates: Templates = DEFAULT_TEMPLATES,
    metric: str | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> dict[str, Any]:
    """Zero-shot classification of ``dataset`` by ``model``: top-1, top-5 and the dataset's metric.

    Every class is the normalised mean of its normalised prompt embeddings; an image's score for a class is
    ``100 · cos(image, class)``; the metrics are those of `unicl.evaluation.metrics` on all scores at once.

    Args:
        model: the model (moved to ``device``, put in eval mode).
        dataset: ``(image tensor, class id)`` samples, e.g. a torchvision ``ImageFolder`` with
            `unicl.image_transform`, or ``(image tensor, [C] multi-hot)`` ones (`MultiLabelImages`).
        class_names: one name (or list of synonyms) per class id.
        tokenizer: the model's tokenizer.
        templates: prompt templates (every class is the mean of its prompts), or a per-class mapping of complete
            prompts (`unicl.text.prompts.read_templates`).
        metric: the dataset's metric (see `classification_results`; default ``top1``, ``map_11_point`` for
            multi-label data).
        batch_size: images per batch.
        workers: data-loading processes.
        device: where to run.
        precision: ``"fp32"``, or ``"bf16"`` (autocast, on CUDA only).
        progress: show a progress bar on standard error.

    Returns:
        ``{"top1": ..., "top5": ..., "metric": name, "images": N, "classes": C}`` (``top5`` only with at least 5
        classes; the metric's own value too when it is another; see `classification_results`).

    Raises:
        ValueError: a dataset whose ``classes`` are not as many as ``class_names`` (before any image is read).
    """
    check_positive_int("batch_size", batch_size)
    dataset_classes = getattr(dataset, "classes", None)
    if dataset_classes is not None and len(dataset_classes) != len(class_names):
        raise ValueError(f"dataset has {len(dataset_classes)} classes but {len(class_names)} class names were given")
    device = torch.device(device)
    model = model.to(device).eval()
    with inference_autocast(device, precision):
        classifier = build_zeroshot_classifier(model, tokenizer, class_names, templates, device=device)
    scores, targets = zeroshot_scores(
        model, dataset, classifier, batch_size=batch_size, workers=workers, device=device, precision=precision,
        progress=progress,
    )  # fmt: skip
    return classification_results(scores, targets, metric)


@torch.no_grad()
def retrieval_recall(
    model: UniCLModel,
    captions: CaptionFile,
    tokenizer: Tokenizer,
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> dict[str, float]:
    """Image→text and text→image recall@1/5/10 over a caption file.

    An image query is a hit at ``k`` when ANY of its captions ranks in its top ``k`` captions (clip_benchmark's
    rule for several captions per image); a caption query when its image ranks in its top ``k`` images.

    Returns:
        ``{"image_to_text_R@1": ..., ..., "text_to_image_R@10": ..., "images": I, "captions": T}``.
    """
    check_positive_int("batch_size", batch_size)
    device = torch.device(device)
    model = model.to(device).eval()
    image_features = []
    for images in inference_batches(captions, batch_size, workers, progress, "images"):
        with inference_autocast(device, precision):
            image_features.append(F.normalize(model.encode_image(images.to(device)).float(), dim=-1))
    text_features = []
    for start in range(0, len(captions.captions), batch_size):
        batch = tokenizer(captions.captions[start : start + batch_size])
        with inference_autocast(device, precision):
            encoded = model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        text_features.append(F.normalize(encoded.float(), dim=-1))
    similarity = (torch.cat(image_features) @ torch.cat(text_features).T).cpu()  # [images, captions]
    owner = torch.tensor(captions.image_index)
    matches = owner[None, :] == torch.arange(similarity.shape[0])[:, None]  # caption j describes image i
    results: dict[str, float] = {}
    for k in RECALL_AT:
        top_captions = similarity.topk(min(k, similarity.shape[1]), dim=1).indices
        results[f"image_to_text_R@{k}"] = float(matches.gather(1, top_captions).any(dim=1).double().mean())
        top_images = similarity.T.topk(min(k, similarity.shape[0]), dim=1).indices
        results[f"text_to_image_R@{k}"] = float((top_images == owner[:, None]).any(dim=1).double().mean())
    return {**results, "images": similarity.shape[0], "captions": similarity.shape[1]}


# --- the command line: checking what the user gave --------------------------------------------------------------------


def default_workers() -> int:
    """``--workers`` by default: 4, or this machine's CPUs if fewer (more workers than CPUs only slow loading)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cpus)


def _usage(argument: str, value: object, error: BaseException | str) -> NoReturn:
    message = error if isinstance(error, str) else first_line(error, limit=400)
    raise UsageError(f"{argument} {str(value)!r}: {message}")


def _device(name: str) -> torch.device:
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
    try:
        return get_templates("default" if value is None else value)
    except (OSError, ValueError, TypeError) as error:
        _usage("--templates", value, error)


def _class_names(value: str | None, classes: list[str], data_argument: str) -> list[str]:
    """``--classnames``: the data's own class names, a shipped list's name, or a file, one name per class."""
    if value is None:
        return classes
    if value in CLASS_NAME_SETS:
        names = imagenet_class_names(CLASS_NAME_SETS[value])
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
    if not path.is_dir():
        _usage(argument, path, "is not a directory (an ImageFolder root: one sub-folder of images per class)")
    try:
        return ImageFolder(str(path))
    except (FileNotFoundError, ValueError) as error:  # no class folders, or folders without images
        _usage(argument, path, error)


def _metric(value: str | None, classes: int, multilabel: bool) -> str:
    metric = value if value is not None else (MULTILABEL_METRIC if multilabel else DEFAULT_METRIC)
    try:
        return check_metric_fits(metric, classes, multilabel)
    except ValueError as error:
        _usage("--metric", metric, error)


def _zeroshot_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Check a zeroshot command's data, names, templates and metric before any model is loaded."""
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
    templates = _template_set(value)
    if isinstance(templates, Mapping):
        try:
            class_prompts(class_names, templates)  # every class has prompts: checked before the model loads
        except ValueError as error:
            _usage("--templates", value, error)
    return templates


def _retrieval_inputs(args: argparse.Namespace) -> dict[str, Any]:
    try:
        return {"captions": CaptionFile(args.captions, None)}
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
    try:
        check_shots(train.targets, shots, classes=len(train.classes), class_names=train.classes)
    except ValueError as error:
        _usage("--shots", shots, f"{first_line(error, limit=400)} in --train")


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
    source = Path(args.model)
    if source.is_dir():
        if args.pretrained is not None:
            _usage("--pretrained", args.pretrained, "goes with a preset name; --model is already a model directory")
        try:
            return load_model(source)
        except (OSError, ValueError) as error:
            _usage("--model", args.model, error)
    if args.model not in list_models():
        _usage(
            "--model", args.model,
            f"is neither a model directory (save_pretrained, or a training run's final/) nor a preset "
            f"({', '.join(list_models())})",
        )  # fmt: skip
    try:
        return create_model(args.model, pretrained=args.pretrained)
    except (OSError, ValueError) as error:
        _usage("--pretrained", args.pretrained, error)


def _tokenizer(args: argparse.Namespace, model: UniCLModel) -> Tokenizer:
    """``--tokenizer``, by default the model's own (`unicl.models.model_tokenizer`: a model directory's, the one saved
    with ``--pretrained`` weights, in their directory or beside their ``.safetensors`` file, else the preset's);
    either way checked against the text tower."""
    from unicl import get_tokenizer
    from unicl.models import check_tokenizer_fits, model_tokenizer

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
        raise UsageError(first_line(error, limit=400)) from None
    return tokenizer


# --- the command line: running ------------------------------------------------------------------------------------


#: The argument that names each command's images, for errors found while reading them.
DATA_ARGUMENTS = {"zeroshot": "--data", "retrieval": "--captions", "linear-probe": "--train/--test"}


def _run_task(args: argparse.Namespace, inputs: dict[str, Any], model: UniCLModel, tokenizer: Tokenizer) -> dict:
    """Run a checked command; an error is blamed on an argument only when it comes from what that argument names."""
    try:
        return _evaluate(args, inputs, model, tokenizer)
    except UnreadableImage as error:  # an unreadable or broken image, found only when it is read
        raise UsageError(f"{DATA_ARGUMENTS[args.command]}: {_unreadable_message(error)}") from None
    except OSError as error:
        cache_dir = getattr(args, "cache_dir", None)
        if cache_dir is not None and (_within(error.filename, cache_dir) or _within(error.filename2, cache_dir)):
            _usage("--cache-dir", cache_dir, error)
        raise


def _evaluate(args: argparse.Namespace, inputs: dict[str, Any], model: UniCLModel, tokenizer: Tokenizer) -> dict:
    transform = image_transform(model)
    options = {
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": _device(args.device),
        "precision": args.precision,
        "progress": not args.no_progress,
    }
    if args.command == "zeroshot":
        inputs["dataset"].transform = transform
        return zeroshot_accuracy(
            model, _reporting_unreadable(inputs["dataset"]), inputs["class_names"], tokenizer,
            templates=inputs["templates"], metric=inputs["metric"], **options,
        )  # fmt: skip
    if args.command == "retrieval":
        inputs["captions"].transform = transform
        return retrieval_recall(model, inputs["captions"], tokenizer, **options)
    inputs["train"].transform = transform
    inputs["test"].transform = transform
    return run_linear_probe(
        model, _reporting_unreadable(inputs["train"]), _reporting_unreadable(inputs["test"]),
        features=inputs["features"], shots=args.shots, seeds=tuple(args.seeds) if args.seeds is not None else (0,),
        init=args.init,
        class_names=inputs["class_names"], tokenizer=tokenizer, templates=inputs["templates"],
        metric=inputs["metric"], l2=args.l2, cache_dir=args.cache_dir, **options,
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


class _Parser(argparse.ArgumentParser):
    """A parser whose errors raise `UsageError` when ``raise_errors`` (the suite parses its entries with one)."""

    raise_errors = False

    def error(self, message: str) -> NoReturn:
        if self.raise_errors:
            raise UsageError(message)
        super().error(message)


def build_parser(raise_errors: bool = False) -> argparse.ArgumentParser:
    """The ``python -m unicl.evaluate`` parser (with ``raise_errors``, its errors raise `UsageError`)."""

    class Parser(_Parser):
        pass

    Parser.raise_errors = raise_errors
    parser = Parser(
        prog=program_name("unicl.evaluate"), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    common = Parser(add_help=False)
    common.add_argument(
        "--model", required=True, help="a preset name, or a directory written by save_pretrained or unicl.train"
    )
    common.add_argument("--pretrained", help="weights for the preset: a microsoft/UniCL .pth or unicl safetensors")
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
        "--precision", choices=("bf16", "fp32"), default="bf16", help="bf16 autocast on CUDA (always fp32 on the CPU)"
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
        help=f"prompt templates: a set ({', '.join(TEMPLATE_SETS)}: 'clip' is CLIP's 80 ImageNet templates, 'unicl' "
        "UniCL's 81), or a file: one template with {} per line, a JSON list, or a JSON per-class mapping of prompts "
        "(default: default)",
    )
    metric = Parser(add_help=False)
    metric.add_argument("--metric", choices=tuple(METRICS), help="the score to report (default: top1; map_11_point for "
                        "a labels CSV)")  # fmt: skip
    probe_metric = Parser(add_help=False)
    probe_metric.add_argument("--metric", choices=tuple(METRICS), help="the score that chooses the L2 strength and is "
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
        "--features", choices=("backbone", "projected"),
        help="image features before the projection (backbone: the default, as CLIP's probes) or the projected "
        "embedding (the default with --init text)",
    )  # fmt: skip
    probe.add_argument("--shots", type=int, help="few-shot: K training images per class, drawn per seed")
    probe.add_argument("--seeds", type=int, nargs="+", help="few-shot seeds (default: 0); mean and std over them")
    probe.add_argument(
        "--init", choices=("random", "text"), default="random",
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
    return parser


def _run_suite(args: argparse.Namespace) -> dict[str, Any]:
    from unicl.evaluation.suite import ForeignResultsError, model_fingerprint, read_suite, run_suite

    try:
        entries = read_suite(args.config, root=args.root)
    except (OSError, ValueError) as error:
        _usage("config", args.config, error)
    common = [
        "--model", args.model, "--batch-size", str(args.batch_size), "--workers", str(args.workers),
        "--device", args.device, "--precision", args.precision,
        *(["--pretrained", args.pretrained] if args.pretrained is not None else []),
        *(["--tokenizer", args.tokenizer] if args.tokenizer is not None else []),
        *(["--no-progress"] if args.no_progress else []),
    ]  # fmt: skip
    parser = build_parser(raise_errors=True)
    prepared = []
    for number, entry in enumerate(entries, 1):  # every entry is checked before the first one runs
        try:
            entry_args = parser.parse_args([entry.task, *common, *entry.arguments()])
            prepared.append((entry, entry_args, INPUTS[entry.task](entry_args)))
        except UsageError as error:
            _usage("config", args.config, f"entry {number} ({entry.name!r}): {error}")
    loaded: dict[str, Any] = {}

    def run_entry(index: int) -> dict[str, Any]:
        if not loaded:  # the model loads when the first entry needs it: a rerun with every entry done loads nothing
            loaded["model"] = _load_model(args)
            loaded["tokenizer"] = _tokenizer(args, loaded["model"])
        entry, entry_args, inputs = prepared[index]
        try:
            return _run_task(entry_args, inputs, loaded["model"], loaded["tokenizer"])
        except (OSError, ValueError) as error:  # the entries before it are saved: a rerun resumes at this one
            message = str(error) if isinstance(error, UsageError) else first_line(error, limit=400)
            _usage("config", args.config, f"entry {index + 1} ({entry.name!r}): {message}")

    # The results depend on the files behind these arguments, hashed without loading the model (a finished
    # suite's rerun stays instant).
    try:
        fingerprint = model_fingerprint(args.model, args.pretrained, args.tokenizer, args.precision)
    except OSError as error:
        _usage("--model/--pretrained/--tokenizer", error.filename, error)
    try:
        return run_suite(entries, args.output, run_entry, force=args.force, log=sys.stderr, fingerprint=fingerprint)
    except ForeignResultsError as error:
        _usage("--output", args.output, error)


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
        if args.command == "suite":
            summary = _run_suite(args)
            print(Path(summary["markdown"]).read_text(), end="")
            return summary
        inputs = INPUTS[args.command](args)
        model = _load_model(args)
        results = _run_task(args, inputs, model, _tokenizer(args, model))
    except UsageError as error:
        _subcommand(parser, args.command).error(str(error))
    except (OSError, ValueError) as error:  # bad data found while running (an unreadable image, say)
        _subcommand(parser, args.command).error(first_line(error, limit=400))
    print(format_results(results))
    print(f"done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
