"""What both Triton schedules share: the similarity tile, the base-2 constants, the factor vectors, the entry
weights of the backward kernels (`row_weight_inputs`, `entry_weights`), the backward launchers' operator and
arguments (`entry_weight_op`), the sigmoid objective's entry functions, and the row kernel.

The row kernel is the two-pass schedule's forward (`unicl.loss.kernels.two_pass`, once per direction), the
one-pass schedule's rows-only forward (`unicl.loss.kernels.one_pass`, distributed local mode, where no column
statistic is wanted) and both schedules' forward for the sigmoid objective, which has no column terms, so it lives
here and either schedule's module can go alone. Every kernel takes the objective's
`unicl.loss.objectives.base.Objective.kernel_code` as its ``OBJECTIVE`` constant.

* ``similarity_tile``: ``Q[rows] · K[cols]ᵀ`` as a float32 tile, summed over ``D`` in ``BLOCK_K`` steps; every kernel
  of both schedules builds its ``S`` tiles with it.
* ``_row_statistics_kernel`` (launched by `row_logsumexp` and `row_statistics`): a program owns ``BLOCK_M`` rows of
  ``Q``, walks every ``BLOCK_N`` tile of ``K`` and keeps in registers, in base 2 with ``log2(e)`` folded into the scale,
  an online (running-max) log-sum-exp (softmax) or the sums of ``softplus(Z)`` and ``σ(Z)`` (sigmoid: one
  exponential and two reciprocals per entry, `softplus_and_sigmoid`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from unicl.loss.engine import Similarity
from unicl.loss.kernels.tuning import KernelSpec, tile_config, tile_options
from unicl.loss.objectives import SIGMOID, SOFTMAX, Objective, Statistics, Weights

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def similarity_tile(
    q_ptr, k_ptr, row_start, col_start, M, N, D, stride_q, stride_k,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """``Q[row_start:+BLOCK_M] · K[col_start:+BLOCK_N]ᵀ`` as a ``[BLOCK_M, BLOCK_N]`` fp32 tile, summed over ``D``."""
    # Block pointers keep one base address per tile instead of one 64-bit pointer per element: the element-pointer
    # form of this loop spilled hundreds of registers to local memory on sm_80 and sm_90 (cuobjdump).
    q_block = tl.make_block_ptr(q_ptr, (M, D), (stride_q, 1), (row_start, 0), (BLOCK_M, BLOCK_K), (1, 0))
    k_block = tl.make_block_ptr(k_ptr, (D, N), (1, stride_k), (0, col_start), (BLOCK_K, BLOCK_N), (0, 1))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, D, BLOCK_K):
        q = tl.load(q_block, boundary_check=(0, 1), padding_option="zero")
        k = tl.load(k_block, boundary_check=(0, 1), padding_option="zero")
        if UPCAST_DOT:
            q, k = q.to(tl.float32), k.to(tl.float32)
        acc = tl.dot(q, k, acc, input_precision=INPUT_PRECISION)
        q_block = tl.advance(q_block, (0, BLOCK_K))
        k_block = tl.advance(k_block, (BLOCK_K, 0))
    return acc


@triton.jit
def sigmoid_base2(z2):
    """``σ(z)`` of base-2 logits ``z2 = z·log2(e)`` with one exponential that cannot overflow:
    ``(1 if z >= 0 else e) / (1 + e)`` with ``e = exp(−|z|)``."""
    e = tl.exp2(-tl.abs(z2))
    return tl.where(z2 >= 0.0, 1.0, e) / (1.0 + e)


@triton.jit
def row_weight_inputs(
    q_lse_ptr, q_weight_ptr, bias_ptr, offs_m, row_mask, HAS_Q_WEIGHT: tl.constexpr, OBJECTIVE: tl.constexpr
):  # fmt: skip
    """What `entry_weights` reads once per block of rows: ``(r_i·log2(e), g_i, β·log2(e))``, each loaded only where
    the objective ``OBJECTIVE`` uses it (the statistic for the softmax, the bias for the sigmoid, ``g`` where given)
    and 0 otherwise. Masked rows load 0."""
    q_lse2 = 0.0
    q_weight = 0.0
    bias2 = 0.0
    if HAS_Q_WEIGHT:
        if OBJECTIVE == 0:
            q_lse2 = tl.load(q_lse_ptr + offs_m, mask=row_mask, other=0.0) * LOG2E
        q_weight = tl.load(q_weight_ptr + offs_m, mask=row_mask, other=0.0)
    if OBJECTIVE != 0:
        # The bias is in natural units: it takes log2(e) like the scale, and is added after the factors.
        bias2 = tl.load(bias_ptr) * LOG2E
    return q_lse2, q_weight, bias2


@triton.jit
def entry_weights(
    tile, q_lse2, q_weight, bias2, k_lse_ptr, k_weight_ptr, offs_n, col_mask,
    HAS_Q_WEIGHT: tl.constexpr, HAS_K_WEIGHT: tl.constexpr, OBJECTIVE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The ``[BLOCK_M, BLOCK_N]`` entry weights ``P_ij`` of a base-2 logit tile ``S_ij·log2(e)`` (before the bias),
    with the row inputs of `row_weight_inputs` and the column statistics and weights loaded here: for ``OBJECTIVE``
    0 (softmax) ``g_i·exp(S_ij − r_i) + h_j·exp(S_ij − c_j)``, for 1 (sigmoid) ``(g_i + h_j)·σ(S_ij + β)``. An
    absent weight counts as zero; masked columns load 0."""
    weights = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if OBJECTIVE == 0:
        if HAS_Q_WEIGHT:
            weights += q_weight[:, None] * tl.exp2(tile - q_lse2[:, None])
        if HAS_K_WEIGHT:
            k_lse2 = tl.load(k_lse_ptr + offs_n, mask=col_mask, other=0.0) * LOG2E
            k_weight = tl.load(k_weight_ptr + offs_n, mask=col_mask, other=0.0)
            weights += k_weight[None, :] * tl.exp2(tile - k_lse2[None, :])
    else:
        sigmoid = sigmoid_base2(tile + bias2)
        if HAS_Q_WEIGHT:
            weights += q_weight[:, None] * sigmoid
        if HAS_K_WEIGHT:
            weights += tl.load(k_weight_ptr + offs_n, mask=col_mask, other=0.0)[None, :] * sigmoid
    return weights


@triton.jit
def softplus_and_sigmoid(z2):
    """``softplus(z)`` and ``σ(z)`` of base-2 logits ``z2 = z·log2(e)``, from one exponential and two reciprocals.

    ``softplus(z) = max(z, 0) + log1p(e)`` and ``σ(z) = (1 if z >= 0 else e) / (1 + e)`` with ``e = exp(−|z|)``
    in ``(0, 1]``. Triton has no portable ``log1p``; ``log(1 + e)`` would lose the relative precision of a small ``e``
    (``1 + e`` keeps 24 bits of the sum, about 1e-3 of ``log1p(e)`` at ``e ≈ 4.5e-5``, a logit near −10, SigLIP's
    initial bias), and ``tl.log`` compiles to libdevice's software logarithm (17 FFMAs), which makes the sigmoid row
    kernel spill on the large tiles. So ``log1p(e) = 2·atanh(t)`` with ``t = e / (2 + e)`` in ``[0, 1/3]``, summed as
    ``2t·(1 + t²/3 + t⁴/5 + … + t¹⁰/11)``: relative error below ``t¹²/13 ≤ 1.5e-7`` for every ``e``, small or not.
    """
    e = tl.exp2(-tl.abs(z2))
    t = e / (2.0 + e)
    t2 = t * t
    series = 1.0 + t2 * (0.3333333333 + t2 * (0.2 + t2 * (0.1428571429 + t2 * (0.1111111111 + t2 * 0.0909090909))))
    return tl.maximum(z2, 0.0) * LN2 + 2.0 * t * series, tl.where(z2 >= 0.0, 1.0, e) / (1.0 + e)


@triton.jit
def _row_statistics_kernel(
    q_ptr, k_ptr, scale_ptr, bias_ptr, q_scale_ptr, k_scale_ptr, lse_ptr, second_ptr, M, N, D, stride_q, stride_k,
    OBJECTIVE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """The row statistics of ``Z_ij = s·a_i·b_j·⟨q_i, k_j⟩ (+ β)`` for ``BLOCK_M`` rows per program.

    ``OBJECTIVE`` is the objective's `unicl.loss.objectives.base.Objective.kernel_code`: 0 (softmax) writes
    ``lse[i] = logsumexp_j S_ij`` (no bias; ``bias_ptr`` and ``second_ptr`` are not read); 1 (sigmoid) writes
    ``lse[i] = Σ_j softplus(Z_ij)`` and ``second[i] = Σ_j σ(Z_ij)`` with the bias ``β`` read from ``bias_ptr``.
    """
    row_start = tl.program_id(0) * BLOCK_M
    offs_m = row_start + tl.arange(0, BLOCK_M)
    # s·a_i·log2(e) once per row; padded rows get 0 and are never stored.
    row_factor = tl.load(q_scale_ptr + offs_m, mask=offs_m < M, other=0.0) * (tl.load(scale_ptr) * LOG2E)
    if OBJECTIVE == 0:
        running_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        running_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    else:
        # The bias is in natural units: it takes log2(e) like the scale, and is added after the factors.
        bias2 = tl.load(bias_ptr) * LOG2E
        softplus_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
        sigmoid_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        tile = similarity_tile(
            q_ptr, k_ptr, row_start, n0, M, N, D, stride_q, stride_k, BLOCK_M, BLOCK_N, BLOCK_K, INPUT_PRECISION,
            UPCAST_DOT,
        )  # fmt: skip
        col_factor = tl.load(k_scale_ptr + offs_n, mask=offs_n < N, other=0.0)
        if OBJECTIVE == 0:
            tile = tl.where(offs_n[None, :] < N, tile * row_factor[:, None] * col_factor[None, :], float("-inf"))
            new_max = tl.maximum(running_max, tl.max(tile, 1))
            running_sum = running_sum * tl.exp2(running_max - new_max) + tl.sum(tl.exp2(tile - new_max[:, None]), 1)
            running_max = new_max
        else:
            softplus, sigmoid = softplus_and_sigmoid(tile * row_factor[:, None] * col_factor[None, :] + bias2)
            # Padded columns would add softplus(β) and σ(β): they add nothing.
            softplus_sum += tl.sum(tl.where(offs_n[None, :] < N, softplus, 0.0), 1)
            sigmoid_sum += tl.sum(tl.where(offs_n[None, :] < N, sigmoid, 0.0), 1)
    if OBJECTIVE == 0:
        tl.store(lse_ptr + offs_m, (running_max + tl.log2(running_sum)) * LN2, mask=offs_m < M)
    else:
        tl.store(lse_ptr + offs_m, softplus_sum, mask=offs_m < M)
        tl.store(second_ptr + offs_m, sigmoid_sum, mask=offs_m < M)


# --- launch configurations ------------------------------------------------------------------------------------------


# Half precision runs on tensor cores, fp32 as exact fp32 products; sm_86/sm_89 have their own half tiles because
# two of sm_80's spill there, sm_100 takes Hopper's. Every entry compiles for its chips without
# register spills (SASS read with cuobjdump, tests/kernels/test_compile_for_gpus.py): wider tiles spilled, in fp32 by
# thousands of registers. Hopper's half-precision tiles are issued as wgmma.
#: Autotune candidates of the row kernel for the softmax objective, per chip family
#: (`unicl.loss.kernels.tuning.chip_family`) and operand precision (``"half"`` for bf16/fp16, ``"fp32"``).
LSE_CONFIGS: dict[tuple[str, str], list[triton.Config]] = {
    ("sm80", "half"): [
        tile_config(128, 128, 64, 8, 3), tile_config(128, 64, 32, 4, 3), tile_config(64, 64, 64, 4, 3)
    ],
    ("sm86", "half"): [
        tile_config(128, 64, 32, 8, 3), tile_config(128, 128, 32, 8, 3), tile_config(64, 64, 64, 4, 3)
    ],
    ("sm90", "half"): [tile_config(128, 128, 32, 8, 3), tile_config(64, 64, 32, 4, 2)],
    ("sm80", "fp32"): [tile_config(64, 64, 32, 4, 2), tile_config(32, 32, 32, 4, 2)],
    ("sm90", "fp32"): [tile_config(64, 64, 32, 4, 2), tile_config(32, 32, 32, 4, 2)],
}  # fmt: skip
# The sigmoid objective's row kernel holds more per entry (its ``log1p`` series and two reciprocals), and Ampere's and
# Ada's widest half tiles spilled with it (sm_80: 128 x 128 x 64 at 8 warps and 128 x 64 x 32 at 4, sm_86/sm_89:
# 128 x 128 x 32 at 8 warps; 255 registers and 450-570 bytes each): its own half tiles there, none wider than
# 128 x 64 or 64 x 128 at 8 warps. Hopper's, Blackwell's and every fp32 tile are the softmax's, and spill-free.
#: The row kernel's autotune candidates for the sigmoid objective (`LSE_CONFIGS` with its own Ampere and Ada half
#: tiles).
SIGMOID_LSE_CONFIGS: dict[tuple[str, str], list[triton.Config]] = {
    **LSE_CONFIGS,
    ("sm80", "half"): [tile_config(128, 64, 64, 8, 3), tile_config(128, 64, 32, 8, 3), tile_config(64, 64, 64, 4, 3)],
    ("sm86", "half"): [tile_config(128, 64, 32, 8, 3), tile_config(64, 128, 32, 8, 3), tile_config(64, 64, 64, 4, 3)],
}
#: The row kernel with each objective's table (`LSE_CONFIGS`, `SIGMOID_LSE_CONFIGS`).
LSE = KernelSpec("lse", _row_statistics_kernel, LSE_CONFIGS, objectives=("softmax",), forward=True)
SIGMOID_LSE = KernelSpec(
    "lse_sigmoid", _row_statistics_kernel, SIGMOID_LSE_CONFIGS, objectives=("sigmoid",), forward=True
)
#: The row kernel's spec for each objective's kernel code (`row_spec`).
ROW_SPECS = {SOFTMAX.kernel_code: LSE, SIGMOID.kernel_code: SIGMOID_LSE}


# --- launchers, registered as torch.library operators so torch.compile keeps the loss in its graph -----------------


def row_spec(objective: int) -> KernelSpec:
    """The row kernel's spec (its tile table) for an objective's kernel code."""
    return ROW_SPECS.get(objective, LSE)


def _second_length(rows: int, objective: int) -> int:
    """Length of the row kernel's second statistic: the softmax objective has one row statistic, the others two."""
    return 0 if objective == SOFTMAX.kernel_code else rows


@torch.library.custom_op("unicl::row_logsumexp", mutates_args=())
def row_logsumexp(
    q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, q_scale: torch.Tensor, k_scale: torch.Tensor
) -> torch.Tensor:
    """``r_i = logsumexp_j S_ij`` with ``S_ij = s·a_i·b_j·⟨q_i, k_j⟩``: the first of `row_statistics` for the
    softmax objective, whose arguments it takes (without the bias and the objective).

    Returns:
        ``[M]`` float32.
    """
    return row_statistics(q, k, scale, q_scale, k_scale, None, SOFTMAX.kernel_code)[0]


@row_logsumexp.register_fake
def _row_logsumexp_fake(q, k, scale, q_scale, k_scale) -> torch.Tensor:
    return q.new_empty(q.shape[0], dtype=torch.float32)


@torch.library.custom_op("unicl::row_statistics", mutates_args=())
def row_statistics(
    q: torch.Tensor,
    k: torch.Tensor,
    scale: torch.Tensor,
    q_scale: torch.Tensor,
    k_scale: torch.Tensor,
    bias: torch.Tensor | None,
    objective: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An objective's row statistics of ``Z_ij = s·a_i·b_j·⟨q_i, k_j⟩ (+ β)`` in one pass over ``Z``.

    Args:
        q: ``[M, D]`` row features (float16, bfloat16 or float32).
        k: ``[N, D]`` column features, same dtype.
        scale: one-element tensor ``s``.
        q_scale: ``[M]`` row factors ``a`` (the inverse norms, or ones).
        k_scale: ``[N]`` column factors ``b``.
        bias: one-element tensor ``β``, or ``None`` for an objective without one.
        objective: the objective's `unicl.loss.objectives.base.Objective.kernel_code`.

    Returns:
        Two float32 vectors: for the softmax objective ``r [M]`` (``r_i = logsumexp_j S_ij``) and an empty one; for
        the sigmoid objective ``Σ_j softplus(Z_ij)`` and ``Σ_j σ(Z_ij)``, ``[M]`` each.
    """
    q, k = q.contiguous(), k.contiguous()
    first = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    second = torch.empty(_second_length(q.shape[0], objective), dtype=torch.float32, device=q.device)
    scale = scale.float().reshape(1)
    row_spec(objective).run(
        lambda meta: (triton.cdiv(q.shape[0], meta["BLOCK_M"]),),
        q.device,
        q.dtype,
        q_ptr=q, k_ptr=k, scale_ptr=scale, bias_ptr=scale if bias is None else bias.float().reshape(1),
        q_scale_ptr=q_scale.float().contiguous(), k_scale_ptr=k_scale.float().contiguous(), lse_ptr=first,
        second_ptr=first if second.numel() == 0 else second,
        M=q.shape[0], N=k.shape[0], D=q.shape[1], stride_q=q.stride(0), stride_k=k.stride(0), OBJECTIVE=objective,
        **tile_options(q.dtype),
    )  # fmt: skip
    return first, second


@row_statistics.register_fake
def _row_statistics_fake(q, k, scale, q_scale, k_scale, bias, objective) -> tuple[torch.Tensor, torch.Tensor]:
    rows = q.shape[0]
    return q.new_empty(rows, dtype=torch.float32), q.new_empty(_second_length(rows, objective), dtype=torch.float32)


def rows_only_statistics(sim: Similarity, objective: Objective) -> Statistics:
    """The row statistics of a one-sided objective (or the rows of a two-sided one) from the row kernel, one pass
    over ``Z``: what both schedules run where no column statistic is wanted."""
    row_scale, col_scale = factors(sim)
    first, second = row_statistics(sim.u, sim.v, sim.scale, row_scale, col_scale, sim.bias, objective.kernel_code)
    return first, (second if objective.kernel_code != SOFTMAX.kernel_code else None)


def entry_weight_arguments(
    q: torch.Tensor, k: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, inputs: BackwardInputs
) -> dict[str, object]:
    """The kernel arguments of an entry-weight launch (both schedules' backward kernels take them) with rows ``q``
    and columns ``k``: contiguous features, float32 factors, statistics and bias, the objective's kernel code, and
    the flags for absent weights, whose pointers then go unread (as are the statistics for the sigmoid objective and
    the bias for the softmax one)."""
    objective, q_scale, k_scale, q_lse, k_lse, q_weight, k_weight = inputs
    placeholder = q_lse  # never read when its HAS_* flag is off
    return dict(
        q_ptr=q, k_ptr=k, scale_ptr=scale.float().reshape(1),
        bias_ptr=placeholder if bias is None else bias.float().reshape(1),
        q_scale_ptr=q_scale.float().contiguous(), k_scale_ptr=k_scale.float().contiguous(),
        q_lse_ptr=q_lse.float().contiguous(), k_lse_ptr=k_lse.float().contiguous(),
        q_weight_ptr=placeholder if q_weight is None else q_weight.float().contiguous(),
        k_weight_ptr=placeholder if k_weight is None else k_weight.float().contiguous(),
        M=q.shape[0], N=k.shape[0], D=q.shape[1], stride_q=q.stride(0), stride_k=k.stride(0),
        HAS_Q_WEIGHT=q_weight is not None, HAS_K_WEIGHT=k_weight is not None, OBJECTIVE=objective,
        **tile_options(q.dtype),
    )  # fmt: skip


#: One schedule's entry-weight launch: ``launch(q, k, inputs, arguments)`` runs its kernel on the contiguous rows
#: ``q`` and columns ``k`` with the `entry_weight_arguments` ``arguments`` (the `BackwardInputs` ``inputs`` they
#: were made from, for what the schedule applies outside its kernel) and returns the kernel's output.
EntryLaunch = Callable[[torch.Tensor, torch.Tensor, "BackwardInputs", dict[str, object]], torch.Tensor]


def entry_weight_op(
    name: str, launch: EntryLaunch, output_like: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.library.CustomOpDef:
    """A schedule's backward launcher, registered as the torch.library operator ``unicl::<name>`` so torch.compile
    keeps the loss in its graph. Both schedules' backward kernels read the entry weights ``P`` of
    ``S_ij = s·a_i·b_j·⟨q_i, k_j⟩``: ``P_ij = g_i·exp(S_ij − r_i) + h_j·exp(S_ij − c_j)`` for the softmax objective,
    ``(g_i + h_j)·σ(S_ij + β)`` for the sigmoid one, so their operators take the same arguments.

    The operator's arguments:

    * ``q``: ``[M, D]`` row features (float16, bfloat16 or float32).
    * ``k``: ``[N, D]`` column features, same dtype.
    * ``scale``: one-element tensor ``s``.
    * ``q_scale``: ``[M]`` row factors ``a``.
    * ``k_scale``: ``[N]`` column factors ``b``.
    * ``q_lse``: ``[M]`` row log-sum-exp ``r`` (read by the softmax objective only).
    * ``k_lse``: ``[N]`` column log-sum-exp ``c`` (likewise).
    * ``q_weight``: ``[M]`` row weights ``g``, or ``None`` for zero.
    * ``k_weight``: ``[N]`` column weights ``h``, or ``None`` for zero.
    * ``bias``: one-element tensor ``β`` of an objective with a bias, else ``None`` (default).
    * ``objective``: the objective's `unicl.loss.objectives.base.Objective.kernel_code` (default 0: softmax).

    Args:
        name: the operator's name in the ``unicl`` namespace.
        launch: the schedule's launch (`EntryLaunch`).
        output_like: ``output_like(q, k)``, an empty tensor of the output's shape and dtype (for torch.compile's
            tracing, which runs no kernel).

    Returns:
        The operator, called with the arguments above.
    """

    def launcher(
        q: torch.Tensor,
        k: torch.Tensor,
        scale: torch.Tensor,
        q_scale: torch.Tensor,
        k_scale: torch.Tensor,
        q_lse: torch.Tensor,
        k_lse: torch.Tensor,
        q_weight: torch.Tensor | None,
        k_weight: torch.Tensor | None,
        bias: torch.Tensor | None = None,
        objective: int = 0,
    ) -> torch.Tensor:
        q, k = q.contiguous(), k.contiguous()
        inputs = BackwardInputs(objective, q_scale, k_scale, q_lse, k_lse, q_weight, k_weight)
        return launch(q, k, inputs, entry_weight_arguments(q, k, scale, bias, inputs))

    launcher.__name__ = launcher.__qualname__ = name
    operator = torch.library.custom_op(f"unicl::{name}", launcher, mutates_args=())

    @operator.register_fake
    def _fake(q, k, scale, q_scale, k_scale, q_lse, k_lse, q_weight, k_weight, bias=None, objective=0):
        return output_like(q, k)

    return operator


def factors(sim: Similarity) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` of ``sim``, with ones (``M + N`` floats) where it has none."""

    def ones(features: torch.Tensor) -> torch.Tensor:
        return torch.ones(features.shape[0], dtype=torch.float32, device=features.device)

    return (
        ones(sim.u) if sim.row_scale is None else sim.row_scale,
        ones(sim.v) if sim.col_scale is None else sim.col_scale,
    )


class BackwardInputs(NamedTuple):
    """What an entry-weight launch reads besides the features: the objective's kernel code, the factors ``a`` and
    ``b``, the statistics ``r`` and ``c`` (an uninitialised placeholder for ``c`` where the kernels read none) and
    the weights ``g`` and ``h`` (``None`` for zero)."""

    code: int
    row_scale: torch.Tensor
    col_scale: torch.Tensor
    row_lse: torch.Tensor
    col_lse: torch.Tensor
    row_weight: torch.Tensor | None
    col_weight: torch.Tensor | None


class FusedEngine:
    """What both Triton engines share: `weighted_products` prepares the `BackwardInputs`, and each schedule's
    `entry_products` runs its kernels on them."""

    def weighted_products(
        self, sim: Similarity, objective: Objective, statistics: Statistics, weights: Weights
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``H V`` and ``Hᵀ U``; see `unicl.loss.engine.SimilarityEngine`."""
        row_lse, col_lse = statistics
        # The kernels read the statistics as the softmax objective's r and c; without column weights (and for a
        # one-sided objective, whose kernels read none) an uninitialised placeholder stands in for c.
        if col_lse is None or not objective.two_sided:
            col_lse = row_lse.new_empty(sim.v.shape[0])
        row_scale, col_scale = factors(sim)
        inputs = BackwardInputs(objective.kernel_code, row_scale, col_scale, row_lse, col_lse, *weights)
        return self.entry_products(sim, inputs)

    def entry_products(self, sim: Similarity, inputs: BackwardInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``H V`` and ``Hᵀ U`` from the prepared inputs: the schedule's own kernels."""
        raise NotImplementedError
