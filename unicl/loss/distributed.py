"""UniCL over a global batch gathered from every rank of a ``torch.distributed`` process group.

Features are all-gathered with a gather whose backward sums each rank's gradient contributions back to the rank
that owns the features (a reduce-scatter on NCCL, an all-reduce on gloo), written with torch's functional
collectives so that ``torch.compile`` traces it correctly. Labels travel without gradients. A class label ``>= 0``
means the same class on every rank; a negative label (an image-text pair) stays unique by its *global* index, so a
pair on rank 0 is never a positive of a pair on rank 3. With ``text_labels`` each rank has its own ``n_r`` images and
``m_r`` texts (any numbers, zero included); both are gathered with their labels, and the loss is that of the ``N``
gathered images against the ``M`` gathered texts.

The gradient convention, the same for both modes: the mean over ranks of the returned loss equals the loss of the
concatenated global batch, and each rank's feature gradient is ``W × ∂L_global/∂(its features)``. DDP averages
parameter gradients over the ``W`` ranks, so training matches single-process training on the global batch.

* Global mode: every rank computes the loss of the whole global batch (``N²`` work per rank).
* Local mode (``local_loss=True``): each rank computes only its own ``n`` rows against all ``N`` global columns, in
  both directions (its images against all texts, its texts against all images), and returns ``W × (its share of the
  global loss)``: ``n·N`` work per rank, ``W`` times less.
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
from unicl.loss.objectives.base import Counted
from unicl.loss.targets import batch_targets

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
        text: ``[M, D]`` global text features (``M = N`` without text labels).
        keys: ``[N]`` global target keys of the images (see `unicl.loss.targets.batch_targets`).
        text_keys: ``[M]`` global target keys of the texts; ``keys`` itself without text labels.
        counted: which images and texts have a positive (``[N]`` and ``[M]`` booleans) with text labels, else
            ``None`` (every one has).
        offset: global index of this rank's first image.
        local_size: ``n``, this rank's images.
        text_offset: global index of this rank's first text.
        local_text_size: ``m``, this rank's texts.
        world_size: ``W``.
    """

    image: torch.Tensor
    text: torch.Tensor
    keys: torch.Tensor
    text_keys: torch.Tensor
    counted: Counted
    offset: int
    local_size: int
    text_offset: int
    local_text_size: int
    world_size: int

    @property
    def total_size(self) -> int:
        """``N``, the global number of images."""
        return self.keys.shape[0]

    @property
    def rows(self) -> slice:
        """This rank's images among the global ones."""
        return slice(self.offset, self.offset + self.local_size)

    @property
    def text_rows(self) -> slice:
        """This rank's texts among the global ones."""
        return slice(self.text_offset, self.text_offset + self.local_text_size)

    @property
    def local_counted(self) -> Counted:
        """``counted`` of this rank's images and texts."""
        return None if self.counted is None else (self.counted[0][self.rows], self.counted[1][self.text_rows])


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
    text: torch.Tensor | None = None,
    text_labels: torch.Tensor | None = None,
) -> tuple[list[int], list[int]]:
    """All-gather every rank's numbers of images and texts and check that D, dtype, device type, labels and text
    labels agree, and that no rank refused its inputs; returns the images' and the texts' sizes by rank.

    Every rank takes part in the same collective before anyone raises, so a mismatch or a bad input on one rank is
    an error on every rank rather than a hang in a later collective (or a peer's lost connection). A rank whose
    inputs failed their checks passes ``image=None`` and its ``problem``, and raises that problem itself.
    """
    if problem is not None or image is None:
        mine = torch.tensor([0, 0, 0, 0, 0, 1, 0, 0])
    else:
        device_code = _DEVICE_TYPES.index(image.device.type) if image.device.type in _DEVICE_TYPES else 2
        texts = image.shape[0] if text is None else text.shape[0]
        mine = torch.tensor(
            [image.shape[0], image.shape[1], _DTYPE_CODES[image.dtype], int(labels is not None), device_code, 0,
             texts, int(text_labels is not None)]
        )  # fmt: skip
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
    checks = ((1, "feature dimension D"), (2, "feature dtype"), (4, "device type"), (3, "labels given"),
              (7, "text_labels given"))  # fmt: skip
    for column, what in checks:
        values = [row[column] for row in table]
        if len(set(values)) > 1:
            shown = [
                names[v] if column == 2 else bool(v) if column in (3, 7) else device_names[v] if column == 4 else v
                for v in values
            ]
            raise ValueError(f"gather_distributed=True needs the same {what} on every rank; got {shown} by rank")
    sizes, text_sizes = [row[0] for row in table], [row[6] for row in table]
    if sum(sizes) == 0:
        raise ValueError("gather_distributed=True: every rank's batch is empty; at least one needs a sample")
    if sum(text_sizes) == 0:
        raise ValueError("gather_distributed=True: no rank has a text; at least one needs a text")
    return sizes, text_sizes


def _gather_rows(
    parts: list[torch.Tensor], sizes: list[list[int]], group: dist.ProcessGroup | None
) -> list[torch.Tensor]:
    """All-gather several ``[n_r, ...]`` tensors of the same trailing shape and dtype in one collective, keeping the
    autograd graph: part ``k`` has ``sizes[k][r]`` rows on rank ``r`` (each part is padded to its largest); returns
    each part's concatenation over the ranks, in rank order."""
    largest = [max(part_sizes) for part_sizes in sizes]
    padded = torch.cat(
        [
            torch.nn.functional.pad(part, (0, 0) * (part.dim() - 1) + (0, rows - part.shape[0]))
            for part, rows in zip(parts, largest, strict=True)
        ]
    )
    gathered = _GatherWithGradient.apply(padded, group, len(sizes[0]), dist.get_rank(group))
    if len(parts) == 1 and all(size == largest[0] for size in sizes[0]):
        return [gathered]
    by_rank = gathered.split(sum(largest))
    starts = [sum(largest[:k]) for k in range(len(parts))]
    return [
        torch.cat([block[start : start + size] for block, size in zip(by_rank, part_sizes, strict=True)])
        for start, part_sizes in zip(starts, sizes, strict=True)
    ]


def gather_batch(
    image: torch.Tensor,
    text: torch.Tensor,
    labels: torch.Tensor | None,
    group: dist.ProcessGroup | None = None,
    equal_batches: bool = False,
    text_labels: torch.Tensor | None = None,
) -> GlobalBatch:
    """Gather features and labels from every rank of ``group`` (sizes may differ between ranks).

    Args:
        image: ``[n, D]`` this rank's image features.
        text: ``[n, D]`` this rank's text features; ``[m, D]`` with ``text_labels``.
        labels: ``[n]`` this rank's labels, or ``None`` on every rank.
        group: the process group (``None``: the default group).
        equal_batches: every rank declares the same ``n`` (and ``m``), ``D``, dtype, labels-or-not and
            text-labels-or-not, so no sizes are exchanged: the gathers are the only collectives, with no host
            synchronisation. A rank that breaks the declaration makes a collective fail (or wait for the process
            group's timeout) instead of raising a named error on every rank.
        text_labels: ``[m]`` this rank's text labels (then given on every rank), or ``None``: the texts are the
            images' own, one each.

    Returns:
        The `GlobalBatch`.

    Raises:
        ValueError: on every rank, when ranks disagree on D, dtype, device type or whether labels (or text labels)
            are given, or when every rank's batch (or every rank's set of texts) is empty.
    """
    world = distributed_world(group)
    if world is None:
        raise RuntimeError("gather_batch needs an initialised process group with more than one rank")
    rank, world_size = world
    if equal_batches:
        sizes, text_sizes = [image.shape[0]] * world_size, [text.shape[0]] * world_size
    else:
        sizes, text_sizes = _exchange_shapes(image, labels, group, world_size, text=text, text_labels=text_labels)
    if text_labels is None:
        # One text per image: the two feature sets travel side by side, one row per sample.
        global_image, global_text = _gather_rows([torch.cat([image, text], dim=1)], [sizes], group)[0].split(
            image.shape[1], dim=1
        )
        label_parts = [] if labels is None else [labels.long()[:, None]]
    else:
        global_image, global_text = _gather_rows([image, text], [sizes, text_sizes], group)
        label_parts = [labels.long()[:, None], text_labels.long()[:, None]] if labels is not None else []
    gathered_labels = _gather_rows(label_parts, [sizes, text_sizes][: len(label_parts)], group) if label_parts else []
    global_labels, global_text_labels = (*(part[:, 0] for part in gathered_labels), None, None)[:2]
    keys, text_keys, counted = batch_targets(
        global_labels, global_text_labels, sum(sizes), sum(text_sizes), image.device
    )
    return GlobalBatch(
        global_image, global_text, keys, text_keys, counted, sum(sizes[:rank]), image.shape[0],
        sum(text_sizes[:rank]), text.shape[0], world_size,
    )  # fmt: skip


def distributed_unicl_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    labels: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float = DEFAULT_LOGIT_SCALE,
    *,
    text_labels: torch.Tensor | None = None,
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
        text_features: ``[n, D]`` this rank's text features; ``[m, D]`` with ``text_labels``.
        labels: ``[n]`` this rank's labels or ``None`` (then ``None`` on every rank).
        logit_scale: as in `unicl.unicl_loss` (the same value on every rank).
        text_labels: ``[m]`` labels of this rank's ``m`` texts, as in `unicl.unicl_loss` (then given on every
            rank; ``m`` may differ between ranks and be zero on some). The texts are gathered with their labels,
            and the loss is that of all ranks' images against all ranks' texts: a text label ``>= 0`` is a
            positive of every image of that class on any rank, a negative one a positive of none.
        group: process group (``None``: default).
        local_loss: compute only this rank's rows and columns (``W`` times less work and memory).
        backend: as in `unicl.unicl_loss`.
        reduction: as in `unicl.unicl_loss`; with ``"none"`` the result is this rank's ``[n]`` per-sample
            terms, in both modes (with ``text_labels``: ``[n + m]``, its images' terms then its texts', NaN where
            one has no positive).
        normalize: as in `unicl.unicl_loss`.
        chunk_size: as in `unicl.unicl_loss`.
        equal_batches: every rank has the same batch size, and the same number of texts (a training loop with
            full batches on every rank): no size exchange and no host synchronisation, one all-gather of the
            features per call (see `gather_batch`). ``False`` exchanges sizes first, which allows uneven and empty
            batches and turns a bad input on any rank into an error on every rank.

    Returns:
        A scalar whose mean over ranks is the global loss, or ``[n]`` for ``"none"``. A rank with no samples
        (``n = 0``) takes part as usual: in global mode it returns the global loss, in local mode zero, and its
        feature gradients are ``[0, D]``.

    Raises:
        ValueError: on every rank, when ranks disagree on D, dtype, device type or whether labels (or text labels)
            are given, when every rank's batch (or every rank's set of texts) is empty, or when another rank's
            inputs fail their checks (that rank raises its own ``TypeError`` or ``ValueError``).
    """
    return gathered_batch_loss(
        image_features, text_features, labels, logit_scale, backend, reduction, normalize, chunk_size,
        group=group, local_loss=local_loss, equal_batches=equal_batches, options_checked=False,
        text_labels=text_labels,
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
    try:
        # A rank may hold no samples (the last, uneven batch of an epoch); a bad input on one rank still reaches
        # the shape exchange, so that every rank raises instead of the others waiting in a collective.
        if not options_checked:
            check_options(backend, reduction, chunk_size)
        image, text, labels, scale, text_labels = prepare_inputs(
            image_features, text_features, labels, logit_scale, allow_no_rows=True, text_labels=text_labels
        )
        bias = bias_tensor(logit_bias, image) if objective.has_bias else None
    except (TypeError, ValueError) as problem:
        # Raises this rank's problem once every rank has heard of it (and a ValueError on the others); ranks that
        # declared equal batches exchange nothing, so this one raises alone.
        if not equal_batches:
            _exchange_shapes(None, None, group, world[1], problem)
        raise
    batch = gather_batch(image, text, labels, group, equal_batches, text_labels)
    terms = functools.partial(
        block_terms, normalize=normalize, backend=backend, chunk_size=chunk_size, objective=objective, bias=bias,
        uniform_upstream=reduction != "none",
    )  # fmt: skip
    if not local_loss:
        image_terms, text_terms = terms(batch.image, batch.text, scale, batch.keys, batch.text_keys, columns=True)
        if reduction != "none":
            return objective.reduce(image_terms, text_terms if objective.two_sided else None, reduction, batch.counted)
        image_terms, text_terms = image_terms[batch.rows], text_terms[batch.text_rows]
    else:
        # Local rows against global columns, once per direction of a two-sided objective: the row terms of
        # U_local·V_globalᵀ are this rank's image-to-text terms, those of V_local·U_globalᵀ its text-to-image terms.
        local_keys, local_text_keys = batch.keys[batch.rows], batch.text_keys[batch.text_rows]
        image_terms = terms(image, batch.text, scale, local_keys, batch.text_keys, columns=False)[0]
        if objective.two_sided:
            text_terms = terms(text, batch.image, scale, local_text_keys, batch.keys, columns=False)[0]
    local_text_terms = text_terms if objective.two_sided else None
    if reduction == "none":
        return objective.reduce(image_terms, local_text_terms, "none", batch.local_counted)
    # This rank's share: its terms in place among zeros for every other rank's, reduced as the global batch is
    # (the mean of each direction over that direction's global count, whatever the objective counts).
    return (
        objective.reduce(
            _placed(image_terms, batch.rows, batch.total_size),
            None if local_text_terms is None else _placed(local_text_terms, batch.text_rows, batch.text_keys.shape[0]),
            reduction,
            batch.counted,
        )
        * batch.world_size
    )


def _placed(terms: torch.Tensor, rows: slice, total: int) -> torch.Tensor:
    """``[total]``: ``terms`` at ``rows``, zeros elsewhere (differentiable in ``terms``)."""
    before = terms.new_zeros(rows.start)
    return torch.cat([before, terms, terms.new_zeros(total - rows.start - terms.shape[0])])
