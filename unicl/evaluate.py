"""Zero-shot evaluation: image classification on an ImageFolder and image-text retrieval on a caption file.

From Python, :func:`zeroshot_accuracy` and :func:`retrieval_recall`; from the shell::

    python -m unicl.evaluate zeroshot --model unicl_swin_tiny --pretrained in21k_yfcc14m.pth --data imagenet/val
    python -m unicl.evaluate retrieval --model unicl_swin_tiny --pretrained in21k_yfcc14m.pth --captions coco.csv

``--model`` is a preset (with ``--pretrained`` weights) or a directory written by ``save_pretrained``. Class names
come from the ImageFolder's folders, or one per line from ``--classnames`` (in folder order; commas separate
synonyms); every class is the mean of its prompts from :data:`unicl.prompts.DEFAULT_TEMPLATES`. The caption file is
a CSV (or TSV) with a header naming an ``image`` (or ``filepath``) and a ``caption`` (or ``title``) column; relative
image paths start at the file's folder, and an image listed with several captions is one image with several
positives. Images go through :func:`unicl.image_transform` (the released models' evaluation transform).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from unicl._checks import check_positive_int
from unicl.datasets import load_rgb, read_caption_file, read_class_names
from unicl.models import UniCLModel, create_model, load_model
from unicl.models.serialization import CONFIG_NAME
from unicl.prompts import DEFAULT_TEMPLATES
from unicl.tokenizer import Tokenizer
from unicl.transforms import image_transform
from unicl.zeroshot import build_zeroshot_classifier

TOP_K = (1, 5)
RECALL_AT = (1, 5, 10)


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

    def __init__(self, path: str | Path, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        rows = read_caption_file(path)
        index_of: dict[Path, int] = {}
        self.image_index: list[int] = [index_of.setdefault(image_path, len(index_of)) for image_path, _ in rows]
        self.image_paths = list(index_of)
        self.captions = [caption for _, caption in rows]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_rgb(self.image_paths[index]))


def _batches(dataset: Dataset, batch_size: int, workers: int, progress: bool, description: str) -> Iterator[Any]:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    return iter(tqdm(loader, desc=description, disable=not progress, file=sys.stderr))


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def zeroshot_accuracy(
    model: UniCLModel,
    dataset: Dataset,
    class_names: Sequence[str | Sequence[str]],
    tokenizer: Tokenizer,
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> dict[str, float]:
    """Zero-shot top-1 and top-5 accuracy of ``model`` on ``dataset``'s ``(image, class_id)`` samples.

    Args:
        model: the model (moved to ``device``, put in eval mode).
        dataset: ``(image tensor, class id)`` samples, e.g. a torchvision ``ImageFolder`` with
            :func:`unicl.image_transform`.
        class_names: one name (or list of synonyms) per class id.
        tokenizer: the model's tokenizer.
        templates: prompt templates (every class is the mean of its prompts).
        batch_size: images per batch.
        workers: data-loading processes.
        device: where to run.
        precision: ``"fp32"``, or ``"bf16"`` (autocast, on CUDA only).
        progress: show a progress bar on standard error.

    Returns:
        ``{"top1": ..., "top5": ..., "images": N, "classes": C}`` (``top5`` only with at least 5 classes).
    """
    check_positive_int("batch_size", batch_size)
    device = torch.device(device)
    model = model.to(device).eval()
    with _autocast(device, precision):
        classifier = build_zeroshot_classifier(model, tokenizer, class_names, templates, device=device)
    ks = [k for k in TOP_K if k <= len(class_names)]
    correct = dict.fromkeys(ks, 0)
    seen = 0
    for images, targets in _batches(dataset, batch_size, workers, progress, "zero-shot"):
        with _autocast(device, precision):
            features = model.encode_image(images.to(device))
        ranked = (features.float() @ classifier.T).topk(max(ks), dim=1).indices.cpu()
        hits = ranked == targets[:, None]
        for k in ks:
            correct[k] += int(hits[:, :k].any(dim=1).sum())
        seen += len(targets)
    if seen == 0:
        raise ValueError("dataset has no images")
    return {**{f"top{k}": correct[k] / seen for k in ks}, "images": seen, "classes": len(class_names)}


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

    An image is retrieved correctly at ``k`` when one of its captions ranks in its top ``k`` captions; a caption
    when its image ranks in its top ``k`` images.

    Returns:
        ``{"image_to_text_R@1": ..., ..., "text_to_image_R@10": ..., "images": I, "captions": T}``.
    """
    check_positive_int("batch_size", batch_size)
    device = torch.device(device)
    model = model.to(device).eval()
    image_features = []
    for images in _batches(captions, batch_size, workers, progress, "images"):
        with _autocast(device, precision):
            image_features.append(F.normalize(model.encode_image(images.to(device)).float(), dim=-1))
    text_features = []
    for start in range(0, len(captions.captions), batch_size):
        batch = tokenizer(captions.captions[start : start + batch_size])
        with _autocast(device, precision):
            encoded = model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        text_features.append(F.normalize(encoded.float(), dim=-1))
    similarity = (torch.cat(image_features) @ torch.cat(text_features).T).cpu()  # [images, captions]
    owner = torch.tensor(captions.image_index)
    matches = owner[None, :] == torch.arange(similarity.shape[0])[:, None]  # caption j describes image i
    results: dict[str, float] = {}
    for k in RECALL_AT:
        top_captions = similarity.topk(min(k, similarity.shape[1]), dim=1).indices
        results[f"image_to_text_R@{k}"] = float(matches.gather(1, top_captions).any(dim=1).float().mean())
        top_images = similarity.T.topk(min(k, similarity.shape[0]), dim=1).indices
        results[f"text_to_image_R@{k}"] = float((top_images == owner[:, None]).any(dim=1).float().mean())
    return {**results, "images": similarity.shape[0], "captions": similarity.shape[1]}


# --- the command line ------------------------------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> UniCLModel:
    source = Path(args.model)
    if source.is_dir() and (source / CONFIG_NAME).is_file():
        if args.pretrained is not None:
            raise SystemExit("--pretrained goes with a preset name; --model is already a saved model directory")
        return load_model(source)
    return create_model(args.model, pretrained=args.pretrained)


def _tokenizer(args: argparse.Namespace, model: UniCLModel) -> Tokenizer:
    return Tokenizer.load(args.tokenizer, model.config.text.context_length)


def _class_names(args: argparse.Namespace, folders: list[str]) -> list[str]:
    if args.classnames is None:
        return folders
    try:
        return read_class_names(args.classnames, len(folders))
    except ValueError as error:
        raise SystemExit(f"--classnames: {error}") from None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m unicl.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, help="a preset name, or a directory written by save_pretrained")
    common.add_argument("--pretrained", help="weights for the preset: a microsoft/UniCL .pth or unicl safetensors")
    common.add_argument(
        "--tokenizer", default="clip", help="'clip' (CLIP's BPE, found on this machine) or a tokenizer.json"
    )
    common.add_argument("--batch-size", type=int, default=64, help="images per batch")
    common.add_argument("--workers", type=int, default=4, help="data-loading processes")
    common.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda:1', ...")
    common.add_argument(
        "--precision", choices=("bf16", "fp32"), default="bf16", help="bf16 autocast on CUDA (fp32 on the CPU)"
    )
    common.add_argument("--json", type=Path, help="also write the results here as JSON")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    zeroshot = commands.add_parser("zeroshot", parents=[common], help="zero-shot classification on an ImageFolder")
    zeroshot.add_argument("--data", required=True, type=Path, help="an ImageFolder root (one folder per class)")
    zeroshot.add_argument("--classnames", type=Path, help="one class name per line, in folder order")
    retrieval = commands.add_parser("retrieval", parents=[common], help="image-text retrieval on a caption file")
    retrieval.add_argument("--captions", required=True, type=Path, help="a CSV/TSV of image paths and captions")
    return parser


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.workers < 0:
        raise SystemExit(f"--batch-size must be >= 1 and --workers >= 0; got {args.batch_size} and {args.workers}")
    model = _load(args)
    tokenizer = _tokenizer(args, model)
    transform = image_transform(model)
    options = {
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": _device(args.device),
        "precision": args.precision,
        "progress": not args.no_progress,
    }
    if args.command == "zeroshot":
        if not args.data.is_dir():
            raise SystemExit(f"--data {str(args.data)!r} is not a directory")
        dataset = ImageFolder(str(args.data), transform=transform)
        results = zeroshot_accuracy(model, dataset, _class_names(args, dataset.classes), tokenizer, **options)
    else:
        results = retrieval_recall(model, CaptionFile(args.captions, transform), tokenizer, **options)
    print(
        " ".join(
            f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}" for key, value in results.items()
        )
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
