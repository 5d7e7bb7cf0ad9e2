"""Targets of the UniCL objective, built from labels without any N×N tensor.

Every sample gets a *target key*: its class label when the label is >= 0, or a key unique to its global index when
the label is negative (an image-text pair, positive only with its own text). Then ``T_ij = [key_i == key_j]`` holds
for rectangular blocks too, which is what distributed training needs, and all positive terms of the loss and its
gradient reduce to per-key sums of feature rows (``O(N·D)`` work; the algebra is in docs/objective.md, "What the
backends compute").

A key that only one grouped row has (every image-text pair, and a class seen once) needs no sum: its "sum" is that
row. So sums are stored only for groups of two or more rows, and a lookup reads either the stored sum or the lone
row itself. On the CPU the buffer holds exactly those groups (a batch of unique pairs stores none); on accelerators
and under ``torch.compile`` it holds ``L // 2``, their most, because counting them would need a host-device
synchronisation or a data-dependent shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from unicl.loss.dtypes import accumulation_dtype
from unicl.loss.row_dots import ROW_BLOCK


def target_keys(labels: torch.Tensor | None, num_samples: int, device: torch.device, offset: int = 0) -> torch.Tensor:
    """Turn labels into target keys so that two samples are positives exactly when their keys are equal.

    Args:
        labels: ``[N]`` integer labels (class ids ``>= 0``, negative for unique image-text pairs) or ``None``,
            meaning every sample is a unique pair (the CLIP objective).
        num_samples: ``N``.
        device: device of the result.
        offset: global index of the first sample, so that pair keys stay unique across the blocks of a global batch.

    Returns:
        ``[N]`` int64 keys: the label where it is ``>= 0``, else ``-1 - global_index``.
    """
    pair_keys = -1 - torch.arange(offset, offset + num_samples, device=device, dtype=torch.long)
    if labels is None:
        return pair_keys
    labels = labels.long()
    return torch.where(labels >= 0, labels, pair_keys)


def text_target_keys(
    text_labels: torch.Tensor, num_texts: int, device: torch.device, num_images: int, offset: int = 0
) -> torch.Tensor:
    """Target keys of texts that carry labels of their own (a batch of ``N`` images and ``M`` texts).

    A text with a label ``>= 0`` is a positive of every image of that class; a text with a negative label (a hard
    negative) is a positive of none, so its key is unique and below every image's key.

    Args:
        text_labels: ``[M]`` integer labels.
        num_texts: ``M``.
        device: device of the result.
        num_images: ``N``, the images of the (global) batch: the texts' unique keys start below theirs.
        offset: global index of the first text.

    Returns:
        ``[M]`` int64 keys: the label where it is ``>= 0``, else ``-1 - num_images - global_index``.
    """
    return target_keys(text_labels, num_texts, device, offset + num_images)


def batch_targets(
    labels: torch.Tensor | None,
    text_labels: torch.Tensor | None,
    num_images: int,
    num_texts: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """The row and column keys of a batch and, with ``text_labels``, which rows and columns have a positive.

    Args:
        labels: ``[N]`` image labels, or ``None``.
        text_labels: ``[M]`` text labels, or ``None`` for a square batch (the texts share the images' labels).
        num_images: ``N``.
        num_texts: ``M``.
        device: device of the results.

    Returns:
        ``(row_keys [N], col_keys [M], counted)``: ``col_keys`` is ``row_keys`` itself for a square batch, and
        ``counted`` is ``None`` there (every row and column has a positive), else the ``[N]`` and ``[M]`` booleans.
    """
    row_keys = target_keys(labels, num_images, device)
    if text_labels is None:
        return row_keys, row_keys, None
    col_keys = text_target_keys(text_labels, num_texts, device, num_images)
    return row_keys, col_keys, (torch.isin(row_keys, col_keys), torch.isin(col_keys, row_keys))


def _group_ids(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort ``keys`` and number the distinct values: returns ``(sorted_keys, order, group)`` with ``group [L]`` the
    group id (in ``[0, L)``) of each key in its original position."""
    sorted_keys, order = torch.sort(keys)
    starts = torch.ones_like(sorted_keys)
    starts[1:] = (sorted_keys[1:] != sorted_keys[:-1]).long()
    group = torch.empty_like(order)
    group[order] = torch.cumsum(starts, 0) - 1
    return sorted_keys, order, group


@dataclass(frozen=True)
class KeyGroups:
    """Keys of one side (say the columns) grouped, and where each key of the other side falls among them.

    Groups of two or more keys own a *slot* of a sums buffer with ``slots + 1`` rows (`buffer_rows`); the
    last slot stays zero and stands for "no stored sum". A key of the other side that matches a lone grouped key
    reads that key's row instead.

    Attributes:
        own: ``[L]`` slot of each grouped key (the zero slot when it is alone in its group).
        other_slot: ``[K]`` slot of the group matching each key of the other side (the zero slot when it matches
            nothing or a lone key).
        other_lone: ``[K]`` index of the lone grouped key each key of the other side matches (any valid index
            where ``other_is_lone`` is false).
        other_is_lone: ``[K]`` whether the matching group is a lone key.
        counts_for_other: ``[K]`` how many grouped keys equal each key of the other side.
        slots: slots for sums, at least the number of groups of two or more keys; slot ``slots`` is the zero slot.
    """

    own: torch.Tensor
    other_slot: torch.Tensor
    other_lone: torch.Tensor
    other_is_lone: torch.Tensor
    counts_for_other: torch.Tensor
    slots: int

    @classmethod
    def build(cls, keys: torch.Tensor, other_keys: torch.Tensor, dtype: torch.dtype) -> KeyGroups:
        """Group ``keys [L]`` and look up ``other_keys [K]``; counts come out in ``dtype``.

        Sorting and binary search only: no host-device synchronisation (unlike ``torch.unique``, whose output size
        depends on the data); see the module docstring for the number of slots.
        """
        size = keys.shape[0]
        sorted_keys, order, group = _group_ids(keys)
        sizes = torch.zeros(size + 1, dtype=torch.long, device=keys.device)
        sizes.index_add_(0, group, torch.ones_like(group))
        # Groups of two or more get slots 0, 1, ... in group order (at most L // 2 of them); the rest the zero slot.
        shared = sizes >= 2
        slots = size // 2
        if keys.device.type == "cpu" and not torch.compiler.is_compiling():
            slots = int(shared.sum())
        slot = torch.where(shared, torch.cumsum(shared, 0) - 1, slots)
        position = torch.searchsorted(sorted_keys, other_keys).clamp_(max=size - 1)
        found = sorted_keys[position] == other_keys
        other_group = torch.where(found, group[order[position]], size)  # size: the always-empty group
        return cls(
            own=slot[group],
            other_slot=slot[other_group],
            other_lone=order[position],  # the first grouped key equal to each other key: the only one if lone
            other_is_lone=sizes[other_group] == 1,
            counts_for_other=sizes[other_group].to(dtype),
            slots=slots,
        )

    def buffer_rows(self) -> int:
        """Rows of the sums buffer: the slots and the zero slot."""
        return self.slots + 1

    def sums(
        self, values: torch.Tensor, weight: torch.Tensor | None = None, out: torch.Tensor | None = None
    ) -> GroupSums:
        """Per-group sums of ``weight[l] · values[l]`` over the grouped side, to look up by the other side's keys.

        Args:
            values: ``[L, D]``, any float dtype (half precision is upcast a block of rows at a time).
            weight: ``[L]`` in the accumulation dtype, or ``None`` (all ones).
            out: a ``[buffer_rows(), D]`` buffer in the accumulation dtype to overwrite (one buffer can serve
                several sums in turn), or ``None`` to allocate one.

        Returns:
            The `GroupSums`; it reads ``values``, ``weight`` and the buffer, so keep them unchanged while
            it is in use.
        """
        acc = accumulation_dtype(values.dtype)
        rows = self.buffer_rows()
        buffer = values.new_zeros(rows, values.shape[1], dtype=acc) if out is None else out[:rows].zero_()
        # Without a group of two or more (a batch of unique pairs on the CPU) every key is read from the values.
        stored_rows = values.shape[0] if self.slots > 0 else 0
        scratch = buffer.new_empty(min(ROW_BLOCK, stored_rows), values.shape[1])
        for start in range(0, stored_rows, ROW_BLOCK):
            block = slice(start, start + ROW_BLOCK)
            weighted = scratch[: values[block].shape[0]]
            if weight is None:
                weighted.copy_(values[block])
            else:
                torch.mul(values[block], weight[block, None], out=weighted)
            buffer.index_add_(0, self.own[block], weighted)
        buffer[-1].zero_()  # lone keys were added to the zero slot; they are read from values instead
        lone_weight = self.other_is_lone.to(acc)
        if weight is not None:
            lone_weight.mul_(weight[self.other_lone])
        return GroupSums(self, buffer, values, lone_weight)


@dataclass(frozen=True)
class GroupSums:
    """The per-group sums of `KeyGroups.sums`, read row by row for the other side's keys.

    Row ``k`` is ``buffer[other_slot[k]] + lone_weight[k] · values[other_lone[k]]``: a stored sum, or the lone
    matching row, or zero.

    Attributes:
        groups: the grouping.
        buffer: ``[slots + 1, D]`` sums of the groups of two or more.
        values: ``[L, D]`` the summed rows.
        lone_weight: ``[K]`` the weight of the lone matching row, 0 where there is none.
    """

    groups: KeyGroups
    buffer: torch.Tensor
    values: torch.Tensor
    lone_weight: torch.Tensor

    def _blocks(self) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yields ``(rows, block)`` with ``block [B, D]`` the sums of the other side's keys ``rows``; the block is a
        view of a buffer the next step overwrites."""
        count = self.lone_weight.shape[0]
        gathered = self.buffer.new_empty(min(ROW_BLOCK, count), self.buffer.shape[1])
        lone = self.values.new_empty(gathered.shape)
        for start in range(0, count, ROW_BLOCK):
            rows = slice(start, start + ROW_BLOCK)
            size = self.lone_weight[rows].shape[0]
            block = torch.index_select(self.buffer, 0, self.groups.other_slot[rows], out=gathered[:size])
            lone_rows = torch.index_select(self.values, 0, self.groups.other_lone[rows], out=lone[:size])
            yield rows, block.addcmul_(lone_rows, self.lone_weight[rows, None])

    def dots(self, x: torch.Tensor) -> torch.Tensor:
        """``out[k] = ⟨x[k], sum for key k⟩`` for ``x [K, D]``; returns ``[K]`` in the accumulation dtype."""
        out = self.buffer.new_empty(x.shape[0])
        for rows, block in self._blocks():
            out[rows] = torch.linalg.vecdot(x[rows].to(block.dtype), block)
        return out

    def subtract_from(self, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """In place: ``target[k] -= weight[k] · (sum for key k)`` (``weight`` ``None`` means 1); returns ``target``.

        Args:
            target: ``[K, D]`` in the accumulation dtype, overwritten.
            weight: ``[K]`` or ``None``.
        """
        for rows, block in self._blocks():
            if weight is None:
                target[rows].sub_(block)
            else:
                target[rows].addcmul_(block, weight[rows, None], value=-1)
        return target


@dataclass(frozen=True)
class PositiveGroups:
    """Positive sets of a block with ``M`` row keys and ``N`` column keys, without any ``M × N`` tensor.

    Attributes:
        by_column: columns grouped; looks up the rows; ``by_column.counts_for_other`` is ``p [M]``.
        by_row: rows grouped; looks up the columns; ``by_row.counts_for_other`` is ``q [N]``.
    """

    by_column: KeyGroups
    by_row: KeyGroups

    @classmethod
    def from_keys(cls, row_keys: torch.Tensor, col_keys: torch.Tensor, dtype: torch.dtype) -> PositiveGroups:
        """Group ``row_keys [M]`` and ``col_keys [N]``; counts come out in ``dtype``."""
        return cls(KeyGroups.build(col_keys, row_keys, dtype), KeyGroups.build(row_keys, col_keys, dtype))

    @property
    def row_count(self) -> torch.Tensor:
        """``[M]`` ``p_i``: the number of columns positive with row ``i``."""
        return self.by_column.counts_for_other

    @property
    def col_count(self) -> torch.Tensor:
        """``[N]`` ``q_j``: the number of rows positive with column ``j``."""
        return self.by_row.counts_for_other
