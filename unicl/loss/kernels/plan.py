"""Launch plans of the one-pass Triton schedule: how many rows a launch takes, its grid and its buffers.

Pure Python, so the engine (`unicl.loss.kernels.one_pass`) and the cost model (``benchmarks/cost_model.py``) read
the same plan: what the model counts is what the engine launches.

The schedule walks the rows of ``S`` in *super-chunks* whose buffers fit a memory budget:

* forward: one kernel per super-chunk computes every ``S`` tile once and writes, per program, the partial row
  log-sum-exp of its column range and the partial column log-sum-exp of its ``BLOCK_M`` rows; the partials are
  merged exactly afterwards (a log-sum-exp of log-sum-exps, in a fixed order, so the result is identical run to
  run). Buffer: ``⌈R / BLOCK_M⌉ × N`` float32 column partials (plus ``splits × R`` row partials).
* backward: one kernel per super-chunk recomputes ``S`` and writes the softmax-gradient weights ``P·b`` in the
  features' dtype (an ``R × N`` buffer); two tensor-core GEMMs multiply them with ``V`` and ``U``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Workspace of one super-chunk when the caller gives no row count: 512 MiB holds the backward weights of
#: 4,096 rows at N = 65,536 in bf16, and the forward partials of every row there.
DEFAULT_WORKSPACE_BYTES = 512 << 20
#: Fewest rows per backward super-chunk whatever the budget: the ``Pᵀ·U`` product of a super-chunk reads and
#: writes the whole ``[N, D]`` float32 accumulator, so with fewer rows than this its traffic would outweigh its
#: ``2·R·N·D`` flops (at N = 2^20 this lifts the buffer to 2 GiB in bf16).
MIN_SUPER_CHUNK_ROWS = 1024
#: Columns of one program's range in forward are a multiple of this (every autotune BLOCK_N divides it), so the
#: number of column ranges does not depend on the tile configuration.
COLUMN_GRANULE = 256
#: Forward launches aim for at least this many programs per streaming multiprocessor.
PROGRAMS_PER_SM = 4
#: Largest BLOCK_M of any configuration: super-chunks are a multiple of it, so each one starts on a tile boundary.
ROW_GRANULE = 128


def cdiv(a: int, b: int) -> int:
    """``⌈a / b⌉`` for positive ``b``."""
    return -(-a // b)


@dataclass(frozen=True)
class SuperChunk:
    """Rows ``[start, start + rows)`` of one launch."""

    start: int
    rows: int


def super_chunks(num_rows: int, rows_per_chunk: int) -> list[SuperChunk]:
    """Consecutive super-chunks of ``rows_per_chunk`` rows covering ``num_rows``."""
    return [SuperChunk(start, min(rows_per_chunk, num_rows - start)) for start in range(0, num_rows, rows_per_chunk)]


def _rows_for(budget_bytes: int, bytes_per_row: int, num_rows: int, floor: int) -> int:
    """Rows that fit ``budget_bytes`` at ``bytes_per_row``, a multiple of `ROW_GRANULE`, at least ``floor``,
    at most ``num_rows``."""
    fitting = (budget_bytes // max(bytes_per_row, 1)) // ROW_GRANULE * ROW_GRANULE
    return max(1, min(num_rows, max(fitting, floor)))


def forward_rows(num_rows: int, num_cols: int, smallest_block_m: int, chunk_size: int | None, budget_bytes: int) -> int:
    """Rows per forward super-chunk: ``chunk_size`` if given, else as many as keep the column partials
    (``⌈R / BLOCK_M⌉ × N`` float32 for the smallest ``BLOCK_M`` of the configurations) within the budget."""
    if chunk_size is not None:
        return min(chunk_size, num_rows)
    # 4 bytes of partial per column for every BLOCK_M rows.
    return _rows_for(budget_bytes * smallest_block_m, 4 * num_cols, num_rows, ROW_GRANULE)


def backward_rows(num_rows: int, num_cols: int, itemsize: int, chunk_size: int | None, budget_bytes: int) -> int:
    """Rows per backward super-chunk: ``chunk_size`` if given, else as many as keep the ``R × N`` weights (of
    ``itemsize`` bytes) within the budget, and at least `MIN_SUPER_CHUNK_ROWS`."""
    if chunk_size is not None:
        return min(chunk_size, num_rows)
    return _rows_for(budget_bytes, itemsize * num_cols, num_rows, MIN_SUPER_CHUNK_ROWS)


def column_ranges(num_cols: int, row_blocks: int, programs_wanted: int) -> tuple[int, int]:
    """``(columns per range, number of ranges)`` for a forward launch of ``row_blocks`` row blocks.

    Enough ranges that ``row_blocks × ranges`` approaches ``programs_wanted`` (at least half of it, or every
    granule its own range: each range is a whole number of `COLUMN_GRANULE` columns), and never an empty
    range.
    """
    granules = cdiv(num_cols, COLUMN_GRANULE)
    ranges_wanted = max(1, min(granules, cdiv(programs_wanted, max(row_blocks, 1))))
    per_range = cdiv(granules, ranges_wanted) * COLUMN_GRANULE
    return per_range, cdiv(num_cols, per_range)


def weights_programs(num_rows: int, num_cols: int, block_m: int, block_n: int) -> int:
    """Programs of one backward weights launch: one per ``BLOCK_M × BLOCK_N`` tile of the ``R × N`` result, on a
    one-dimensional grid (which takes up to 2^31 − 1 programs, where a second dimension takes 65,535)."""
    return cdiv(num_rows, block_m) * cdiv(num_cols, block_n)
