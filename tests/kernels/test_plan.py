"""The one-pass schedule's launch plans: super-chunks cover the rows exactly, buffers stay within the budget, column
ranges are never empty and give enough programs."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unicl.loss.kernels.plan import (
    COLUMN_GRANULE,
    MIN_SUPER_CHUNK_ROWS,
    ROW_GRANULE,
    backward_rows,
    cdiv,
    column_ranges,
    forward_rows,
    super_chunks,
)

sizes = st.integers(1, 1 << 21)


@pytest.mark.slow
@given(num_rows=sizes, rows_per_chunk=st.integers(1, 1 << 16))
def test_super_chunks_cover_the_rows_once_in_order(num_rows, rows_per_chunk):
    chunks = super_chunks(num_rows, rows_per_chunk)
    assert chunks[0].start == 0
    for before, after in pairwise(chunks):
        assert after.start == before.start + before.rows and before.rows == rows_per_chunk
    assert chunks[-1].start + chunks[-1].rows == num_rows and 0 < chunks[-1].rows <= rows_per_chunk


@given(num_rows=sizes, num_cols=sizes, block_m=st.sampled_from([32, 64, 128]), budget=st.integers(1 << 20, 1 << 32))
def test_forward_partials_fit_the_budget(num_rows, num_cols, block_m, budget):
    rows = forward_rows(num_rows, num_cols, block_m, None, budget)
    assert 1 <= rows <= num_rows
    partial_bytes = 4 * cdiv(rows, block_m) * num_cols
    # Within the budget, unless even one row granule is over it (then one granule, the least a launch takes).
    assert partial_bytes <= budget or rows <= ROW_GRANULE
    assert rows == num_rows or rows % ROW_GRANULE == 0


@given(num_rows=sizes, num_cols=sizes, itemsize=st.sampled_from([2, 4]), budget=st.integers(1 << 20, 1 << 32))
def test_backward_weights_fit_the_budget_above_the_row_floor(num_rows, num_cols, itemsize, budget):
    rows = backward_rows(num_rows, num_cols, itemsize, None, budget)
    assert 1 <= rows <= num_rows
    assert rows * num_cols * itemsize <= budget or rows == min(num_rows, MIN_SUPER_CHUNK_ROWS)
    assert rows >= min(num_rows, MIN_SUPER_CHUNK_ROWS)


@given(num_rows=sizes, num_cols=sizes, chunk=st.integers(1, 1 << 16))
def test_a_given_chunk_size_is_taken_as_is(num_rows, num_cols, chunk):
    assert forward_rows(num_rows, num_cols, 64, chunk, 1 << 29) == min(chunk, num_rows)
    assert backward_rows(num_rows, num_cols, 2, chunk, 1 << 29) == min(chunk, num_rows)


@given(num_cols=sizes, row_blocks=st.integers(1, 1 << 14), wanted=st.integers(1, 4096))
def test_column_ranges_are_never_empty_and_give_enough_programs(num_cols, row_blocks, wanted):
    per_range, ranges = column_ranges(num_cols, row_blocks, wanted)
    assert per_range % COLUMN_GRANULE == 0
    assert (ranges - 1) * per_range < num_cols <= ranges * per_range  # the last range starts inside the matrix
    granules = cdiv(num_cols, COLUMN_GRANULE)
    assert row_blocks * ranges >= min(wanted, row_blocks * granules) // 2
