"""``nn.Module`` forms of the UniCL losses: the softmax objective (`UniCLLoss`) and the sigmoid one
(`UniCLSigmoidLoss`)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from unicl.loss.distributed import gathered_batch_loss
from unicl.loss.functional import (
    DEFAULT_LOGIT_SCALE,
    SIGMOID_LOGIT_BIAS,
    SIGMOID_LOGIT_SCALE,
    batch_loss,
    check_options,
)
from unicl.loss.objectives import SIGMOID, SOFTMAX, Objective


class UniCLLoss(nn.Module):
    """The UniCL loss as a module; see `unicl.unicl_loss` for the objective and the arguments.

    ``forward`` takes the tensors by the names a UniCL model returns, so ``loss_fn(**model(images, ids), labels=y)``
    works.

    Args:
        backend: ``"auto"``, ``"dense"``, ``"chunked"``, ``"triton"`` or ``"triton_rowwise"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        normalize: L2-normalise the features first.
        chunk_size: rows per block for the chunked backend, per super-chunk for ``"triton"`` (``None``: automatic).
        gather_distributed: gather features and labels from every rank of ``group`` and compute the loss of the
            global batch (see `unicl.loss.distributed` for the gradient convention); with ``text_labels`` each rank's
            texts are gathered with their labels, however many each rank has. Without an initialised process
            group, or with one rank, the loss is the single-process one.
        local_loss: with ``gather_distributed``, compute only this rank's rows and columns against the global batch
            (``W`` times less work and memory per rank, same gradients).
        group: the process group (``None``: the default group).
        equal_batches: with ``gather_distributed``, every rank declares the same batch size (and, with
            ``text_labels``, the same number of texts), so the loss skips the size exchange (a collective and a host
            synchronisation per call); see `unicl.loss.distributed.distributed_unicl_loss`.

    Examples:
        >>> import torch
        >>> from unicl import UniCLLoss
        >>> loss_fn = UniCLLoss(backend="chunked")
        >>> out = {"image_features": torch.randn(4, 16), "text_features": torch.randn(4, 16),
        ...        "logit_scale": torch.tensor(14.3)}
        >>> loss_fn(**out, labels=torch.tensor([3, 3, -1, 5])).ndim
        0
    """

    def __init__(
        self,
        backend: str = "auto",
        reduction: str = "mean",
        normalize: bool = True,
        chunk_size: int | None = None,
        gather_distributed: bool = False,
        local_loss: bool = False,
        group: dist.ProcessGroup | None = None,
        equal_batches: bool = False,
    ) -> None:
        super().__init__()
        if local_loss and not gather_distributed:
            raise ValueError("local_loss=True needs gather_distributed=True (it splits a gathered global batch)")
        if equal_batches and not gather_distributed:
            raise ValueError("equal_batches=True needs gather_distributed=True (it declares the ranks' batch sizes)")
        # Checked once here; every batch then goes to the layers below the check (`forward`).
        check_options(backend, reduction, chunk_size)
        self.backend = backend
        self.reduction = reduction
        self.normalize = normalize
        self.chunk_size = chunk_size
        self.gather_distributed = gather_distributed
        self.local_loss = local_loss
        self.group = group
        self.equal_batches = equal_batches

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        labels: torch.Tensor | None = None,
        logit_scale: torch.Tensor | float = DEFAULT_LOGIT_SCALE,
        text_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of one batch; shapes as in `unicl.unicl_loss`."""
        return self._batch_loss(image_features, text_features, labels, logit_scale, SOFTMAX, None, text_labels)

    def _batch_loss(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        labels: torch.Tensor | None,
        logit_scale: torch.Tensor | float,
        objective: Objective,
        logit_bias: torch.Tensor | float | None,
        text_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        options = (self.backend, self.reduction, self.normalize, self.chunk_size)
        if self.gather_distributed:
            return gathered_batch_loss(
                image_features, text_features, labels, logit_scale, *options,
                group=self.group, local_loss=self.local_loss, equal_batches=self.equal_batches, options_checked=True,
                objective=objective, logit_bias=logit_bias, text_labels=text_labels,
            )  # fmt: skip
        return batch_loss(
            image_features, text_features, labels, logit_scale, *options, objective, logit_bias, text_labels
        )

    def extra_repr(self) -> str:
        """Every option the module was built with, so a printed model says how its loss is computed."""
        return (
            f"backend={self.backend!r}, reduction={self.reduction!r}, normalize={self.normalize}, "
            f"chunk_size={self.chunk_size}, gather_distributed={self.gather_distributed}, "
            f"local_loss={self.local_loss}, group={self.group!r}, equal_batches={self.equal_batches}"
        )


class UniCLSigmoidLoss(UniCLLoss):
    """SigLIP's sigmoid loss with UniCL's label-aware positives as a module; see `unicl.unicl_sigmoid_loss` for the
    objective and `UniCLLoss` for the options (the same, including ``gather_distributed``, ``local_loss`` and
    ``equal_batches``).

    ``forward`` takes the tensors by the names a UniCL model trained with this objective returns, so
    ``loss_fn(**model(images, ids), labels=y)`` works. With ``reduction="mean"`` the loss is ``Σ_i ℓ_i / N`` over
    the (global) batch; in distributed local mode each rank computes only its own images against every text.

    Examples:
        >>> import torch
        >>> from unicl import UniCLSigmoidLoss
        >>> loss_fn = UniCLSigmoidLoss(backend="chunked")
        >>> out = {"image_features": torch.randn(4, 16), "text_features": torch.randn(4, 16),
        ...        "logit_scale": torch.tensor(10.0), "logit_bias": torch.tensor(-10.0)}
        >>> loss_fn(**out, labels=torch.tensor([3, 3, -1, 5])).ndim
        0
    """

    def forward(  # type: ignore[override]
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        labels: torch.Tensor | None = None,
        logit_scale: torch.Tensor | float = SIGMOID_LOGIT_SCALE,
        logit_bias: torch.Tensor | float = SIGMOID_LOGIT_BIAS,
        text_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of one batch; shapes as in `unicl.unicl_sigmoid_loss`."""
        return self._batch_loss(image_features, text_features, labels, logit_scale, SIGMOID, logit_bias, text_labels)
