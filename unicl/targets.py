"""Targets of the UniCL objective, built from labels without any N×N tensor.

Every sample gets a *target key*: its class label when the label is >= 0, or a key unique to its global index when
the label is negative (an image-text pair, positive only with its own text). Then ``T_ij = [key_i == key_j]`` holds
for rectangular blocks too, which is what distributed training needs, and all positive terms of the loss and its
gradient reduce to per-key sums of feature rows (``O(N·D)`` work, see ``shared/design/objective.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unicl._dtypes import accumulation_dtype

#: Rows per step when weighting feature rows, which bounds the temporary to this many rows.
SUM_BLOCK_ROWS = 1024


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


def _group_ids(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort ``keys`` and number the distinct values: returns ``(sorted_keys, order, group)`` with ``group [L]`` the
    group id (in ``[0, L)``) of each key in its original position."""
    sorted_keys, order = torch.sort(keys)
    starts = torch.ones_like(sorted_keys)
    starts[1:] = (sorted_keys[1:] != sorted_keys[:-1]).long()
    group = torch.empty_like(order)
    group[order] = torch.cumsum(starts, 0) - 1
    return sorted_keys, order, group


def _lookup(queries: torch.Tensor, sorted_keys: torch.Tensor, order: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Group id of each query key among the grouped keys, or ``len(keys)`` (an always-empty group) if absent."""
    position = torch.searchsorted(sorted_keys, queries).clamp_(max=sorted_keys.shape[0] - 1)
    found = sorted_keys[position] == queries
    return torch.where(found, group[order[position]], sorted_keys.shape[0])


@dataclass(frozen=True)
class KeyGroups:
    """Keys of one side (say the columns) grouped, and where each key of the other side falls among them.

    A group buffer has ``L + 1`` slots for ``L`` grouped keys: one per distinct key at most, and a last slot that
    stays empty for the keys of the other side that have no match.

    Attributes:
        own: ``[L]`` group id of each grouped key.
        other: ``[K]`` group id of each key of the other side (``L`` when it has no match).
        counts_for_other: ``[K]`` how many grouped keys equal each key of the other side.
    """

    own: torch.Tensor
    other: torch.Tensor
    counts_for_other: torch.Tensor

    @classmethod
    def build(cls, keys: torch.Tensor, other_keys: torch.Tensor, dtype: torch.dtype) -> KeyGroups:
        """Group ``keys [L]`` and look up ``other_keys [K]``; counts come out in ``dtype``."""
        sorted_keys, order, group = _group_ids(keys)
        other = _lookup(other_keys, sorted_keys, order, group)
        sizes = torch.zeros(keys.shape[0] + 1, dtype=dtype, device=keys.device)
        sizes.index_add_(0, group, torch.ones(keys.shape[0], dtype=dtype, device=keys.device))
        return cls(group, other, sizes[other])

    def sums(
        self, values: torch.Tensor, weight: torch.Tensor | None = None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-group sums of ``weight[l] * values[l]`` over the grouped side, in the accumulation dtype.

        Args:
            values: ``[L, D]``, any float dtype (half precision is upcast a block of rows at a time).
            weight: ``[L]`` in the accumulation dtype, or ``None`` (all ones).
            out: an ``[L + 1, D]`` buffer in the accumulation dtype to overwrite (reusing one saves an allocation).

        Returns:
            ``[L + 1, D]``; row ``other[k]`` is the sum over the grouped keys equal to key ``k`` of the other side.
        """
        acc = accumulation_dtype(values.dtype)
        buffer = values.new_zeros(values.shape[0] + 1, values.shape[1], dtype=acc) if out is None else out.zero_()
        if weight is None and values.dtype == acc:
            return buffer.index_add_(0, self.own, values)
        # Weighted or upcast in row blocks, so that no second [L, D] tensor is held.
        scratch = buffer.new_empty(min(SUM_BLOCK_ROWS, values.shape[0]), values.shape[1])
        for start in range(0, values.shape[0], SUM_BLOCK_ROWS):
            rows = slice(start, start + SUM_BLOCK_ROWS)
            block = scratch[: values[rows].shape[0]]
            if weight is None:
                block.copy_(values[rows])
            else:
                torch.mul(values[rows], weight[rows, None], out=block)
            buffer.index_add_(0, self.own[rows], block)
        return buffer


@dataclass(frozen=True)
class PositiveGroups:
    """Positive sets of a block with ``M`` row keys and ``N`` column keys, without any ``M × N`` tensor.

    Built by sorting and binary search, so it needs no host-device synchronisation (unlike ``torch.unique``, whose
    output size depends on the data).

    Attributes:
        by_column: columns grouped; ``by_column.other`` places the rows, ``by_column.counts_for_other`` is ``p [M]``.
        by_row: rows grouped; ``by_row.other`` places the columns, ``by_row.counts_for_other`` is ``q [N]``.
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
