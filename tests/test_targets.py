"""Grouped per-key sums against the dense target matrix they stand for."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from unicl.loss.targets import KeyGroups, target_keys

key_lists = st.lists(st.integers(-4, 4), min_size=1, max_size=14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@given(keys=key_lists, other_keys=key_lists, weighted=st.booleans(), seed=st.integers(0, 2**16))
def test_group_sums_equal_the_target_matrix_products(dtype, keys, other_keys, weighted, seed):
    """Row k of the sums is ``Σ_l [key_l = other_k]·w_l·values_l``, whether the group is shared, lone or absent."""
    generator = torch.Generator().manual_seed(seed)
    grouped, other = torch.tensor(keys), torch.tensor(other_keys)
    values = torch.randn(len(keys), 3, generator=generator, dtype=torch.float64).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    weight = torch.rand(len(keys), generator=generator, dtype=acc) if weighted else None
    groups = KeyGroups.build(grouped, other, acc)
    sums = groups.sums(values, weight)
    targets = (other[:, None] == grouped[None, :]).double()
    expected = targets @ (values.double() * (1.0 if weight is None else weight.double()[:, None]))
    x = torch.randn(len(other_keys), 3, generator=generator, dtype=torch.float64).to(dtype)
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(sums.dots(x).double(), (x.double() * expected).sum(1), **tolerance)
    row_weight = torch.rand(len(other_keys), generator=generator, dtype=acc)
    start = torch.randn(len(other_keys), 3, generator=generator, dtype=acc)
    got = sums.subtract_from(start.clone(), row_weight)
    torch.testing.assert_close(got.double(), start.double() - row_weight.double()[:, None] * expected, **tolerance)
    torch.testing.assert_close(groups.counts_for_other.double(), targets.sum(1))


@pytest.mark.parametrize(
    ("labels", "shared", "lone"), [(None, 0, 8), ([-1, 3, 3, 5, 3, -1, 7, 7], 2, 3), ([2] * 8, 1, 0)]
)
def test_only_groups_of_two_or_more_keys_store_a_sum(labels, shared, lone):
    """On the CPU the buffer holds exactly the shared groups and the zero slot; lone keys read their own row."""
    keys = target_keys(None if labels is None else torch.tensor(labels), 8, torch.device("cpu"))
    groups = KeyGroups.build(keys, keys, torch.float32)
    sums = groups.sums(torch.randn(8, 4))
    assert sums.buffer.shape[0] == groups.buffer_rows() == shared + 1
    assert torch.count_nonzero(sums.buffer[-1]) == 0
    assert int(groups.other_is_lone.sum()) == lone
