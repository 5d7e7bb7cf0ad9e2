"""Pure-PyTorch engine that walks ``S_ij = s·a_i·b_j·⟨u_i, v_j⟩`` in blocks of rows.

Runs on any torch device. A block of ``B`` rows is held transposed, as ``Sᵀ[:, rows]`` (``[N, B]``, contiguous):
then every product of the walk has the long side ``N`` as its leading dimension (``V·u_rowsᵀ``, ``P·V`` as
``(Pᵀ)ᵀV`` and ``Pᵀ·U_rows``), which BLAS runs near its large-matrix rate. Held the other way round, the ``B × D``
by ``D × N`` product re-packs all of ``V`` for every block: 58 against 90 GFLOP/s at B = 128, N = 8,192, D = 512 on
a 2-core EPYC, where one large product reaches about 95.

Precision: float32 and float64 features are multiplied as they are. Half-precision features on the CPU are upcast
to float32 block by block. On CUDA they go to the products as they are, on tensor cores with float32 accumulation
and float32 results (``torch.mm(..., out_dtype=torch.float32)``), and the softmax weights ``P·b`` are rounded to
the features' dtype for the backward products, as flash-attention rounds ``P``; ``S`` blocks and statistics stay
float32 either way.

Cost: forward recomputes nothing (one pass over ``S``, ``2N²D`` flops, two exponentials per entry); backward
recomputes each block once and multiplies it with ``V`` and ``U`` (``6N²D`` flops): ``8N²D`` in all, the minimum.
Extra memory is two or three ``N × B`` blocks and a ``B × D`` row block (plus a float32 copy of ``V`` for
half-precision inputs on the CPU), so ``O(N·B)``; the ``[N, D]`` results of backward are the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from unicl.loss.dtypes import accumulation_dtype
from unicl.loss.engine import Similarity
from unicl.loss.matmul import HALF_DTYPES, mixed_addmm_, mixed_mm, uses_tensor_core_products
from unicl.loss.objectives import Objective, Statistics, Weights

#: Entries of ``S`` per block when ``chunk_size`` is not given: 2^21 float32 entries are 8 MiB a buffer, large
#: enough for efficient matrix products (at N = 8,192 on a 2-core EPYC the 256-row block's ``V·u_rowsᵀ`` ran at 89
#: GFLOP/s against 80 with 128 rows) and small enough that N = 65,536 stays well under 1 GB extra memory.
DEFAULT_BLOCK_ENTRIES = 1 << 21
#: Fewer rows per block make the matrix products inefficient: at N = 32,768, D = 512 on a 2-core Xeon the forward
#: took 12.5-14.1 s with 32-row blocks and 7.5-7.7 s with 128 rows (or 512).
MIN_BLOCK_ROWS = 128


def block_rows(num_rows: int, num_cols: int, chunk_size: int | None, entries: int = DEFAULT_BLOCK_ENTRIES) -> int:
    """Rows per block of the walk over an ``num_rows × num_cols`` matrix: ``chunk_size``, or, when it is ``None``,
    enough rows for about ``entries`` entries and at least `MIN_BLOCK_ROWS`; never more than ``num_rows``."""
    rows = chunk_size or max(MIN_BLOCK_ROWS, entries // max(num_cols, 1))
    return max(1, min(rows, num_rows))


class _Blocks:
    """The row blocks of one walk over ``S``, with buffers reused by every block.

    Allocating the buffers per block lets the allocator's free lists grow (3x the peak resident memory of the walk
    on CPU, measured), so the walk owns one of each.
    """

    def __init__(self, sim: Similarity, rows_per_block: int, native_half: bool) -> None:
        acc = accumulation_dtype(sim.u.dtype)
        self.sim = sim
        self.rows = rows_per_block
        self.native_half = native_half
        # The operand dtype of every product: the features' own for tensor-core products, else the accumulation one.
        self.operand_dtype = sim.u.dtype if native_half else acc
        self.v = sim.v if native_half else sim.v.to(acc)
        # s goes with b into one column factor, so scaling a block costs one pass over its entries.
        self.col_factor = (sim.scale if sim.col_scale is None else sim.scale * sim.col_scale).reshape(-1, 1)
        self.row_buffer = torch.empty(rows_per_block, sim.u.shape[1], dtype=self.operand_dtype, device=sim.u.device)
        self.tile_buffer = torch.empty(sim.v.shape[0], rows_per_block, dtype=acc, device=sim.u.device)

    def __iter__(self) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """Yields ``(rows, a·u[rows], S[rows]ᵀ)``: the scaled rows ``[B, D]`` in the operand dtype and the block
        ``[N, B]``; both are views of buffers the next block overwrites."""
        u, row_scale = self.sim.u, self.sim.row_scale
        for start in range(0, u.shape[0], self.rows):
            rows = slice(start, start + self.rows)
            size = u[rows].shape[0]
            scaled_rows = self.row_buffer[:size]
            tile = self.tile_buffer[:, :size]
            if self.native_half:
                # Products of the raw half rows; a_i scales the block's columns afterwards, in float32.
                scaled_rows.copy_(u[rows])
                mixed_mm(self.v, scaled_rows.T, out=tile)
                tile.mul_(self.col_factor)
                if self.sim.bias is not None:
                    tile.add_(self.sim.bias)
                if row_scale is not None:
                    tile.mul_(row_scale[rows])
                    scaled_rows.copy_(u[rows].to(row_scale.dtype).mul_(row_scale[rows, None]))
            else:
                if row_scale is None:
                    scaled_rows.copy_(u[rows])
                else:
                    torch.mul(u[rows], row_scale[rows, None], out=scaled_rows)
                torch.mm(self.v, scaled_rows.T, out=tile)
                if self.sim.bias is None:
                    tile.mul_(self.col_factor)
                else:  # one pass for both: Z = S·(s·b) + β
                    torch.addcmul(self.sim.bias, tile, self.col_factor, out=tile)
            yield rows, scaled_rows, tile


class ChunkedEngine:
    """Row-block walk of the similarity matrix (see the module docstring).

    Args:
        chunk_size: rows per block ``B`` (an int >= 1, as the public entries of the loss check it); ``None``
            picks ``B`` so that a block holds about `DEFAULT_BLOCK_ENTRIES` entries, and at least
            `MIN_BLOCK_ROWS` rows.
        native_half: multiply half-precision features as they are, with float32 results; ``None`` does so on CUDA
            only (see `unicl.loss.matmul.uses_tensor_core_products`). ``True`` elsewhere gives the same numbers
            through upcast products, which is how the CUDA path is tested on the CPU.
    """

    def __init__(self, chunk_size: int | None = None, native_half: bool | None = None) -> None:
        self.chunk_size = chunk_size
        self.native_half = native_half

    def _blocks(self, sim: Similarity) -> _Blocks:
        rows = block_rows(sim.u.shape[0], sim.v.shape[0], self.chunk_size)
        native = uses_tensor_core_products(sim.u) if self.native_half is None else self.native_half
        return _Blocks(sim, rows, native and sim.u.dtype in HALF_DTYPES)

    def statistics(self, sim: Similarity, objective: Objective, columns: bool = True) -> Statistics:
        """The objective's forward statistics of ``Z``; see `unicl.loss.engine.SimilarityEngine`."""
        blocks = self._blocks(sim)
        statistics = objective.new_statistics(sim.u.shape[0], sim.v.shape[0], blocks.tile_buffer, columns)
        scratch_buffer = objective.new_scratch(blocks.tile_buffer)
        for rows, _, tile in blocks:
            objective.add_block_statistics(tile, rows, statistics, scratch_buffer[:, : tile.shape[1]])
        return statistics

    def statistics_and_products(
        self, sim: Similarity, objective: Objective
    ) -> tuple[Statistics, torch.Tensor, torch.Tensor]:
        """The forward statistics and, in the same walk, ``H V`` and ``Hᵀ U`` for row weights of one, for an
        objective with ``local_entry_weights`` (see `unicl.loss.objectives.base.Objective`): backward then needs
        no second walk when its upstream weight is the same for every row (a mean or summed loss)."""
        blocks = self._blocks(sim)
        statistics = objective.new_statistics(sim.u.shape[0], sim.v.shape[0], blocks.tile_buffer, True)
        scratch_buffer = objective.new_scratch(blocks.tile_buffer)

        def weights_of(rows: slice, tile: torch.Tensor) -> torch.Tensor:
            scratch = scratch_buffer[:, : tile.shape[1]]
            return objective.block_statistics_and_weights(tile, rows, statistics, scratch)

        grad_u, grad_v = self._products(sim, blocks, weights_of)
        return statistics, grad_u, grad_v

    def weighted_products(
        self, sim: Similarity, objective: Objective, statistics: Statistics, weights: Weights
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``H V`` and ``Hᵀ U``; see `unicl.loss.engine.SimilarityEngine`."""
        blocks = self._blocks(sim)
        # Only the column part of a two-sided objective's weights needs a second block.
        column_buffer = None if weights[1] is None else torch.empty_like(blocks.tile_buffer)

        def weights_of(rows: slice, tile: torch.Tensor) -> torch.Tensor:
            scratch = None if column_buffer is None else column_buffer[:, : tile.shape[1]]
            return objective.block_weights(tile, rows, statistics, weights, scratch)

        return self._products(sim, blocks, weights_of)

    def _products(
        self, sim: Similarity, blocks: _Blocks, weights_of: Callable[[slice, torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``H V`` and ``Hᵀ U`` with each block's ``Pᵀ`` from ``weights_of(rows, Sᵀ block)``."""
        acc = blocks.tile_buffer.dtype
        grad_u = torch.empty(sim.u.shape, dtype=acc, device=sim.u.device)
        grad_v = torch.zeros(sim.v.shape, dtype=acc, device=sim.v.device)
        half_buffer = (
            torch.empty(blocks.tile_buffer.shape, dtype=blocks.operand_dtype, device=grad_u.device)
            if blocks.native_half
            else None
        )
        col_scale = None if sim.col_scale is None else sim.col_scale[:, None]
        for rows, scaled_rows, tile in blocks:
            weights = weights_of(rows, tile)
            # weights is Pᵀ for this block. (P·b) V multiplies P with the unit columns, and a_i times that row is
            # (H V)_i; (P·b)ᵀ (a·u) is Hᵀ U directly.
            if col_scale is not None:
                weights.mul_(col_scale)
            if half_buffer is not None:
                weights = half_buffer[:, : weights.shape[1]].copy_(weights)
            mixed_mm(weights.T, blocks.v, out=grad_u[rows])
            if sim.row_scale is not None:
                grad_u[rows].mul_(sim.row_scale[rows, None])
            mixed_addmm_(grad_v, weights, scaled_rows)
        return grad_u, grad_v
