"""Image features of a dataset, from the image tower before or after the projection, with an optional disk cache.

A cache entry is one safetensors file named by a SHA-256 digest of a key holding everything the features depend
on: the model's weights (every ``state_dict`` tensor's name, dtype, shape and bytes), the dataset's identity (for a
torchvision ``ImageFolder``/``DatasetFolder``: its root, every sample's relative path, class id, size and
modification time; otherwise the string its ``cache_identity()`` method returns; for a ``torch.utils.data.Subset``
of either, that of the samples it picks, in its order, so a few-shot subset of a folder stats only its own files),
the repr of its transform, the feature kind and the precision the tower actually runs in (`run_precision`: a
``"bf16"`` request off CUDA runs, and is cached, as float32). Changing any of them (retraining, adding or touching an
image, another resize) misses the cache; a hit returns the stored features bit for bit without running the model.
The device (beyond that precision), batch size and workers are not part of the key: they change the features by
rounding at most. A transform whose repr holds a memory address (a lambda) never hits in another process.

The file's metadata holds the key's digest, not the key (a folder's key lists every file, and for a large folder
would pass the size limit of a safetensors header). A file that cannot be read back, or whose stored digest
differs, is recomputed with a warning; one that cannot be written is a warning, and the computed features are
returned all the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset, Subset
from torchvision.datasets import DatasetFolder

from unicl._checks import check_choice, check_instance
from unicl.evaluation.inference import DEFAULT_INFERENCE, InferenceOptions
from unicl.evaluation.names import FEATURE_KINDS
from unicl.models import UniCLModel
from unicl.models.atomic import replacing

__all__ = ["FEATURE_KINDS", "cache_path", "dataset_identity", "image_features", "model_digest", "run_precision"]

#: Bumped when the features' layout or key changes, so older cache files miss.
CACHE_VERSION = 2


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 hex digest of ``model``'s ``state_dict``: every tensor's name, dtype, shape and bytes, in order.

    Examples:
        >>> len(model_digest(torch.nn.Linear(2, 3)))
        64
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Raw bytes of any dtype (bfloat16 included, which numpy lacks).
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_precision(device: torch.device, precision: str) -> str:
    """The precision the image tower actually runs in for a requested one: ``"bf16"`` only on CUDA, where
    `unicl.evaluation.inference.inference_autocast` enables it; ``"fp32"`` otherwise.

    Examples:
        >>> run_precision(torch.device("cpu"), "bf16")
        'fp32'
    """
    return precision if device.type == "cuda" else "fp32"


def _folder_files(dataset: DatasetFolder, indices: list[int] | None) -> list[list[object]]:
    root = Path(dataset.root).resolve()
    samples = dataset.samples if indices is None else [dataset.samples[i] for i in indices]
    files: list[list[object]] = []
    for path, class_id in samples:
        stat = os.stat(path)
        files.append([os.path.relpath(path, root), class_id, stat.st_size, stat.st_mtime_ns])
    return files


def dataset_identity(dataset: Dataset) -> str:
    """A string that changes whenever ``dataset``'s samples may: see the module docstring.

    Raises:
        TypeError: a dataset that is neither a ``DatasetFolder``, a ``Subset`` of one, nor has a
            ``cache_identity()`` method (or a ``Subset`` of such).
    """
    identity = getattr(dataset, "cache_identity", None)
    if callable(identity):
        return str(identity())
    indices: list[int] | None = None
    base = dataset
    while isinstance(base, Subset):  # nested subsets: the indices into the innermost dataset
        inner = [int(i) for i in base.indices]
        indices = inner if indices is None else [inner[i] for i in indices]
        base = base.dataset
    if isinstance(base, DatasetFolder):
        files = _folder_files(base, indices)
        # A whole folder's order is its files' (sorted); a subset's is its indices'.
        described = {"root": str(Path(base.root).resolve()), "files": sorted(files) if indices is None else files,
                     "subset": indices is not None, "transform": repr(base.transform),
                     "target_transform": repr(base.target_transform)}  # fmt: skip
        return json.dumps(described)
    identity = getattr(base, "cache_identity", None)
    if indices is not None and callable(identity):
        return json.dumps({"dataset": str(identity()), "indices": indices})
    raise TypeError(
        f"cache_dir needs a torchvision ImageFolder/DatasetFolder, a dataset with a cache_identity() method, or a "
        f"Subset of either; got {type(dataset).__name__}"
    )


def cache_path(model: torch.nn.Module, dataset: Dataset, cache_dir: str | os.PathLike[str], *, kind: str,
               precision: str = "fp32") -> tuple[Path, str]:  # fmt: skip
    """The cache file for these features and the SHA-256 digest of their key stored in it:
    ``(cache_dir / "<digest>.safetensors", digest)``. ``precision`` is the one run (see `run_precision`)."""
    key = json.dumps({"version": CACHE_VERSION, "model": model_digest(model), "dataset": dataset_identity(dataset),
                      "kind": kind, "precision": precision})  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()
    return Path(cache_dir) / f"{digest}.safetensors", digest


def _read_cache(path: Path, digest: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    try:
        if not path.exists():
            return None
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            features, targets = handle.get_tensor("features"), handle.get_tensor("targets")
        if metadata.get("key_sha256") != digest or features.dim() != 2 or targets.shape != (features.shape[0],):
            raise ValueError("the stored key or shapes do not match")
    except Exception as error:  # any unreadable file is recomputed
        warnings.warn(f"feature cache {path} is unreadable ({error}); recomputing it", stacklevel=3)
        return None
    return features, targets


def _write_cache(path: Path, digest: str, features: torch.Tensor, targets: torch.Tensor) -> None:
    """Write the cache file, or warn: the features are computed by then, and a cache that cannot be written (no
    permission, a full disk, a safetensors error, which is neither an OSError nor a ValueError) must not lose them."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written beside the target and renamed, so a crash or a concurrent reader never sees half a file.
        with replacing(path) as temporary:
            save_file({"features": features.contiguous(), "targets": targets.contiguous()}, str(temporary),
                      metadata={"key_sha256": digest})  # fmt: skip
    except Exception as error:
        warnings.warn(f"feature cache {path} could not be written ({error}); continuing without it", stacklevel=3)


@torch.no_grad()
def image_features(
    model: UniCLModel,
    dataset: Dataset,
    *,
    kind: str = "backbone",
    inference: InferenceOptions = DEFAULT_INFERENCE,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every ``(image, class id)`` sample of ``dataset`` with ``model``'s image tower, in dataset order.

    Args:
        model: a `unicl.UniCLModel` (or anything with ``image_encoder(images)`` and
            ``encode_image(images, normalize=False)``); moved to ``inference.device`` and put in eval mode.
        dataset: ``(image tensor, class id)`` samples, e.g. a torchvision ``ImageFolder`` with
            `unicl.image_transform`.
        kind: ``"backbone"`` (before the projection) or ``"projected"`` (the embedding, not normalised); see
            `FEATURE_KINDS`.
        inference: batch size, workers, device, precision and progress bar
            (`unicl.evaluation.inference.InferenceOptions`).
        cache_dir: a folder for the cache (see the module docstring); ``None``: no cache.

    Returns:
        ``(features [N, F] float32, targets [N] int64)``, both on the CPU.

    Raises:
        ValueError: a bad ``kind``, or an empty dataset.
        TypeError: ``inference`` that is not an `unicl.evaluation.inference.InferenceOptions`, or ``cache_dir`` with
            a dataset whose identity is unknown (see `dataset_identity`).
    """
    check_choice("kind", kind, FEATURE_KINDS)
    inference = check_instance("inference", inference, InferenceOptions)
    device = inference.torch_device
    path = digest = None
    if cache_dir is not None:
        # Keyed by the precision run, not the one asked for: a CPU "bf16" run computes the fp32 features.
        precision = run_precision(device, inference.precision)
        path, digest = cache_path(model, dataset, cache_dir, kind=kind, precision=precision)
        cached = _read_cache(path, digest)
        if cached is not None:
            return cached
    model = model.to(device).eval()

    def encode(images: torch.Tensor) -> torch.Tensor:
        if kind == "backbone":
            return model.image_encoder(images)
        return model.encode_image(images, normalize=False)

    features, targets = [], []
    for images, batch_targets in inference.batches(dataset, f"{kind} features"):
        with inference.autocast():
            encoded = encode(images.to(device))
        features.append(encoded.float().cpu())
        targets.append(torch.as_tensor(batch_targets).long())
    if not features:
        raise ValueError("dataset has no images")
    result = torch.cat(features), torch.cat(targets)
    if path is not None and digest is not None:
        _write_cache(path, digest, *result)
    return result
