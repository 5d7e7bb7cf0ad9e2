"""The one-pass Triton schedule of the UniCL loss: ``8N²D`` matrix-product flops for forward and backward, the
minimum, deterministic, and no ``N × N`` tensor (``backend="triton"``).

Forward (1 pass over ``S``): ``_one_pass_partials_kernel`` gives each program ``BLOCK_M`` rows and a range of columns.
It computes every ``S`` tile of that rectangle once and keeps two statistics of it: the online (running-max)
log-sum-exp of its rows over its column range, in registers, and, for every tile, the log-sum-exp of the tile's
columns over its ``BLOCK_M`` rows, written to a ``⌈R / BLOCK_M⌉ × N`` float32 buffer. Both partials are merged
exactly afterwards by a log-sum-exp over the partials, in a fixed order, so results are identical run to run and no
atomics are needed. Rows go in super-chunks of ``R`` rows so the buffer stays within a workspace budget at any N
(`unicl.loss.kernels.plan`). Two exponentials per entry, one per direction, as the two-pass schedule.

Backward (3 passes' worth of products): ``_one_pass_weights_kernel`` recomputes each ``S`` tile of a super-chunk and
writes ``W_ij = (g_i·exp(S_ij − r_i) + h_j·exp(S_ij − c_j))·b_j`` in the features' dtype (statistics in float32);
then ``a ⊙ (W V)`` and ``Wᵀ (a ⊙ U)`` run as tensor-core GEMMs with float32 accumulation and float32 results
(``torch.mm(..., out_dtype=torch.float32)`` on CUDA). ``W`` is rounded to the features' dtype exactly where the
two-pass kernel rounds ``P·b`` before its tensor-core product.

The cost in units of ``F = 2N²D``: forward 1F, backward 3F (1F in the kernel, 2F in the GEMMs), against 2F + 4F for
the two-pass schedule of `unicl.loss.kernels.two_pass` (``backend="triton_rowwise"``) at D ≤ its BLOCK_D.
Extra memory: the workspace (one super-chunk's partials or weights), ``4N`` statistics and the float32 ``[N, D]``
results.

The sigmoid objective, which has no column terms, takes the row kernel of `unicl.loss.kernels.tiles` forward (1F, one
exponential per entry) and the same backward with ``W_ij = g_i·σ(Z_ij)·b_j`` (1F + 2F, one exponential per entry,
no statistics read): ``8N²D`` again.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unicl._checks import check_positive_int
from unicl.loss.engine import Similarity
from unicl.loss.kernels.plan import (
    DEFAULT_WORKSPACE_BYTES,
    PROGRAMS_PER_SM,
    backward_rows,
    cdiv,
    column_ranges,
    forward_rows,
    super_chunks,
    weights_programs,
)
from unicl.loss.kernels.tiles import (
    LN2,
    LOG2E,
    BackwardInputs,
    FusedEngine,
    entry_weight_op,
    entry_weights,
    factors,
    row_weight_inputs,
    rows_only_statistics,
    similarity_tile,
)
from unicl.loss.kernels.tuning import KernelSpec, device_capability, runs_compiled, tile_config, tile_options
from unicl.loss.matmul import mixed_addmm_, mixed_mm
from unicl.loss.objectives import Objective, Statistics

#: Base-2 logits of the padded columns and (before the multiply by ``b_j``) rows of a tile: finite, so that no
#: ``-inf - (-inf)`` or ``-inf·0`` makes a NaN, and so far below any real logit that their exponentials relative to
#: one are 0 (a padded row's ``-1e30·b_j`` stays finite for every ``b_j`` below 3e8).
PADDED_LOGIT: tl.constexpr = tl.constexpr(-3.0e38)
PADDED_ROW_LOGIT: tl.constexpr = tl.constexpr(-1.0e30)


@triton.jit
def _lse_merge(max_a, sum_a, max_b, sum_b):
    """Merge two base-2 log-sum-exp partials ``(max, sum)`` (``sum`` relative to ``2^max``) with one exponential:
    the partial with the larger max keeps factor 1, the other is scaled by ``2^-|max_a - max_b|``."""
    a_larger = max_a >= max_b
    factor = tl.exp2(-tl.abs(max_a - max_b))
    return tl.maximum(max_a, max_b), tl.where(a_larger, sum_a, sum_b) + tl.where(a_larger, sum_b, sum_a) * factor


@triton.jit
def _one_pass_partials_kernel(
    q_ptr, k_ptr, scale_ptr, q_scale_ptr, k_scale_ptr, row_part_ptr, col_part_ptr,
    M, N, D, stride_q, stride_k, cols_per_range,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """Row partials ``row_part[range, i]`` over one column range and column partials ``col_part[block, j]`` over
    ``BLOCK_M`` rows, both natural-log log-sum-exps of ``S_ij = s·a_i·b_j·⟨q_i, k_j⟩``.

    Each tile is computed transposed, ``Sᵀ`` as ``[BLOCK_N, BLOCK_M]``, because the tensor-core accumulator spreads
    its rows over lanes and warps (in the ``mma`` and ``wgmma`` layouts, 8 lanes of 2 rows per 16-row group) and
    keeps its columns within a thread and 4 lanes. The statistic needed per tile, the columns' log-sum-exp over the
    ``BLOCK_M`` rows, then reduces within threads and 4 lanes, as the row-only kernel's does; the other one, the
    rows' online log-sum-exp, is kept per thread across tiles, each thread merging its own entries of a row into
    ``(max, sum)`` partials in registers, and reduced across lanes and warps once, after the loop. Both are exact:
    every partial is a max and a sum relative to it, merged with ``2^-|Δmax|`` (`_lse_merge`). Two
    exponentials per entry, one per direction, as the two-pass schedule. The SASS this costs per entry, against the
    row-only kernel's, is in docs/kernels.md ("The forward in SASS") and
    ``python -m unicl.loss.kernels.compile_report``.
    """
    pid_m = tl.program_id(0)
    pid_range = tl.program_id(1)
    row_start = pid_m * BLOCK_M
    offs_m = row_start + tl.arange(0, BLOCK_M)
    row_valid = offs_m < M
    # s·a_i·log2(e) once per row; padded rows get 0, and their logit from the bias.
    row_factor = tl.load(q_scale_ptr + offs_m, mask=row_valid, other=0.0) * (tl.load(scale_ptr) * LOG2E)
    row_bias = tl.where(row_valid, 0.0, PADDED_ROW_LOGIT)
    # The rows' partials, one per row and per pair of tile rows (Sᵀ rows 16g + l and 16g + l + 8, which one thread
    # holds in the mma and wgmma layouts): [BLOCK_N / 16, 8, BLOCK_M], merged over the tiles in registers.
    slot_max = tl.full((BLOCK_N // 16, 8, BLOCK_M), float("-inf"), dtype=tl.float32)
    slot_sum = tl.zeros((BLOCK_N // 16, 8, BLOCK_M), dtype=tl.float32)
    # 64-bit row offsets into the partial buffers: a user's chunk_size can make blocks × N pass 2^31.
    col_part_row = col_part_ptr + pid_m.to(tl.int64) * N
    col_begin = pid_range * cols_per_range
    col_end = tl.minimum(col_begin + cols_per_range, N)  # the plan never makes an empty range
    for n0 in range(col_begin, col_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        col_valid = offs_n < col_end
        tile = similarity_tile(
            k_ptr, q_ptr, n0, row_start, N, M, D, stride_k, stride_q, BLOCK_N, BLOCK_M, BLOCK_K, INPUT_PRECISION,
            UPCAST_DOT,
        )  # fmt: skip
        col_factor = tl.load(k_scale_ptr + offs_n, mask=col_valid, other=0.0)
        # The masks ride on the two multiplies as additions (FFMAs), so they cost nothing per entry: a padded row is
        # (0·0 + PADDED_ROW_LOGIT)·b_j, far below every real logit as b_j > 0 (inverse norms or ones), a padded
        # column 0·0 + PADDED_LOGIT (its b_j loads as 0). Padded rows' and columns' statistics are never stored.
        col_bias = tl.where(col_valid, 0.0, PADDED_LOGIT)
        tile = (tile * row_factor[None, :] + row_bias[None, :]) * col_factor[:, None] + col_bias[:, None]
        col_max = tl.max(tile, 1)
        col_sum = tl.sum(tl.exp2(tile - col_max[:, None]), 1)
        tl.store(col_part_row + offs_n, (col_max + tl.log2(col_sum)) * LN2, mask=col_valid)
        # A thread's two entries of a row in this tile make one partial with one exponential, then join the row's
        # running partial with one more: the reshape and split keep the accumulator layout (no data moves).
        pairs = tl.permute(tl.reshape(tile, (BLOCK_N // 16, 2, 8, BLOCK_M)), (0, 2, 3, 1))
        first, second = tl.split(pairs)
        pair_sum = 1.0 + tl.exp2(-tl.abs(first - second))
        slot_max, slot_sum = _lse_merge(slot_max, slot_sum, tl.maximum(first, second), pair_sum)
    slot_max = tl.reshape(slot_max, (BLOCK_N // 2, BLOCK_M))
    slot_sum = tl.reshape(slot_sum, (BLOCK_N // 2, BLOCK_M))
    row_max, row_sum = tl.reduce((slot_max, slot_sum), 0, _lse_merge)
    row_part_row = row_part_ptr + pid_range.to(tl.int64) * M
    tl.store(row_part_row + offs_m, (row_max + tl.log2(row_sum)) * LN2, mask=row_valid)


@triton.jit
def _one_pass_weights_kernel(
    q_ptr, k_ptr, scale_ptr, bias_ptr, q_scale_ptr, k_scale_ptr, q_lse_ptr, k_lse_ptr, q_weight_ptr, k_weight_ptr,
    w_ptr, M, N, D, stride_q, stride_k, stride_w,
    HAS_Q_WEIGHT: tl.constexpr, HAS_K_WEIGHT: tl.constexpr, OBJECTIVE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """One ``[BLOCK_M, BLOCK_N]`` tile of the entry weights times the column factors, ``W_ij = P_ij·b_j``.

    ``OBJECTIVE`` is the objective's kernel code: 0 (softmax) gives ``P_ij = g_i·exp(S_ij − r_i) + h_j·exp(S_ij −
    c_j)`` from the statistics ``r``, ``c`` (``bias_ptr`` unread); 1 (sigmoid) gives ``P_ij = (g_i + h_j)·σ(Z_ij)``
    with ``Z_ij = S_ij + β`` (the statistics unread; its autograd passes no ``h``). An absent weight counts as zero.

    The grid is one-dimensional, column blocks fastest: a second grid dimension holds at most 65,535 programs,
    which the column blocks of N > 4.19 M at BLOCK_N = 64 would pass, while the total count stays far below 2^31
    (the ``M × N`` result must fit in memory)."""
    col_blocks = tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    row_start = (pid // col_blocks) * BLOCK_M
    col_start = (pid % col_blocks) * BLOCK_N
    offs_m = row_start + tl.arange(0, BLOCK_M)
    offs_n = col_start + tl.arange(0, BLOCK_N)
    row_mask = offs_m < M
    col_mask = offs_n < N
    row_factor = tl.load(q_scale_ptr + offs_m, mask=row_mask, other=0.0) * (tl.load(scale_ptr) * LOG2E)
    col_scale = tl.load(k_scale_ptr + offs_n, mask=col_mask, other=0.0)
    tile = similarity_tile(
        q_ptr, k_ptr, row_start, col_start, M, N, D, stride_q, stride_k, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION,
        UPCAST_DOT,
    )  # fmt: skip
    tile = tile * row_factor[:, None] * col_scale[None, :]
    q_lse2, q_weight, bias2 = row_weight_inputs(
        q_lse_ptr, q_weight_ptr, bias_ptr, offs_m, row_mask, HAS_Q_WEIGHT, OBJECTIVE
    )  # fmt: skip
    weights = entry_weights(
        tile, q_lse2, q_weight, bias2, k_lse_ptr, k_weight_ptr, offs_n, col_mask, HAS_Q_WEIGHT, HAS_K_WEIGHT,
        OBJECTIVE, BLOCK_M, BLOCK_N,
    )  # fmt: skip
    weights = weights * col_scale[None, :]
    w_block = tl.make_block_ptr(w_ptr, (M, N), (stride_w, 1), (row_start, col_start), (BLOCK_M, BLOCK_N), (1, 0))
    tl.store(w_block, weights.to(w_ptr.dtype.element_ty), boundary_check=(0, 1))


# Each entry is compiled without register spills for every chip of that family at a launch's specialisation
# (divisibility 16, pipelined loads: tests/kernels/test_compile_for_gpus.py; ptxas spills non-monotonically: a tile
# that fits sm_80 may spill on sm_86 or sm_100, and a smaller one may spill where a larger one does not);
# configurations that need more shared memory than a chip has are pruned for it at launch
# (`unicl.loss.kernels.tuning.prune_for`).
# The forward's ``BLOCK_N`` is the tensor-core product's row count (it computes ``Sᵀ`` tiles); 4-warp Ampere tiles
# of 128 x 64 spill at 255 registers, and fp32 tiles of 32 x 32 issue over twice the row kernel's SASS per entry
# (``python -m unicl.loss.kernels.compile_report --kernel partials lse --table``), so neither is listed. Every
# entry holds under both supported compilers (Triton 3.6's older ptxas spills 8-16 bytes in fp32 64 x 64 x 16 forward
# tiles at 4 warps on sm_86/sm_89 and in 32 x 64 x 32 weights tiles at 4 warps on sm_80/sm_86: those take 8 warps).
#: Autotune candidates of the forward (partials) kernel, per chip family and operand precision.
PARTIALS_CONFIGS: dict[tuple[str, str], list[triton.Config]] = {
    ("sm80", "half"): [tile_config(128, 64, 64, 8, 3), tile_config(64, 128, 32, 8, 3), tile_config(64, 64, 32, 4, 3)],
    ("sm86", "half"): [tile_config(128, 64, 32, 8, 3), tile_config(128, 128, 32, 8, 3), tile_config(64, 64, 32, 4, 3)],
    ("sm90", "half"): [tile_config(128, 128, 32, 8, 3), tile_config(64, 128, 32, 8, 3), tile_config(64, 64, 32, 4, 3)],
    ("sm100", "half"): [tile_config(128, 64, 32, 8, 3), tile_config(64, 128, 32, 8, 3), tile_config(64, 64, 32, 4, 3)],
    ("sm80", "fp32"): [tile_config(64, 64, 16, 4, 2), tile_config(64, 128, 16, 8, 2)],
    ("sm86", "fp32"): [tile_config(64, 64, 16, 8, 2), tile_config(64, 128, 16, 8, 2)],
    ("sm90", "fp32"): [tile_config(64, 64, 16, 4, 2), tile_config(64, 128, 16, 8, 2)],
}
# The weights kernel's epilogue holds three per-column vectors in the product's register layout besides the tile,
# so 128-wide square tiles spill (sm_80 and sm_90) and 8 warps share the 64 x 128 ones. Ampere's fp32 64 x 64 x 16
# tile at 4 warps is not listed: Triton 3.6's ptxas spills 8 bytes of its sigmoid variant.
#: Autotune candidates of the weights kernel, per chip family and operand precision.
WEIGHTS_CONFIGS: dict[tuple[str, str], list[triton.Config]] = {
    ("sm80", "half"): [tile_config(128, 64, 64, 8, 3), tile_config(64, 128, 64, 8, 3), tile_config(64, 64, 64, 4, 3)],
    ("sm86", "half"): [tile_config(128, 64, 32, 8, 3), tile_config(64, 128, 32, 8, 3), tile_config(64, 64, 32, 4, 3)],
    ("sm90", "half"): [tile_config(128, 64, 64, 8, 3), tile_config(64, 128, 64, 8, 3)],
    ("sm80", "fp32"): [tile_config(32, 64, 32, 8, 2), tile_config(64, 32, 32, 4, 2)],
    ("sm86", "fp32"): [tile_config(64, 64, 32, 4, 2), tile_config(32, 64, 32, 8, 2)],
    ("sm90", "fp32"): [tile_config(64, 64, 32, 4, 2), tile_config(64, 64, 32, 8, 2)],
}
PARTIALS = KernelSpec("partials", _one_pass_partials_kernel, PARTIALS_CONFIGS, objectives=("softmax",), forward=True)
WEIGHTS = KernelSpec("weights", _one_pass_weights_kernel, WEIGHTS_CONFIGS, objectives=("softmax", "sigmoid"))


def _programs_wanted(device: torch.device) -> int:
    if not runs_compiled(device):
        return 1
    return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count


def smallest_block_m(device: torch.device, dtype: torch.dtype) -> int:
    """The smallest ``BLOCK_M`` the forward kernel may run with here (sizes its partials buffer)."""
    if not runs_compiled(device):
        return PARTIALS.interpreter_tiles()["BLOCK_M"]
    return min(c.kwargs["BLOCK_M"] for c in PARTIALS.configs_for(device_capability(device), dtype))


# --- launchers, registered as torch.library operators so torch.compile keeps the loss in its graph -----------------


@torch.library.custom_op("unicl::one_pass_logsumexp", mutates_args=())
def one_pass_logsumexp(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    rows_per_chunk: int,
    cols_per_range: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column log-sum-exp of ``S_ij = s·a_i·b_j·⟨q_i, k_j⟩`` in one pass over ``S``.

    Args:
        q: ``[M, D]`` row features (float16, bfloat16 or float32).
        k: ``[N, D]`` column features, same dtype.
        scale: one-element tensor ``s``.
        q_scale: ``[M]`` row factors ``a``.
        k_scale: ``[N]`` column factors ``b``.
        rows_per_chunk: rows per launch (super-chunk), see `unicl.loss.kernels.plan.forward_rows`.
        cols_per_range: columns per program; any positive number is exact, a multiple of ``BLOCK_N`` wastes no
            masked columns (see `unicl.loss.kernels.plan.column_ranges`).

    Returns:
        ``r [M]`` and ``c [N]``, float32.

    Raises:
        ValueError: ``rows_per_chunk`` or ``cols_per_range`` below 1.
    """
    check_positive_int("rows_per_chunk", rows_per_chunk)
    check_positive_int("cols_per_range", cols_per_range)
    q, k = q.contiguous(), k.contiguous()
    num_rows, num_cols = q.shape[0], k.shape[0]
    q_scale, k_scale = q_scale.float().contiguous(), k_scale.float().contiguous()
    scale = scale.float().reshape(1)
    ranges = cdiv(num_cols, cols_per_range)
    row_lse = torch.empty(num_rows, dtype=torch.float32, device=q.device)
    col_lse = torch.full((num_cols,), float("-inf"), dtype=torch.float32, device=q.device)
    chunk_rows = min(rows_per_chunk, num_rows)
    block_m = smallest_block_m(q.device, q.dtype)
    col_parts = torch.empty(cdiv(chunk_rows, block_m), num_cols, dtype=torch.float32, device=q.device)
    row_parts = torch.empty(ranges * chunk_rows, dtype=torch.float32, device=q.device)
    for chunk in super_chunks(num_rows, rows_per_chunk):
        rows = slice(chunk.start, chunk.start + chunk.rows)
        # Contiguous [ranges, rows] for this chunk, as the kernel indexes it (the last chunk may be shorter).
        row_part = row_parts[: ranges * chunk.rows].view(ranges, chunk.rows)
        tiles = PARTIALS.run(
            lambda meta, r=chunk.rows: (cdiv(r, meta["BLOCK_M"]), ranges),
            q.device,
            q.dtype,
            q_ptr=q[rows], k_ptr=k, scale_ptr=scale, q_scale_ptr=q_scale[rows], k_scale_ptr=k_scale,
            row_part_ptr=row_part, col_part_ptr=col_parts, M=chunk.rows, N=num_cols, D=q.shape[1],
            stride_q=q.stride(0), stride_k=k.stride(0), cols_per_range=cols_per_range,
            **tile_options(q.dtype),
        )  # fmt: skip
        # Exact merges in a fixed order: rows over their column ranges, columns over this chunk's row blocks, then
        # over the chunks so far.
        row_lse[rows] = torch.logsumexp(row_part, 0)
        chunk_cols = torch.logsumexp(col_parts[: cdiv(chunk.rows, tiles["BLOCK_M"])], 0)
        torch.logaddexp(col_lse, chunk_cols, out=col_lse)
    return row_lse, col_lse


@one_pass_logsumexp.register_fake
def _one_pass_logsumexp_fake(q, k, scale, q_scale, k_scale, rows_per_chunk, cols_per_range):
    return q.new_empty(q.shape[0], dtype=torch.float32), q.new_empty(k.shape[0], dtype=torch.float32)


def _launch_weights(
    q: torch.Tensor, k: torch.Tensor, inputs: BackwardInputs, arguments: dict[str, object]
) -> torch.Tensor:
    out = torch.empty(q.shape[0], k.shape[0], dtype=q.dtype, device=q.device)
    WEIGHTS.run(
        lambda meta: (weights_programs(q.shape[0], k.shape[0], meta["BLOCK_M"], meta["BLOCK_N"]),),
        q.device,
        q.dtype,
        w_ptr=out,
        stride_w=out.stride(0),
        **arguments,
    )
    return out


one_pass_weights = entry_weight_op(
    "one_pass_weights", _launch_weights, lambda q, k: q.new_empty(q.shape[0], k.shape[0])
)
"""The entry weights times the column factors, ``W_ij = P_ij·b_j``, of one super-chunk of rows ``q``: the operator
`unicl.loss.kernels.tiles.entry_weight_op` describes, with its arguments. Returns ``[M, N]`` in the features'
dtype."""


class OnePassEngine(FusedEngine):
    """The engine behind ``backend="triton"`` (see the module docstring for the schedule).

    Args:
        chunk_size: rows per super-chunk; ``None`` sizes them from ``workspace_bytes``.
        workspace_bytes: memory budget of one super-chunk's buffers (`DEFAULT_WORKSPACE_BYTES`).
    """

    def __init__(self, chunk_size: int | None = None, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> None:
        self.chunk_size = chunk_size
        self.workspace_bytes = workspace_bytes

    def forward_plan(self, sim: Similarity) -> tuple[int, int]:
        """``(rows per super-chunk, columns per program)`` of the forward launch for ``sim``."""
        num_rows, num_cols = sim.u.shape[0], sim.v.shape[0]
        block_m = smallest_block_m(sim.u.device, sim.u.dtype)
        rows = forward_rows(num_rows, num_cols, block_m, self.chunk_size, self.workspace_bytes)
        cols_per_range, _ = column_ranges(num_cols, cdiv(rows, block_m), _programs_wanted(sim.u.device))
        return rows, cols_per_range

    def statistics(self, sim: Similarity, objective: Objective, columns: bool = True) -> Statistics:
        """The objective's forward statistics; see `unicl.loss.engine.SimilarityEngine`."""
        if not columns or not objective.two_sided:
            # Rows only (distributed local mode, or an objective without column terms): the row kernel alone is
            # one pass with no column statistics.
            return rows_only_statistics(sim, objective)
        row_scale, col_scale = factors(sim)
        rows, cols_per_range = self.forward_plan(sim)
        return one_pass_logsumexp(sim.u, sim.v, sim.scale, row_scale, col_scale, rows, cols_per_range)

    def backward_rows(self, sim: Similarity) -> int:
        """Rows per backward super-chunk for ``sim``."""
        num_rows, num_cols = sim.u.shape[0], sim.v.shape[0]
        return backward_rows(num_rows, num_cols, sim.u.element_size(), self.chunk_size, self.workspace_bytes)

    def entry_products(self, sim: Similarity, inputs: BackwardInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``H V`` and ``Hᵀ U`` per backward super-chunk: the weights kernel, then two tensor-core products."""
        code, row_scale, col_scale, row_lse, col_lse, row_weight, col_weight = inputs
        u, v = sim.u, sim.v
        grad_u = torch.empty(u.shape, dtype=torch.float32, device=u.device)
        grad_v = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        for chunk in super_chunks(u.shape[0], self.backward_rows(sim)):
            rows = slice(chunk.start, chunk.start + chunk.rows)
            weights = one_pass_weights(
                u[rows], v, sim.scale, row_scale[rows], col_scale, row_lse[rows], col_lse,
                None if row_weight is None else row_weight[rows], col_weight, sim.bias, code,
            )  # fmt: skip
            # (H V)_i = a_i·Σ_j W_ij v_j and (Hᵀ U)_j = Σ_i W_ij·a_i u_i, float32 results of tensor-core products.
            mixed_mm(weights, v, out=grad_u[rows]).mul_(row_scale[rows, None])
            scaled_rows = (u[rows].to(torch.float32) * row_scale[rows, None]).to(u.dtype)
            mixed_addmm_(grad_v, weights.T, scaled_rows)
            del weights
        return grad_u, grad_v
