"""Targets of the UniCL objective, built from labels without any N×N tensor.

Every sample gets a *target key*: its class label when the label is >= 0, or a key unique to its global index when
the label is negative (an image-text pair, positive only with its own text). Then ``T_ij = [key_i == key_j]`` holds
for rectangular blocks too, which is what distributed training needs, and all positive terms of the loss and its
gradient reduce to per-key sums of feature rows (``O(N·D)`` work, see ``shared/design/objective.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


@dataclass(frozen=True)
class PositiveGroups:
    """Which rows and columns share a target key, as group ids into one buffer of ``M + N`` groups.

    Built by sorting the keys, so it needs no host-device synchronisation (unlike ``torch.unique``, whose output
    size depends on the data).

    Attributes:
        row_group: ``[M]`` group id of each row key.
        col_group: ``[N]`` group id of each column key.
        row_count: ``[M]`` float ``p_i``, the number of columns that are positives of row ``i``.
        col_count: ``[N]`` float ``q_j``, the number of rows that are positives of column ``j``.
    """

    row_group: torch.Tensor
    col_group: torch.Tensor
    row_count: torch.Tensor
    col_count: torch.Tensor

    @classmethod
    def from_keys(cls, row_keys: torch.Tensor, col_keys: torch.Tensor, dtype: torch.dtype) -> PositiveGroups:
        """Group the keys of ``M`` rows and ``N`` columns; counts come out in ``dtype``."""
        keys = torch.cat([row_keys, col_keys])
        sorted_keys, order = torch.sort(keys)
        starts = torch.ones_like(sorted_keys, dtype=torch.long)
        starts[1:] = (sorted_keys[1:] != sorted_keys[:-1]).long()
        group = torch.empty_like(order)
        group[order] = torch.cumsum(starts, 0) - 1
        num_rows = row_keys.shape[0]
        row_group, col_group = group[:num_rows], group[num_rows:]
        ones_rows = torch.ones(num_rows, dtype=dtype, device=keys.device)
        ones_cols = torch.ones(col_keys.shape[0], dtype=dtype, device=keys.device)
        per_group_cols = torch.zeros(keys.shape[0], dtype=dtype, device=keys.device).index_add_(0, col_group, ones_cols)
        per_group_rows = torch.zeros(keys.shape[0], dtype=dtype, device=keys.device).index_add_(0, row_group, ones_rows)
        return cls(row_group, col_group, per_group_cols[row_group], per_group_rows[col_group])

    @property
    def num_groups(self) -> int:
        """Size of the group buffer, ``M + N`` (an upper bound on the number of distinct keys)."""
        return self.row_group.shape[0] + self.col_group.shape[0]

    def column_sums_for_rows(self, column_values: torch.Tensor) -> torch.Tensor:
        """For each row ``i``, the sum of ``column_values[j]`` over the columns positive with it.

        Args:
            column_values: ``[N, D]``.

        Returns:
            ``[M, D]``: ``Σ_{j : key_j = key_i} column_values[j]``.
        """
        buffer = column_values.new_zeros(self.num_groups, column_values.shape[1])
        return buffer.index_add_(0, self.col_group, column_values)[self.row_group]

    def row_sums_for_columns(self, row_values: torch.Tensor) -> torch.Tensor:
        """For each column ``j``, the sum of ``row_values[i]`` over the rows positive with it.

        Args:
            row_values: ``[M, D]``.

        Returns:
            ``[N, D]``: ``Σ_{i : key_i = key_j} row_values[i]``.
        """
        buffer = row_values.new_zeros(self.num_groups, row_values.shape[1])
        return buffer.index_add_(0, self.row_group, row_values)[self.col_group]
