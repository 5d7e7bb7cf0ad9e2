"""Image features of a dataset, from the image tower before or after the projection, with an optional disk cache.

A cache entry is one safetensors file named by a SHA-256 digest of everything the features depend on: the model's
weights (every ``state_dict`` tensor's name, dtype, shape and bytes), the dataset's identity (for a torchvision
``ImageFolder``/``DatasetFolder``: its root, every sample's relative path, class id, size and modification time;
otherwise the string its ``cache_identity()`` method returns), the repr of its transform, the feature kind and the
precision. Changing any of them (retraining, adding or touching an image, another resize) misses the cache; a hit
returns the stored features bit for bit without running the model. The device, batch size and workers are not part
of the key: they change the features by rounding at most. A transform whose repr holds a memory address (a lambda)
never hits in another process. A file that cannot be read back, or whose stored key differs, is recomputed with a
warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset
from torchvision.datasets import DatasetFolder

from unicl._checks import check_choice, check_positive_int
from unicl.evaluation.inference import inference_autocast, inference_batches
from unicl.models import UniCLModel

__all__ = ["FEATURE_KINDS", "cache_path", "dataset_identity", "image_features", "model_digest"]

#: ``"backbone"``: the image tower's pooled output before the projection (``model.image_encoder(images)``, what
#: CLIP's linear probes use); ``"projected"``: the joint embedding ``model.encode_image(images, normalize=False)``.
FEATURE_KINDS = ("backbone", "projected")
PRECISIONS = ("fp32", "bf16")
#: Bumped when the features' layout or key changes, so older cache files miss.
CACHE_VERSION = 1


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 hex digest of ``model``'s ``state_dict``: every tensor's name, dtype, shape and bytes, in order.

    Example:
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


def dataset_identity(dataset: Dataset) -> str:
    """A string that changes whenever ``dataset``'s samples may: see the module docstring.

    Raises:
        TypeError: a dataset that is neither a ``DatasetFolder`` nor has a ``cache_identity()`` method.
    """
    identity = getattr(dataset, "cache_identity", None)
    if callable(identity):
        return str(identity())
    if isinstance(dataset, DatasetFolder):
        root = Path(dataset.root).resolve()
        files = []
        for path, class_id in dataset.samples:
            stat = os.stat(path)
            files.append([os.path.relpath(path, root), class_id, stat.st_size, stat.st_mtime_ns])
        return json.dumps({"root": str(root), "files": sorted(files), "transform": repr(dataset.transform),
                           "target_transform": repr(dataset.target_transform)})  # fmt: skip
    raise TypeError(
        f"cache_dir needs a torchvision ImageFolder/DatasetFolder or a dataset with a cache_identity() method; "
        f"got {type(dataset).__name__}"
    )


def cache_path(model: torch.nn.Module, dataset: Dataset, cache_dir: str | os.PathLike[str], *, kind: str,
               precision: str = "fp32") -> tuple[Path, str]:  # fmt: skip
    """The cache file for these features and the key stored in it: ``(cache_dir / "<digest>.safetensors", key)``."""
    key = json.dumps({"version": CACHE_VERSION, "model": model_digest(model), "dataset": dataset_identity(dataset),
                      "kind": kind, "precision": precision})  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()
    return Path(cache_dir) / f"{digest}.safetensors", key


def _read_cache(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            features, targets = handle.get_tensor("features"), handle.get_tensor("targets")
        if metadata.get("key") != key or features.dim() != 2 or targets.shape != (features.shape[0],):
            raise ValueError("the stored key or shapes do not match")
    except Exception as error:  # any unreadable file is recomputed
        warnings.warn(f"feature cache {path} is unreadable ({error}); recomputing it", stacklevel=3)
        return None
    return features, targets


def _write_cache(path: Path, key: str, features: torch.Tensor, targets: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed, so a crash or a concurrent reader never sees half a file.
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        save_file({"features": features.contiguous(), "targets": targets.contiguous()}, temporary,
                  metadata={"key": key})  # fmt: skip
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


@torch.no_grad()
def image_features(
    model: UniCLModel,
    dataset: Dataset,
    *,
    kind: str = "backbone",
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode every ``(image, class id)`` sample of ``dataset`` with ``model``'s image tower, in dataset order.

    Args:
        model: a `unicl.UniCLModel` (or anything with ``image_encoder(images)`` and
            ``encode_image(images, normalize=False)``); moved to ``device`` and put in eval mode.
        dataset: ``(image tensor, class id)`` samples, e.g. a torchvision ``ImageFolder`` with
            `unicl.image_transform`.
        kind: ``"backbone"`` (before the projection) or ``"projected"`` (the embedding, not normalised); see
            `FEATURE_KINDS`.
        batch_size: images per batch.
        workers: data-loading processes.
        device: where to run the model.
        precision: ``"fp32"``, or ``"bf16"`` (autocast on CUDA; float32 elsewhere).
        progress: show a progress bar on standard error.
        cache_dir: a folder for the cache (see the module docstring); ``None``: no cache.

    Returns:
        ``(features [N, F] float32, targets [N] int64)``, both on the CPU.

    Raises:
        ValueError: a bad ``kind``/``precision``/``batch_size``, or an empty dataset.
        TypeError: ``cache_dir`` with a dataset whose identity is unknown (see `dataset_identity`).
    """
    check_choice("kind", kind, FEATURE_KINDS)
    check_choice("precision", precision, PRECISIONS)
    check_positive_int("batch_size", batch_size)
    check_positive_int("workers", workers, minimum=0)
    path = key = None
    if cache_dir is not None:
        path, key = cache_path(model, dataset, cache_dir, kind=kind, precision=precision)
        cached = _read_cache(path, key)
        if cached is not None:
            return cached
    device = torch.device(device)
    model = model.to(device).eval()

    def encode(images: torch.Tensor) -> torch.Tensor:
        if kind == "backbone":
            return model.image_encoder(images)
        return model.encode_image(images, normalize=False)

    features, targets = [], []
    for images, batch_targets in inference_batches(dataset, batch_size, workers, progress, f"{kind} features"):
        with inference_autocast(device, precision):
            encoded = encode(images.to(device))
        features.append(encoded.float().cpu())
        targets.append(torch.as_tensor(batch_targets).long())
    if not features:
        raise ValueError("dataset has no images")
    result = torch.cat(features), torch.cat(targets)
    if path is not None and key is not None:
        _write_cache(path, key, *result)
    return result
