"""The UniCL losses in functional form: the softmax objective (`unicl_loss`) and the sigmoid one
(`unicl_sigmoid_loss`); the modules are in `unicl.loss.module`.

UniCL (Yang et al., CVPR 2022) puts image-label and image-text data in one image-text-label space: every sample has
a label, samples that share a class label are positives of each other, and an image-text pair (negative label) is
positive only with its own text. With ``S = s·U Vᵀ`` for L2-normalised features and targets
``T_ij = [y_i = y_j ≥ 0] ∨ [i = j]``::

    l_i2t[i] = logsumexp_j S_ij − Σ_j T_ij S_ij / Σ_j T_ij
    l_t2i[j] = logsumexp_i S_ij − Σ_i T_ij S_ij / Σ_i T_ij
    loss     = (mean_i l_i2t[i] + mean_j l_t2i[j]) / 2

With ``labels=None`` every pair is unique and this is exactly the CLIP loss.
"""

from __future__ import annotations

import torch

from unicl._checks import check_choice, check_feature_pair, check_labels, check_logit_bias, check_logit_scale
from unicl.loss.backends import block_terms, check_backend_options
from unicl.loss.dtypes import accumulation_dtype
from unicl.loss.objectives import SIGMOID, SOFTMAX, Objective
from unicl.loss.targets import batch_targets

REDUCTIONS = ("mean", "sum", "none")

#: CLIP's initial temperature 0.07, as a logit scale.
DEFAULT_LOGIT_SCALE = 1 / 0.07
#: SigLIP's initial logit scale and bias (Zhai et al., 2023), the defaults of `unicl_sigmoid_loss`.
SIGMOID_LOGIT_SCALE = 10.0
SIGMOID_LOGIT_BIAS = -10.0


def unicl_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float = DEFAULT_LOGIT_SCALE,
    *,
    text_labels: torch.Tensor | None = None,
    backend: str = "auto",
    reduction: str = "mean",
    normalize: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The bidirectional UniCL contrastive loss with label-aware positives.

    Args:
        image_features: ``[N, D]`` image embeddings (any float dtype).
        text_features: ``[N, D]`` text embeddings, same shape, dtype and device; ``[M, D]`` with ``text_labels``.
        labels: ``[N]`` integer labels or ``None``. Labels ``>= 0`` are classes (all samples of a class are positives
            of each other); a negative label marks an image-text pair, positive only with its own text. ``None``
            makes every pair unique (the CLIP loss).
        logit_scale: the scale ``s > 0`` (inverse temperature), a float or a one-element tensor; gradients flow to it
            when it requires grad (usually ``model.logit_scale.exp()``). A float or CPU tensor is checked to be
            finite and positive; a tensor on an accelerator is not (that would stall the stream).
        backend: ``"dense"`` (reference, holds ``N × N`` tensors), ``"chunked"`` (memory-efficient PyTorch, any
            device), ``"triton"`` (fused CUDA kernels, one pass over ``S`` in forward), ``"triton_rowwise"`` (the
            two-pass fused kernels) or ``"auto"`` (the best available here).
        text_labels: ``[M]`` integer labels of the texts, for a batch of ``N`` images and ``M`` texts (several
            captions per image, hard negatives, a class-prompt bank; `unicl.loss.shapes` builds them). Image ``i``
            and text ``j`` are positives exactly when ``labels[i] == text_labels[j] >= 0``; a negative label is an
            image or text with no positive. Needs ``labels``. An image or text without a positive has no term: it
            is left out of its direction's mean and sum (and is NaN in ``"none"``), but stays in the other
            direction's log-sum-exp.
        reduction: ``"mean"``: ``(mean l_i2t + mean l_t2i)/2``; ``"sum"``: ``(Σ l_i2t + Σ l_t2i)/2``; ``"none"``:
            the vector ``(l_i2t + l_t2i)/2`` of shape ``[N]``; with ``text_labels``, ``[N + M]``: ``l_i2t`` then
            ``l_t2i``.
        normalize: L2-normalise both feature sets first (set ``False`` if the model already does).
        chunk_size: rows per block for the chunked backend, rows per super-chunk for ``"triton"``; ``None``
            chooses from ``N`` (and the Triton workspace budget, see `unicl.loss.kernels.plan`).

    Returns:
        A scalar (or ``[N]`` for ``reduction="none"``) in float32, or float64 for float64 inputs. NaN or Inf inside
        the features propagate into the loss, as in torch's own losses.

    Raises:
        TypeError: a feature matrix, the labels or ``logit_scale`` of the wrong type or dtype.
        ValueError: wrong shapes, an empty batch, mismatched devices, a non-positive or non-finite ``logit_scale``,
            an unknown ``backend`` or ``reduction``.
        RuntimeError: a Triton backend where it cannot run.
        NotImplementedError: a second derivative through the chunked or Triton backends (use ``backend="dense"``).

    Examples:
        >>> import torch
        >>> from unicl import unicl_loss
        >>> images, texts = torch.randn(8, 32), torch.randn(8, 32)
        >>> labels = torch.tensor([0, 0, 1, 1, -1, -1, 2, 2])
        >>> loss = unicl_loss(images, texts, labels, logit_scale=10.0)
        >>> loss.shape
        torch.Size([])
    """
    check_options(backend, reduction, chunk_size)
    return batch_loss(
        image_features, text_features, labels, logit_scale, backend, reduction, normalize, chunk_size,
        text_labels=text_labels,
    )  # fmt: skip


def check_options(backend: object, reduction: object, chunk_size: object) -> None:
    """Check the options of `unicl_loss` (``backend``, ``reduction``, ``chunk_size``), once per public call or
    once when `unicl.loss.module.UniCLLoss` is built; raises the ``ValueError`` or ``TypeError`` `unicl_loss`
    documents."""
    check_choice("reduction", reduction, REDUCTIONS)
    check_backend_options(backend, chunk_size)


def batch_loss(
    image_features: object,
    text_features: object,
    labels: object,
    logit_scale: object,
    backend: str,
    reduction: str,
    normalize: bool,
    chunk_size: int | None,
    objective: Objective = SOFTMAX,
    logit_bias: object = None,
    text_labels: object = None,
) -> torch.Tensor:
    """`unicl_loss` (or, with ``objective=SIGMOID``, `unicl_sigmoid_loss`) for options already checked by
    `check_options`: checks the tensors of this batch only."""
    image, text, checked_labels, scale, checked_text_labels = prepare_inputs(
        image_features, text_features, labels, logit_scale, text_labels=text_labels
    )
    bias = bias_tensor(logit_bias, image) if objective.has_bias else None
    row_keys, col_keys, counted = batch_targets(
        checked_labels, checked_text_labels, image.shape[0], text.shape[0], image.device
    )
    row_terms, col_terms = block_terms(
        image, text, scale, row_keys, col_keys, normalize, backend, chunk_size, True, objective, bias,
        reduction != "none",
    )  # fmt: skip
    return objective.reduce(row_terms, col_terms if objective.two_sided else None, reduction, counted)


def prepare_inputs(
    image_features: object,
    text_features: object,
    labels: object,
    logit_scale: object,
    allow_no_rows: bool = False,
    text_labels: object = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Check the tensors of a batch and return ``(image, text, labels, scale, text_labels)`` ready to use.

    The features come back as given (the backends normalise them), the scale as a 0-dim tensor in the
    accumulation dtype. Raises the ``TypeError`` and ``ValueError`` `unicl_loss` documents for them.
    ``allow_no_rows`` accepts ``N = 0`` (one rank's share of a distributed batch).
    """
    if text_labels is not None and labels is None:
        raise ValueError("text_labels needs labels: an image and a text are positives when their labels are equal")
    image, text = check_feature_pair(image_features, text_features, allow_no_rows, text_labels is not None)
    checked_labels = check_labels(labels, image.shape[0], image.device)
    checked_text_labels = check_labels(text_labels, text.shape[0], image.device, "text_labels")
    scale = scale_tensor(check_logit_scale(logit_scale, image.device), image)
    return image, text, checked_labels, scale, checked_text_labels


def scale_tensor(logit_scale: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``logit_scale`` as a 0-dim tensor in the accumulation dtype on ``like``'s device, keeping its graph."""
    acc = accumulation_dtype(like.dtype)
    if isinstance(logit_scale, torch.Tensor):
        return logit_scale.to(device=like.device, dtype=acc).reshape(())
    # torch.full launches a fill instead of copying a host value: no synchronisation on accelerators.
    return torch.full((), logit_scale, dtype=acc, device=like.device)


def bias_tensor(logit_bias: object, like: torch.Tensor) -> torch.Tensor:
    """Check ``logit_bias`` and return it as a 0-dim tensor in the accumulation dtype on ``like``'s device, keeping
    its graph. Raises the ``TypeError`` and ``ValueError`` `unicl_sigmoid_loss` documents for it."""
    return scale_tensor(check_logit_bias(logit_bias, like.device), like)


def unicl_sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float = SIGMOID_LOGIT_SCALE,
    logit_bias: torch.Tensor | float = SIGMOID_LOGIT_BIAS,
    *,
    text_labels: torch.Tensor | None = None,
    backend: str = "auto",
    reduction: str = "mean",
    normalize: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss with UniCL's label-aware positives.

    With logits ``Z = s·Û V̂ᵀ + b`` of the L2-normalised features and ``t_ij = +1`` for a positive pair (the same
    class label ``>= 0``, or the pair's own text, as in `unicl_loss`) and ``−1`` otherwise, each image's term is
    ``ℓ_i = Σ_j softplus(−t_ij·Z_ij)``. With ``labels=None`` every pair is unique and this is SigLIP's loss
    (open_clip's ``SigLipLoss`` on the same normalised features).

    Args:
        image_features: ``[N, D]`` image embeddings (any float dtype).
        text_features: ``[N, D]`` text embeddings, same shape, dtype and device; ``[M, D]`` with ``text_labels``.
        labels: ``[N]`` integer labels or ``None``, as in `unicl_loss`.
        logit_scale: the scale ``s > 0``, a float or a one-element tensor (gradients flow to it); SigLIP
            initialises it to 10.
        logit_bias: the bias ``b``, a finite float or a one-element tensor (gradients flow to it); SigLIP
            initialises it to −10. Checked like ``logit_scale``, without the sign.
        text_labels: ``[M]`` integer labels of the texts, as in `unicl_loss`: every one of the ``N·M`` pairs is a
            term, positive or negative, so an image without a positive still has its ``ℓ_i``.
        backend: as in `unicl_loss`.
        reduction: ``"mean"``: ``Σ_i ℓ_i / N`` (SigLIP's normalisation); ``"sum"``: ``Σ_i ℓ_i``; ``"none"``: the
            vector ``ℓ`` of shape ``[N]``.
        normalize: L2-normalise both feature sets first (set ``False`` if the model already does).
        chunk_size: as in `unicl_loss`.

    Returns:
        A scalar (or ``[N]`` for ``reduction="none"``) in float32, or float64 for float64 inputs.

    Raises:
        TypeError: a feature matrix, the labels, ``logit_scale`` or ``logit_bias`` of the wrong type or dtype.
        ValueError: wrong shapes, an empty batch, mismatched devices, a non-positive or non-finite
            ``logit_scale``, a non-finite ``logit_bias``, an unknown ``backend`` or ``reduction``.
        RuntimeError: a Triton backend where it cannot run.
        NotImplementedError: a second derivative through the chunked or Triton backends (use ``backend="dense"``).

    Examples:
        >>> import torch
        >>> from unicl import unicl_sigmoid_loss
        >>> images, texts = torch.randn(8, 32), torch.randn(8, 32)
        >>> labels = torch.tensor([0, 0, 1, 1, -1, -1, 2, 2])
        >>> loss = unicl_sigmoid_loss(images, texts, labels, logit_scale=10.0, logit_bias=-10.0)
        >>> loss.shape
        torch.Size([])
    """
    check_options(backend, reduction, chunk_size)
    return batch_loss(
        image_features, text_features, labels, logit_scale, backend, reduction, normalize, chunk_size, SIGMOID,
        logit_bias, text_labels,
    )  # fmt: skip
