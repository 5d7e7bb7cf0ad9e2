"""UniCL over a global batch gathered from every rank of a ``torch.distributed`` process group.

Features are all-gathered with a gather whose backward sums each rank's gradient contributions back to the rank
that owns the features (a reduce-scatter on NCCL, an all-reduce on gloo), written with torch's functional
collectives so that ``torch.compile`` traces it correctly. Labels travel without gradients. A class label ``>= 0``
means the same class on every rank; a negative label (an image-text pair) stays unique by its *global* index, so a
pair on rank 0 is never a positive of a pair on rank 3.

The gradient convention, the same for both modes: the mean over ranks of the returned loss equals the loss of the
concatenated global batch, and each rank's feature gradient is ``W × ∂L_global/∂(its features)``. DDP averages
parameter gradients over the ``W`` ranks, so training matches single-process training on the global batch.

* Global mode: every rank computes the loss of the whole global batch (``N²`` work per rank).
* Local mode (``local_loss=True``): each rank computes only its own ``n`` rows against all ``N`` global columns, in
  both directions, and returns ``W × (its share of the global sum)``: ``n·N`` work per rank, ``W`` times less.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed import _functional_collectives as funcol

from unicl.loss.backends import block_terms
from unicl.loss.functional import DEFAULT_LOGIT_SCALE, batch_loss, bias_tensor, check_options, prepare_inputs
from unicl.loss.objectives import SOFTMAX, Objective
from unicl.loss.targets import target_keys

_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
_DEVICE_TYPES = ("cpu", "cuda")


def distributed_world(group: dist.ProcessGroup | None = None) -> tuple[int, int] | None:
    """``(rank, world_size)`` in ``group`` when a process group is initialised and has more than one rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world_size = dist.get_world_size(group)
    return (dist.get_rank(group), world_size) if world_size > 1 else None


@dataclass(frozen=True)
class GlobalBatch:
    """The concatenation of every rank's batch, in rank order.

    Attributes:
        image: ``[N, D]`` global image features (differentiable back to each rank's own).
        text: ``[N, D]`` global text features.
        keys: ``[N]`` global target keys (see `unicl.loss.targets.target_keys`).
        offset: global index of this rank's first sample.
        local_size: ``n``, this rank's batch size.
        world_size: ``W``.
    """

    image: torch.Tensor
    text: torch.Tensor
    keys: torch.Tensor
    offset: int
    local_size: int
    world_size: int

    @property
    def total_size(self) -> int:
        """``N``, the global batch size."""
        return self.keys.shape[0]

    @property
    def local_keys(self) -> torch.Tensor:
        """``[n]`` keys of this rank's samples."""
        return self.keys[self.offset : self.offset + self.local_size]


def _exchange_device(group: dist.ProcessGroup | None, features: torch.Tensor | None) -> torch.device:
    """Where the process group's collectives take their tensors: the features' own GPU for NCCL (not the current
    CUDA device, which a script that moves tensors to ``cuda:{local_rank}`` without ``torch.cuda.set_device``
    leaves at ``cuda:0`` on every rank), else the CPU."""
    if dist.get_backend(group) != "nccl":
        return torch.device("cpu")
    if features is not None and features.device.type == "cuda":
        return features.device
    return torch.device("cuda", torch.cuda.current_device())


#: Functional collectives: each returns a new tensor instead of writing into one. ``torch.compile`` traces them as
#: they are; the in-place ``torch.distributed`` ones are functionalised when traced, and torch 2.11 loses the result
#: of the in-place all-reduce in a compiled backward (every gradient came back zero). Taken under their current
#: names, falling back to the names torch 2.14 deprecates.
_ALL_GATHER_SINGLE = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
_REDUCE_SCATTER_SINGLE = getattr(funcol, "reduce_scatter_single", None) or funcol.reduce_scatter_tensor
_ALL_REDUCE = funcol.all_reduce


class _GatherWithGradient(torch.autograd.Function):
    """All-gather of equal-sized blocks whose backward sums every rank's gradient of each block and returns this
    rank's, as ``torch.distributed.nn.functional.all_gather`` (deprecated by torch) does."""

    @staticmethod
    def forward(ctx, block: torch.Tensor, group: dist.ProcessGroup | None, world_size: int, rank: int):
        ctx.group = dist.group.WORLD if group is None else group
        ctx.rank, ctx.world_size = rank, world_size
        return funcol.wait_tensor(_ALL_GATHER_SINGLE(block.contiguous(), 0, ctx.group))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == "nccl":
            return funcol.wait_tensor(_REDUCE_SCATTER_SINGLE(grad, "sum", 0, ctx.group)), None, None, None
        # gloo: one all-reduce of the whole gradient, then this rank's block of the sum.
        total = funcol.wait_tensor(_ALL_REDUCE(grad, "sum", ctx.group))
        return total.chunk(ctx.world_size)[ctx.rank].clone(), None, None, None


def _exchange_shapes(
    image: torch.Tensor | None,
    labels: torch.Tensor | None,
    group: dist.ProcessGroup | None,
    world_size: int,
    problem: Exception | None = None,
) -> list[int]:
    """All-gather every rank's batch size and check that D, dtype, device type and labels agree, and that no rank
    refused its inputs; returns the sizes.

    Every rank takes part in the same collective before anyone raises, so a mismatch or a bad input on one rank is
    an error on every rank rather than a hang in a later collective (or a peer's lost connection). A rank whose
    inputs failed their checks passes ``image=None`` and its ``problem``, and raises that problem itself.
    """
    if problem is not None or image is None:
        mine = torch.tensor([0, 0, 0, 0, 0, 1])
    else:
        device_code = _DEVICE_TYPES.index(image.device.type) if image.device.type in _DEVICE_TYPES else 2
        mine = torch.tensor(
            [image.shape[0], image.shape[1], _DTYPE_CODES[image.dtype], int(labels is not None), device_code, 0]
        )
    mine = mine.to(_exchange_device(group, image))
    everyone = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(everyone, mine, group=group)
    table = torch.stack(everyone).cpu().tolist()
    refused = [rank for rank, row in enumerate(table) if row[5]]
    if refused:
        if problem is not None:
            raise problem
        raise ValueError(
            f"gather_distributed=True: rank(s) {refused} refused their inputs (their own error says why); "
            "no rank computed the loss"
        )
    names = {code: dtype for dtype, code in _DTYPE_CODES.items()}
    device_names = [*_DEVICE_TYPES, "other"]
    for column, what in ((1, "feature dimension D"), (2, "feature dtype"), (4, "device type"), (3, "labels given")):
        values = [row[column] for row in table]
        if len(set(values)) > 1:
            shown = [
                names[v] if column == 2 else bool(v) if column == 3 else device_names[v] if column == 4 else v
                for v in values
            ]
            raise ValueError(f"gather_distributed=True needs the same {what} on every rank; got {shown} by rank")
    sizes = [row[0] for row in table]
    if sum(sizes) == 0:
        raise ValueError("gather_distributed=True: every rank's batch is empty; at least one needs a sample")
    return sizes


def _gather_rows(tensor: torch.Tensor, sizes: list[int], group: dist.ProcessGroup | None) -> torch.Tensor:
    """All-gather ``[n_r, ...]`` blocks of uneven sizes (padded to the largest), keeping the autograd graph."""
    largest = max(sizes)
    padded = torch.nn.functional.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, largest - tensor.shape[0]))
    rank = dist.get_rank(group)
    gathered = _GatherWithGradient.apply(padded, group, len(sizes), rank)
    if all(size == largest for size in sizes):
        return gathered
    blocks = gathered.split(largest)
    return torch.cat([block[:size] for block, size in zip(blocks, sizes)])


def gather_batch(
    image: torch.Tensor,
    text: torch.Tensor,
    labels: torch.Tensor | None,
    group: dist.ProcessGroup | None = None,
    equal_batches: bool = False,
) -> GlobalBatch:
    """Gather features and labels from every rank of ``group`` (sizes may differ between ranks).

    Args:
        image: ``[n, D]`` this rank's image features.
        text: ``[n, D]`` this rank's text features.
        labels: ``[n]`` this rank's labels, or ``None`` on every rank.
        group: the process group (``None``: the default group).
        equal_batches: every rank declares the same ``n``, ``D``, dtype and labels-or-not, so no sizes are
            exchanged: the gather is the only collective, with no host synchronisation. A rank that breaks the
            declaration makes the collective fail (or wait for the process group's timeout) instead of raising
            a named error on every rank.

    Returns:
        The `GlobalBatch`.

    Raises:
        ValueError: on every rank, when ranks disagree on D, dtype, device type or whether labels are given, or
            when every rank's batch is empty.
    """
    world = distributed_world(group)
    if world is None:
        raise RuntimeError("gather_batch needs an initialised process group with more than one rank")
    rank, world_size = world
    sizes = [image.shape[0]] * world_size if equal_batches else _exchange_shapes(image, labels, group, world_size)
    features = _gather_rows(torch.cat([image, text], dim=1), sizes, group)
    global_image, global_text = features.split(image.shape[1], dim=1)
    global_labels = None if labels is None else _gather_rows(labels.long()[:, None], sizes, group)[:, 0]
    keys = target_keys(global_labels, sum(sizes), image.device)
    return GlobalBatch(global_image, global_text, keys, sum(sizes[:rank]), image.shape[0], world_size)


def distributed_unicl_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float = DEFAULT_LOGIT_SCALE,
    *,
    group: dist.ProcessGroup | None = None,
    local_loss: bool = False,
    backend: str = "auto",
    reduction: str = "mean",
    normalize: bool = True,
    chunk_size: int | None = None,
    equal_batches: bool = False,
) -> torch.Tensor:
    """The UniCL loss of the global batch gathered from every rank (see the module docstring for the convention).

    Outside an initialised process group, or with one rank, this is `unicl.unicl_loss`.

    Args:
        image_features: ``[n, D]`` this rank's image features.
        text_features: ``[n, D]`` this rank's text features.
        labels: ``[n]`` this rank's labels or ``None`` (then ``None`` on every rank).
        logit_scale: as in `unicl.unicl_loss` (the same value on every rank).
        group: process group (``None``: default).
        local_loss: compute only this rank's rows and columns (``W`` times less work and memory).
        backend: as in `unicl.unicl_loss`.
        reduction: as in `unicl.unicl_loss`; with ``"none"`` the result is this rank's ``[n]`` per-sample
            terms, in both modes.
        normalize: as in `unicl.unicl_loss`.
        chunk_size: as in `unicl.unicl_loss`.
        equal_batches: every rank has the same batch size (a training loop with full batches on every rank):
            no size exchange and no host synchronisation, one all-gather of the features per call (see
            `gather_batch`). ``False`` exchanges sizes first, which allows uneven and empty batches and turns
            a bad input on any rank into an error on every rank.

    Returns:
        A scalar whose mean over ranks is the global loss, or ``[n]`` for ``"none"``. A rank with no samples
        (``n = 0``) takes part as usual: in global mode it returns the global loss, in local mode zero, and its
        feature gradients are ``[0, D]``.

    Raises:
        ValueError: on every rank, when ranks disagree on D, dtype, device type or whether labels are given, when
            every rank's batch is empty, or when another rank's inputs fail their checks (that rank raises its
            own ``TypeError`` or ``ValueError``).
    """
    return gathered_batch_loss(
        image_features, text_features, labels, logit_scale, backend, reduction, normalize, chunk_size,
        group=group, local_loss=local_loss, equal_batches=equal_batches, options_checked=False,
    )  # fmt: skip


def gathered_batch_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor | None,
    logit_scale: torch.Tensor | float,
    backend: str,
    reduction: str,
    normalize: bool,
    chunk_size: int | None,
    *,
    group: dist.ProcessGroup | None,
    local_loss: bool,
    equal_batches: bool,
    options_checked: bool,
    objective: Objective = SOFTMAX,
    logit_bias: torch.Tensor | float | None = None,
    text_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """`distributed_unicl_loss`, whose options are checked here unless ``options_checked`` says that
    `unicl.loss.functional.check_options` passed them already (`unicl.loss.module.UniCLLoss` checks them once,
    when it is built). Unchecked options are checked inside the input checks that every rank hears of.
    ``objective`` and ``logit_bias`` select the objective (`unicl.loss.objectives`) and its bias, if it has one."""
    world = distributed_world(group)
    if world is None:
        if not options_checked:
            check_options(backend, reduction, chunk_size)
        return batch_loss(
            image_features, text_features, labels, logit_scale, backend, reduction, normalize, chunk_size, objective,
            logit_bias, text_labels,
        )  # fmt: skip
    if text_labels is not None:
        raise NotImplementedError(
            "text_labels with gather_distributed=True is not supported yet: gather the texts and their labels "
            "yourself and call the loss on the global batch, or train with one text per image"
        )
    try:
        # A rank may hold no samples (the last, uneven batch of an epoch); a bad input on one rank still reaches
        # the shape exchange, so that every rank raises instead of the others waiting in a collective.
        if not options_checked:
            check_options(backend, reduction, chunk_size)
        image, text, labels, scale, _ = prepare_inputs(
            image_features, text_features, labels, logit_scale, allow_no_rows=True
        )
        bias = bias_tensor(logit_bias, image) if objective.has_bias else None
    except (TypeError, ValueError) as problem:
        # Raises this rank's problem once every rank has heard of it (and a ValueError on the others); ranks that
        # declared equal batches exchange nothing, so this one raises alone.
        if not equal_batches:
            _exchange_shapes(None, None, group, world[1], problem)
        raise
    batch = gather_batch(image, text, labels, group, equal_batches)
    terms = functools.partial(
        block_terms, normalize=normalize, backend=backend, chunk_size=chunk_size, objective=objective, bias=bias,
        uniform_upstream=reduction != "none",
    )  # fmt: skip
    if not local_loss:
        image_terms, text_terms = terms(batch.image, batch.text, scale, batch.keys, batch.keys, columns=True)
        loss = objective.reduce(image_terms, text_terms if objective.two_sided else None, reduction)
        return loss[batch.offset : batch.offset + batch.local_size] if reduction == "none" else loss
    # Local rows against global columns, once per direction of a two-sided objective: the row terms of
    # U_local·V_globalᵀ are this rank's image-to-text terms, those of V_local·U_globalᵀ its text-to-image terms.
    image_terms = terms(image, batch.text, scale, batch.local_keys, batch.keys, columns=False)[0]
    local_text_terms = None
    if objective.two_sided:
        local_text_terms = terms(text, batch.image, scale, batch.local_keys, batch.keys, columns=False)[0]
    if reduction == "none":
        return objective.reduce(image_terms, local_text_terms, "none")
    share = objective.reduce(image_terms, local_text_terms, "sum") * batch.world_size
    return share / batch.total_size if reduction == "mean" else share
