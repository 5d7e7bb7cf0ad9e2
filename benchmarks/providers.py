"""Loss implementations the benchmark compares, each behind one small adapter.

Every provider takes ``(image [N, D], text [N, D], labels [N], scale)`` with raw (unnormalised) features and
returns a scalar loss, so all of them pay for the same normalisation and are timed on the same inputs. Each computes
one objective: UniCL's softmax loss, or the sigmoid (SigLIP) loss, whose providers all use the logit bias
`SIGMOID_BIAS`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from unicl import unicl_loss, unicl_sigmoid_loss
from unicl.loss.targets import target_keys

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
#: The logit bias every sigmoid provider uses: SigLIP's initialisation.
SIGMOID_BIAS = -10.0


@dataclass(frozen=True)
class Provider:
    """One loss implementation.

    Attributes:
        name: the name in tables, CSV and plots.
        make: builds the loss function; raises ``ImportError`` when its package is missing.
        unique_labels_only: it knows no labels (CLIP-style); run only with all-unique labels.
        gpu_only: it runs only on CUDA.
        same_objective: it computes the UniCL value itself, so the correctness gate applies.
        note: what a reader must know about it.
        objective: ``"softmax"`` or ``"sigmoid"``; a provider is compared and plotted with its objective's others.
        takes_text_labels: it takes ``text_labels=`` for ``M != N`` texts (the rectangular shapes).
    """

    name: str
    make: Callable[[], LossFn]
    unique_labels_only: bool = False
    gpu_only: bool = False
    same_objective: bool = True
    note: str = ""
    objective: str = "softmax"
    takes_text_labels: bool = False


def _unicl(backend: str) -> LossFn:
    return functools.partial(unicl_loss, backend=backend)


def _unicl_sigmoid(backend: str) -> LossFn:
    return functools.partial(unicl_sigmoid_loss, logit_bias=SIGMOID_BIAS, backend=backend)


def _unicl_provider(name: str, backend: str, objective: str = "softmax", **options: Any) -> Provider:
    """One of unicl's own backends of ``objective``: it takes ``text_labels``."""
    make = functools.partial(_unicl if objective == "softmax" else _unicl_sigmoid, backend)
    return Provider(name, make, objective=objective, takes_text_labels=True, **options)


def _open_clip_siglip() -> LossFn:
    from open_clip.loss import SigLipLoss

    siglip_loss = SigLipLoss()

    def loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
        bias = torch.tensor(SIGMOID_BIAS, dtype=image.dtype, device=image.device)
        return siglip_loss(F.normalize(image, dim=-1), F.normalize(text, dim=-1), scale, bias)

    return loss


def _compiled_dense() -> LossFn:
    return torch.compile(functools.partial(unicl_loss, backend="dense"))


def clip_loss_formula(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """open_clip's ``ClipLoss`` on one device, written out: cross-entropy against the diagonal in both directions.

    The same operations in the same order as ``open_clip.loss.ClipLoss`` with ``world_size=1`` (two products,
    ``scale * a @ b.T`` for each direction, both in the features' dtype, then ``F.cross_entropy`` against
    ``arange(N)``), so it gives open_clip's value and costs what open_clip costs where open_clip is not installed.

    Args:
        image: ``[N, D]`` normalised image features.
        text: ``[N, D]`` normalised text features.
        scale: the logit scale.

    Returns:
        The scalar loss in the features' dtype.
    """
    logits_per_image = scale * image @ text.T
    logits_per_text = scale * text @ image.T
    labels = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def _clip_formula() -> LossFn:
    def loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
        return clip_loss_formula(F.normalize(image, dim=-1), F.normalize(text, dim=-1), scale)

    return loss


def _open_clip() -> LossFn:
    from open_clip.loss import ClipLoss

    clip_loss = ClipLoss()

    def loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
        return clip_loss(F.normalize(image, dim=-1), F.normalize(text, dim=-1), scale)

    return loss


def _inf_cl() -> LossFn:
    from inf_cl import cal_inf_loss

    def loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        return (cal_inf_loss(image, text, scale=scale).mean() + cal_inf_loss(text, image, scale=scale).mean()) / 2

    return loss


def _supcon() -> LossFn:
    from pytorch_metric_learning.losses import SupConLoss

    def loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
        supcon = SupConLoss(temperature=1.0 / scale)
        keys = target_keys(labels, labels.shape[0], labels.device)
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        return (
            supcon(image, keys, ref_emb=text, ref_labels=keys) + supcon(text, keys, ref_emb=image, ref_labels=keys)
        ) / 2

    return loss


PROVIDERS: dict[str, Provider] = {
    provider.name: provider
    for provider in [
        _unicl_provider("unicl-dense", "dense"),
        _unicl_provider("unicl-chunked", "chunked"),
        _unicl_provider("unicl-triton", "triton", gpu_only=True, note="one-pass schedule"),
        _unicl_provider("unicl-triton-rowwise", "triton_rowwise", gpu_only=True, note="the earlier two-pass schedule"),
        Provider("torch-compile-dense", _compiled_dense, note="torch.compile of unicl's dense backend"),
        Provider("open_clip-ClipLoss", _open_clip, unique_labels_only=True),
        Provider(
            "ClipLoss-formula",
            _clip_formula,
            unique_labels_only=True,
            note="open_clip's ClipLoss written out (same operations), for machines without open_clip",
        ),
        Provider("inf-cl", _inf_cl, unique_labels_only=True, gpu_only=True, note="cal_inf_loss in both directions"),
        Provider(
            "pml-SupConLoss",
            _supcon,
            same_objective=False,
            note="pytorch-metric-learning SupConLoss image->text and text->image; SupCon's objective, "
            "which may differ slightly from UniCL's (checked against it, not gated)",
        ),
        _unicl_provider("unicl-sigmoid-dense", "dense", "sigmoid"),
        _unicl_provider("unicl-sigmoid-chunked", "chunked", "sigmoid"),
        _unicl_provider("unicl-sigmoid-triton", "triton", "sigmoid", gpu_only=True),
        _unicl_provider("unicl-sigmoid-triton-rowwise", "triton_rowwise", "sigmoid", gpu_only=True),
        Provider("open_clip-SigLipLoss", _open_clip_siglip, unique_labels_only=True, objective="sigmoid"),
    ]
}
#: The provider every other provider of an objective is checked against (the correctness gate).
REFERENCE_PROVIDERS = {"softmax": "unicl-dense", "sigmoid": "unicl-sigmoid-dense"}
