"""The two-pass Triton schedule of the UniCL loss (``backend="triton_rowwise"``): ``S = s·U Vᵀ`` tiles in SRAM,
never an ``N × N`` tensor in memory.

The tiles are ``S_ij = s·a_i·b_j·⟨q_i, k_j⟩`` with per-row and per-column factors (the inverse feature norms when
the loss normalises, see `unicl.loss.engine.Similarity`), so the features are normalised on the fly and
never copied.

Design
------
The loss needs only two ``N²`` reductions, the row and column log-sum-exp of ``S`` (``r``, ``c``), and its gradient
only the softmax part of ``G = ∂L/∂S`` multiplied with the features. Everything involving the targets is ``O(N·D)``
(per-key sums, `unicl.loss.autograd`), so the kernels never compare labels at all.

Both directions use one pair of kernels, because the column problem of ``S`` is the row problem of ``Sᵀ = s·V Uᵀ``:

* ``_row_statistics_kernel(Q, K)`` (in `unicl.loss.kernels.tiles`, which the one-pass schedule shares): a program owns
  ``BLOCK_M`` rows of ``Q``, walks every ``BLOCK_N`` tile of ``K`` (``Q Kᵀ`` accumulated over ``D`` in ``BLOCK_K``
  steps, fp32), and keeps an online (running-max) log-sum-exp in registers, in base 2 with ``log2(e)`` folded into
  the scale. Forward launches it on ``(U, V)`` and ``(V, U)``.
* ``_two_pass_grad_kernel(Q, K)``: a program owns ``BLOCK_M`` rows and ``BLOCK_D`` output features, recomputes
  each ``S`` tile and accumulates ``(P·b) K`` with ``P_ij = g_i·exp(S_ij − r_i) + h_j·exp(S_ij − c_j)``; the
  launcher scales the rows by ``a``. Backward launches it on ``(U, V)`` and on ``(V, U)`` (``P`` is symmetric in
  the roles).

Cost, in units of ``F = 2N²D``: forward 2F (one ``S`` per direction), backward 4F when ``D <= BLOCK_D`` (each launch
recomputes ``S`` and multiplies ``P`` by a feature block), ``2F·(1 + ⌈D/BLOCK_D⌉)`` otherwise. The minimum is 4F
(one forward pass for ``r`` and ``c`` together, one backward pass with ``dV`` accumulated across programs). Both
savings need cross-program reductions: atomics (non-deterministic, and unsafe for a log-sum-exp without a
per-column running max) or ``O(N²/BLOCK)`` partial buffers (64 GB at N = 2^20). This schedule takes the
deterministic 6F design: no atomics, results identical run to run, and the same code for both directions; the
one-pass schedule (`unicl.loss.kernels.one_pass`) takes the buffers and reaches the minimum. Which schedule pays where
is measured by ``benchmarks/gpu_check.sh``.

The sigmoid objective runs the row kernel once (its statistics are per row only: 1F) and the gradient kernel in both
directions with ``P_ij = (g_i + h_j)·σ(Z_ij)``, the launch for ``Hᵀ U`` receiving the rows' ``g`` as column weights.

Precision: bf16/fp16 tiles use tensor cores (wgmma on sm_90) with fp32 accumulation; ``P·b`` is rounded to the
input dtype for the product with ``K``, as flash-attention's backward rounds ``P`` (in bf16 the factor ``b`` loses
nothing more; in fp16, features with norms far above 1 let the smallest weights underflow sooner). fp32 inputs use
exact fp32 products unless ``torch.backends.cuda.matmul.allow_tf32`` is on, in which case TF32 is used (opt-in, as
in torch's own matmul).
All statistics are fp32. Extra memory: ``r``, ``c``, ``a``, ``b`` (``4N`` floats) and the fp32 outputs, ``O(N·D)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unicl.loss.engine import Similarity
from unicl.loss.kernels.tiles import (
    LOG2E,
    BackwardInputs,
    FusedEngine,
    entry_weight_op,
    entry_weights,
    factors,
    row_logsumexp,
    row_weight_inputs,
    rows_only_statistics,
    similarity_tile,
)
from unicl.loss.kernels.tuning import KernelSpec, tile_config
from unicl.loss.objectives import Objective, Statistics


@triton.jit
def _two_pass_grad_kernel(
    q_ptr, k_ptr, scale_ptr, bias_ptr, q_scale_ptr, k_scale_ptr, q_lse_ptr, k_lse_ptr, q_weight_ptr, k_weight_ptr,
    out_ptr, M, N, D, stride_q, stride_k, stride_out,
    HAS_Q_WEIGHT: tl.constexpr, HAS_K_WEIGHT: tl.constexpr, OBJECTIVE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """``out[i, d] = Σ_j P_ij·b_j·k_j[d]`` for one ``[BLOCK_M, BLOCK_D]`` block, with ``S_ij = s·a_i·b_j·⟨q_i, k_j⟩``
    (the launcher multiplies the rows by ``a_i``) and the entry weights of the objective ``OBJECTIVE`` (its kernel
    code): 0 (softmax) ``P_ij = g_i·exp(S_ij − r_i) + h_j·exp(S_ij − c_j)`` (``bias_ptr`` unread); 1 (sigmoid)
    ``P_ij = (g_i + h_j)·σ(S_ij + β)`` (the statistics unread), where the launch for ``Hᵀ U`` passes the rows'
    ``g`` as the column weights ``h``. An absent weight counts as zero."""
    row_start = tl.program_id(0) * BLOCK_M
    d_start = tl.program_id(1) * BLOCK_D
    offs_m = row_start + tl.arange(0, BLOCK_M)
    row_mask = offs_m < M
    row_factor = tl.load(q_scale_ptr + offs_m, mask=row_mask, other=0.0) * (tl.load(scale_ptr) * LOG2E)
    q_lse2, q_weight, bias2 = row_weight_inputs(
        q_lse_ptr, q_weight_ptr, bias_ptr, offs_m, row_mask, HAS_Q_WEIGHT, OBJECTIVE
    )  # fmt: skip
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        col_mask = offs_n < N
        tile = similarity_tile(
            q_ptr, k_ptr, row_start, n0, M, N, D, stride_q, stride_k, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION,
            UPCAST_DOT,
        )  # fmt: skip
        col_scale = tl.load(k_scale_ptr + offs_n, mask=col_mask, other=0.0)
        tile = tile * row_factor[:, None] * col_scale[None, :]
        weights = entry_weights(
            tile, q_lse2, q_weight, bias2, k_lse_ptr, k_weight_ptr, offs_n, col_mask, HAS_Q_WEIGHT, HAS_K_WEIGHT,
            OBJECTIVE, BLOCK_M, BLOCK_N,
        )  # fmt: skip
        # b_j goes with P rather than with the loaded K tile, which the pipelined loads hand to the dot unchanged.
        weights = tl.where(col_mask[None, :], weights * col_scale[None, :], 0.0)
        k_block = tl.load(
            tl.make_block_ptr(k_ptr, (N, D), (stride_k, 1), (n0, d_start), (BLOCK_N, BLOCK_D), (1, 0)),
            boundary_check=(0, 1),
            padding_option="zero",
        )
        weights = weights.to(k_block.dtype)  # rounded like the operand, as tensor cores take it
        if UPCAST_DOT:
            weights, k_block = weights.to(tl.float32), k_block.to(tl.float32)
        acc = tl.dot(weights, k_block, acc, input_precision=INPUT_PRECISION)
    out_block = tl.make_block_ptr(out_ptr, (M, D), (stride_out, 1), (row_start, d_start), (BLOCK_M, BLOCK_D), (1, 0))
    tl.store(out_block, acc, boundary_check=(0, 1))


# --- launch configurations ------------------------------------------------------------------------------------------


# Half precision runs on tensor cores, fp32 as exact fp32 products; sm_86/sm_89 have their own half tiles because
# two of sm_80's spill there, sm_100 takes Hopper's. Every entry compiles for its chips without
# register spills (SASS read with cuobjdump, tests/kernels/test_compile_for_gpus.py): wider tiles spilled, in fp32 by
# thousands of registers, and with the inverse-norm factors in the loop Ampere's 64 x 32 x 256 half tile needs 8 warps
# instead of 4 and Hopper's narrow fp32 tile BLOCK_K = 16 instead of 32; compiled as launches specialise them
# (divisibility 16, pipelined loads), Hopper's fp32 gradient tile with BLOCK_D = 128 spills at 4 warps and takes 8.
# Hopper's half-precision tiles are issued as wgmma; BLOCK_D = 256 halves the backward's recomputation for D > 128.
# Ampere's fp32 tile with BLOCK_D = 128 takes 8 warps: at 4, Triton 3.6's ptxas spills 8 bytes (3.8's does not).
#: Autotune candidates of the gradient kernel per chip family (`unicl.loss.kernels.tuning.chip_family`) and operand
#: precision (``"half"`` for bf16/fp16, ``"fp32"``).
GRAD_CONFIGS: dict[tuple[str, str], list[triton.Config]] = {
    ("sm80", "half"): [
        tile_config(128, 64, 32, 8, 2, 128), tile_config(64, 64, 32, 8, 2, 256), tile_config(64, 32, 32, 8, 2, 256)
    ],
    ("sm86", "half"): [
        tile_config(64, 64, 32, 8, 2, 256), tile_config(64, 64, 32, 8, 2, 128), tile_config(64, 32, 32, 4, 2, 128)
    ],
    ("sm90", "half"): [
        tile_config(128, 64, 32, 8, 2, 128), tile_config(64, 64, 32, 8, 2, 256), tile_config(64, 64, 32, 4, 2, 128)
    ],
    ("sm80", "fp32"): [tile_config(32, 32, 32, 8, 2, 128), tile_config(32, 32, 32, 4, 2, 64)],
    ("sm90", "fp32"): [tile_config(32, 32, 16, 8, 2, 128), tile_config(32, 32, 16, 4, 2, 64)],
}  # fmt: skip
GRAD = KernelSpec("grad", _two_pass_grad_kernel, GRAD_CONFIGS, objectives=("softmax", "sigmoid"))


# --- the launcher, registered as a torch.library operator so torch.compile keeps the loss in its graph -------------


def _launch_grad(
    q: torch.Tensor, k: torch.Tensor, inputs: BackwardInputs, arguments: dict[str, object]
) -> torch.Tensor:
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    GRAD.run(
        lambda meta: (triton.cdiv(q.shape[0], meta["BLOCK_M"]), triton.cdiv(q.shape[1], meta["BLOCK_D"])),
        q.device,
        q.dtype,
        out_ptr=out,
        stride_out=out.stride(0),
        **arguments,
    )
    # a_i scales whole output rows, so it is applied here: inside the kernel the extra multiply before the store
    # made the 128 x 128 accumulator spill registers on sm_80 (cuobjdump).
    return out.mul_(inputs.row_scale.to(out.dtype)[:, None])


two_pass_grad = entry_weight_op("two_pass_grad", _launch_grad, lambda q, k: q.new_empty(q.shape, dtype=torch.float32))
"""``out_i = a_i·Σ_j P_ij·b_j·k_j``: the operator `unicl.loss.kernels.tiles.entry_weight_op` describes, with its
arguments. Returns ``[M, D]`` float32."""


class TwoPassEngine(FusedEngine):
    """The fused-kernel engine behind ``backend="triton_rowwise"`` (see the module docstring for the design)."""

    def statistics(self, sim: Similarity, objective: Objective, columns: bool = True) -> Statistics:
        """The objective's forward statistics; see `unicl.loss.engine.SimilarityEngine`."""
        if not objective.two_sided:
            return rows_only_statistics(sim, objective)
        row_scale, col_scale = factors(sim)
        row_lse = row_logsumexp(sim.u, sim.v, sim.scale, row_scale, col_scale)
        return row_lse, row_logsumexp(sim.v, sim.u, sim.scale, col_scale, row_scale) if columns else None

    def entry_products(self, sim: Similarity, inputs: BackwardInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``H V`` and ``Hᵀ U``, one gradient launch each: ``Hᵀ`` has the same form with the roles swapped (rows
        are texts, with their own statistics ``c`` and weights ``h``)."""
        code, row_scale, col_scale, row_lse, col_lse, row_weight, col_weight = inputs
        u, v, scale, bias = sim.u, sim.v, sim.scale, sim.bias
        return (
            two_pass_grad(u, v, scale, row_scale, col_scale, row_lse, col_lse, row_weight, col_weight, bias, code),
            two_pass_grad(v, u, scale, col_scale, row_scale, col_lse, row_lse, col_weight, row_weight, bias, code),
        )
