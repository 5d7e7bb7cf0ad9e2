"""What each UniCL loss backend issues for one forward+backward, and what that costs on A100, H100 and H200.

For every backend it counts, from the plan that backend really launches:

* matrix-product flops, each Triton ``tl.dot`` at its padded tile shape and each torch product as issued;
* exponentials (every ``exp``/``exp2`` element, padded tiles included);
* HBM bytes: every torch operation's inputs and outputs (each op streams its operands from memory), and for a
  Triton launch the arrays it reads and writes, once each (tile re-reads are assumed to hit L2);
* extra memory: the buffers the backend holds beyond inputs and returned gradients' dtype, from its documented
  layout (the dense figure is the CPU measurement scaled by N²).

The torch backends (dense, chunked) are traced on the ``meta`` device at the requested size, under a dispatch mode
that sees each operation, so their counts are those of the real code at that N (no memory is used). The Triton
schedules are counted from their launch plans (`unicl.loss.kernels.plan`, the autotune tables' first tiles).
Inf-CL 1.2.1 is counted from its launch plan as read in its source (``inf_cl/flash.py``: 64 × 64 tiles, 256-wide
heads, float32 operands on TF32 tensor cores; forward one pass, backward two kernels that each recompute ``S``, per
direction, run in both directions as ``benchmarks/providers.py`` does).

Times are rooflines: per launch ``max(flops at the precision's peak × efficiency (+ exponentials at the special
function units' rate for fused kernels), bytes at HBM bandwidth × efficiency)``, summed. The peaks and efficiencies
are in `CHIPS` and `EFFICIENCY` with their sources. The tests tie the counts to reality: flops to
torch's ``FlopCounterMode`` and to the ``tl.dot`` work the Triton interpreter executes, exponentials to the
interpreter's ``exp2`` elements.

Example::

    python benchmarks/cost_model.py --n 65536 --d 512 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unicl.loss.backends import ChunkedEngine, UniCLTermsFunction, normalize_features
from unicl.loss.chunked import block_rows
from unicl.loss.dense import dense_terms
from unicl.loss.kernels.plan import (
    DEFAULT_WORKSPACE_BYTES,
    PROGRAMS_PER_SM,
    backward_rows,
    cdiv,
    column_ranges,
    forward_rows,
    super_chunks,
)
from unicl.loss.targets import target_keys

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Chip:
    """Peak figures of one GPU (dense, no sparsity)."""

    name: str
    half_tflops: float
    tf32_tflops: float
    fp32_tflops: float
    hbm_tb_per_s: float
    sms: int
    boost_ghz: float
    source: str

    @property
    def exp_per_s(self) -> float:
        """``exp2`` results per second: 16 per clock per SM on compute capability 8.x and 9.0 (CUDA C++
        Programming Guide, "Arithmetic Instructions" throughput table)."""
        return 16 * self.sms * self.boost_ghz * 1e9


CHIPS = {
    "A100": Chip("A100 SXM4 80GB", 312, 156, 19.5, 2.039, 108, 1.41, "NVIDIA A100 datasheet (2021), dense figures"),
    "H100": Chip("H100 SXM5 80GB", 989, 494, 67, 3.35, 132, 1.83, "NVIDIA H100 datasheet (2023), dense figures"),
    "H200": Chip("H200 SXM 141GB", 989, 494, 67, 4.8, 132, 1.83, "NVIDIA H200 datasheet (2024), dense figures"),
}
#: Fractions of peak each kind of work is assumed to reach. cuBLAS: 790 of 989 TFLOP/s for large bf16 matmuls on an
#: H200, the measurement of the notes this project was designed from (docs/objective.md, "Cost"). Triton: fused
#: tiles with exponentials in the loop, at the low end of what flash-attention-2-style Triton kernels reach on Hopper
#: (0.6). HBM: a streaming kernel's usual 0.85.
EFFICIENCY = {"gemm": 0.80, "triton": 0.60, "hbm": 0.85}


@dataclass
class Launch:
    """One kernel launch (or torch operation) and what it issues."""

    name: str
    kind: str  # "triton", "gemm" (a library product) or "torch" (any other torch operation)
    precision: str  # "half", "tf32" or "fp32": which peak its products run at
    flops: float = 0.0
    exps: float = 0.0
    bytes: float = 0.0

    def seconds(self, chip: Chip) -> float:
        """Roofline time of this launch on ``chip``."""
        peak = {"half": chip.half_tflops, "tf32": chip.tf32_tflops, "fp32": chip.fp32_tflops}[self.precision]
        efficiency = EFFICIENCY["triton"] if self.kind == "triton" else EFFICIENCY["gemm"]
        compute = self.flops / (peak * 1e12 * efficiency)
        exps = self.exps / chip.exp_per_s
        memory = self.bytes / (chip.hbm_tb_per_s * 1e12 * EFFICIENCY["hbm"])
        if self.kind == "triton":  # exponentials share the warps that issue the products
            return max(compute + exps, memory)
        return max(compute, exps, memory)


@dataclass
class Plan:
    """Everything one backend launches for one forward+backward."""

    backend: str
    launches: list[Launch] = field(default_factory=list)
    extra_bytes: float = 0.0
    note: str = ""

    @property
    def flops(self) -> float:
        return sum(launch.flops for launch in self.launches)

    @property
    def exps(self) -> float:
        return sum(launch.exps for launch in self.launches)

    @property
    def bytes(self) -> float:
        return sum(launch.bytes for launch in self.launches)

    def seconds(self, chip: Chip) -> float:
        return sum(launch.seconds(chip) for launch in self.launches)


def minimum_flops(n: int, d: int) -> float:
    """``8·N²·D``: one pass over ``S`` forward, three backward."""
    return 8.0 * n * n * d


def precision_of(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "half"


# --- Triton schedules, from their launch plans ----------------------------------------------------------------------


def _tile_flops(tiles: dict, d: int) -> float:
    """Products of one ``BLOCK_M × BLOCK_N`` similarity tile: ``⌈D / BLOCK_K⌉`` padded dots."""
    return cdiv(d, tiles["BLOCK_K"]) * 2.0 * tiles["BLOCK_M"] * tiles["BLOCK_N"] * tiles["BLOCK_K"]


def one_pass_plan(
    n: int,
    d: int,
    dtype: torch.dtype,
    partials_tiles: dict,
    weights_tiles: dict,
    programs_wanted: int,
    smallest_block_m: int | None = None,
    chunk_size: int | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
) -> Plan:
    """``backend="triton"``: `unicl.loss.kernels.one_pass` on an ``N × N`` batch."""
    item, precision = torch.empty(0, dtype=dtype).element_size(), precision_of(dtype)
    plan = Plan("unicl triton (one pass)")
    block_m = smallest_block_m or partials_tiles["BLOCK_M"]
    rows = forward_rows(n, n, block_m, chunk_size, workspace_bytes)
    per_range, ranges = column_ranges(n, cdiv(rows, block_m), programs_wanted)
    tile_entries = partials_tiles["BLOCK_M"] * partials_tiles["BLOCK_N"]
    for chunk in super_chunks(n, rows):
        row_blocks = cdiv(chunk.rows, partials_tiles["BLOCK_M"])
        tiles = sum(cdiv(min(per_range, n - r * per_range), partials_tiles["BLOCK_N"]) for r in range(ranges))
        plan.launches.append(
            Launch(
                "forward: row and column partials",
                "triton",
                precision,
                flops=row_blocks * tiles * _tile_flops(partials_tiles, d),
                # Two per entry, one per direction (the columns' tile log-sum-exp; the rows' pair and merge into
                # per-thread partials), and once per program the merge of its BLOCK_N / 2 row partials of each row.
                exps=row_blocks * tiles * 2.0 * tile_entries
                + row_blocks * ranges * (partials_tiles["BLOCK_N"] // 2 - 1) * partials_tiles["BLOCK_M"],
                bytes=(chunk.rows + n) * d * item + 4.0 * (row_blocks * n + ranges * chunk.rows),
            )
        )
        plan.launches.append(
            Launch(
                "forward: merge partials", "torch", "fp32", bytes=4.0 * (row_blocks * n + ranges * chunk.rows + 3 * n)
            )
        )
    back_rows = backward_rows(n, n, item, chunk_size, workspace_bytes)
    tile_entries = weights_tiles["BLOCK_M"] * weights_tiles["BLOCK_N"]
    for chunk in super_chunks(n, back_rows):
        programs = cdiv(chunk.rows, weights_tiles["BLOCK_M"]) * cdiv(n, weights_tiles["BLOCK_N"])
        weights = chunk.rows * n * item
        plan.launches += [
            Launch(
                "backward: softmax weights",
                "triton",
                precision,
                flops=programs * _tile_flops(weights_tiles, d),
                exps=programs * 2.0 * tile_entries,
                bytes=(chunk.rows + n) * d * item + weights,
            ),
        ]
        product = 2.0 * chunk.rows * n * d
        plan.launches += [
            Launch("backward: W·V", "gemm", precision, product, 0, weights + n * d * item + 4.0 * chunk.rows * d),
            Launch("backward: Wᵀ·U", "gemm", precision, product, 0, weights + chunk.rows * d * item + 8.0 * n * d),
        ]
    workspace = max(4 * cdiv(rows, block_m) * n + 4 * ranges * rows, back_rows * (n + d) * item)
    plan.extra_bytes = workspace + 4 * 4 * n + 2 * 4 * n * d
    return plan


def rowwise_plan(n: int, d: int, dtype: torch.dtype, lse_tiles: dict, grad_tiles: dict) -> Plan:
    """``backend="triton_rowwise"``: `unicl.loss.kernels.two_pass`, each direction as the rows of ``S``/``Sᵀ``."""
    item, precision = torch.empty(0, dtype=dtype).element_size(), precision_of(dtype)
    plan = Plan("unicl triton_rowwise (two pass)")
    lse_tiles_n = cdiv(n, lse_tiles["BLOCK_M"]) * cdiv(n, lse_tiles["BLOCK_N"])
    grad_programs = cdiv(n, grad_tiles["BLOCK_M"]) * cdiv(d, grad_tiles["BLOCK_D"])
    grad_tiles_n = grad_programs * cdiv(n, grad_tiles["BLOCK_N"])
    product = 2.0 * grad_tiles["BLOCK_M"] * grad_tiles["BLOCK_N"] * grad_tiles["BLOCK_D"]
    for direction in ("rows", "columns"):
        plan.launches.append(
            Launch(
                f"forward: log-sum-exp of the {direction}",
                "triton",
                precision,
                flops=lse_tiles_n * _tile_flops(lse_tiles, d),
                exps=lse_tiles_n * (lse_tiles["BLOCK_M"] * lse_tiles["BLOCK_N"] + lse_tiles["BLOCK_M"]),
                bytes=2 * n * d * item + 4.0 * n,
            )
        )
    for direction in ("rows", "columns"):
        plan.launches.append(
            Launch(
                f"backward: softmax gradient of the {direction}",
                "triton",
                precision,
                flops=grad_tiles_n * (_tile_flops(grad_tiles, d) + product),
                exps=grad_tiles_n * 2.0 * grad_tiles["BLOCK_M"] * grad_tiles["BLOCK_N"],
                bytes=2 * n * d * item + 4.0 * n * d,
            )
        )
    plan.extra_bytes = 4 * 4 * n + 2 * 4 * n * d
    return plan


def inf_cl_plan(n: int, d: int) -> Plan:
    """Inf-CL 1.2.1 (``cal_inf_loss``) in both directions, from its launch plan (see the module docstring)."""
    block, head = 64, 256
    heads = cdiv(d, head)
    tiles = cdiv(n, block) ** 2
    similarity = tiles * heads * 2.0 * block * block * head
    plan = Plan("Inf-CL 1.2.1 (both directions)", note="float32 operands: TF32 tensor cores")
    entries = tiles * block * block
    for direction in ("image→text", "text→image"):
        plan.launches += [
            Launch(f"{direction} forward: lse", "triton", "tf32", similarity, entries, 2 * n * d * 4.0),
            Launch(f"{direction} backward: dq", "triton", "tf32", 2 * similarity, entries, 3 * n * d * 4.0),
            Launch(f"{direction} backward: dk", "triton", "tf32", 2 * similarity, entries, 3 * n * d * 4.0),
        ]
    plan.extra_bytes = 6 * n * d * 4.0 + 4 * n * 4.0
    return plan


# --- torch backends, traced on the meta device ----------------------------------------------------------------------

_EXP_PACKETS = {torch.ops.aten.exp, torch.ops.aten.exp_, torch.ops.aten.exp2, torch.ops.aten.exp2_}
#: Products and the operands of their ``[M, K] @ [K, N]`` in the argument list.
_PRODUCT_OPERANDS = {torch.ops.aten.mm: (0, 1), torch.ops.aten.addmm: (1, 2)}
#: Operations that move no data: views, and allocations that are not filled.
_NO_TRAFFIC = {
    "view", "_unsafe_view", "as_strided", "t", "transpose", "expand", "slice", "select", "alias", "unsqueeze",
    "squeeze", "permute", "detach", "empty", "empty_like", "new_empty", "empty_strided",
}  # fmt: skip


class _TrafficMode(TorchDispatchMode):
    """Records each operation as a `Launch`: bytes of its tensor inputs and outputs, exponentials."""

    def __init__(self, precision: str) -> None:
        super().__init__()
        self.precision = precision
        self.launches: list[Launch] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet.__name__ in _NO_TRAFFIC:
            return out
        # An out= argument is counted once, as the output it is.
        tensors = {id(t): t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor) and t.dim() > 0}
        launch = Launch(packet.__name__, "gemm" if packet in _PRODUCT_OPERANDS else "torch", self.precision)
        launch.bytes = float(sum(t.numel() * t.element_size() for t in tensors.values()))
        if packet in _PRODUCT_OPERANDS:
            left, right = (args[i] for i in _PRODUCT_OPERANDS[packet])
            launch.flops = 2.0 * left.shape[0] * left.shape[1] * right.shape[1]
        if packet in _EXP_PACKETS:
            launch.exps = float(tree_leaves(out)[0].numel())
        self.launches.append(launch)
        return out


def _traced(backend: str, n: int, d: int, dtype: torch.dtype, labels: str, run) -> Plan:
    """Run ``run(image, text, keys, scale)`` (returning a scalar) forward+backward on meta tensors and record it."""
    image = torch.empty(n, d, dtype=dtype, device="meta", requires_grad=True)
    text = torch.empty(n, d, dtype=dtype, device="meta", requires_grad=True)
    scale = torch.empty((), dtype=torch.float32, device="meta", requires_grad=True)
    y = torch.full((n,), -1, dtype=torch.long, device="meta") if labels == "unique" else None
    keys = target_keys(y, n, image.device)
    with _TrafficMode(precision_of(dtype)) as traffic:
        run(image, text, keys, scale).backward()
    return Plan(backend, traffic.launches)


def dense_plan(n: int, d: int, dtype: torch.dtype, labels: str = "mixed") -> Plan:
    """``backend="dense"``: ``S``, ``T`` and autograd's ``N × N`` temporaries."""

    def run(image, text, keys, scale):
        rows, cols = dense_terms(normalize_features(image), normalize_features(text), scale, keys, keys)
        return (rows.mean() + cols.mean()) / 2

    plan = _traced("unicl dense", n, d, dtype, labels, run)
    # Measured on the CPU: 1,591 MB extra at N = 8,192, D = 512 in float32 (benchmarks/results/cpu-n8192) =
    # 5.9 float32 N × N buffers at the peak.
    plan.extra_bytes = 5.9 * 4.0 * n * n
    return plan


def chunked_plan(n: int, d: int, dtype: torch.dtype, labels: str = "mixed", chunk_size: int | None = None) -> Plan:
    """``backend="chunked"`` as it runs on CUDA (half operands on tensor cores), block by block."""
    engine = ChunkedEngine(chunk_size, native_half=True)

    def run(image, text, keys, scale):
        rows, cols = UniCLTermsFunction.apply(image, text, scale, keys, None, engine, True, True)
        return (rows.mean() + cols.mean()) / 2

    plan = _traced("unicl chunked", n, d, dtype, labels, run)
    rows = block_rows(n, n, chunk_size)
    item = torch.empty(0, dtype=dtype).element_size()
    plan.extra_bytes = 3 * 4.0 * rows * n + rows * n * item + 4 * 4.0 * n + 2 * 4.0 * n * d
    return plan


# --- the table ------------------------------------------------------------------------------------------------------


def all_plans(n: int, d: int, dtype: torch.dtype, chip: Chip = CHIPS["H200"]) -> list[Plan]:
    """Every backend's plan at one size; the Triton ones with the first tiles of their Hopper tables."""
    from unicl.loss.kernels import one_pass, tiles, two_pass

    def first(spec) -> dict:
        return dict(spec.configs_for((9, 0), dtype)[0].kwargs)

    programs = PROGRAMS_PER_SM * chip.sms
    smallest = min(c.kwargs["BLOCK_M"] for c in one_pass.PARTIALS.configs_for((9, 0), dtype))
    return [
        dense_plan(n, d, dtype),
        chunked_plan(n, d, dtype),
        rowwise_plan(n, d, dtype, first(tiles.LSE), first(two_pass.GRAD)),
        one_pass_plan(n, d, dtype, first(one_pass.PARTIALS), first(one_pass.WEIGHTS), programs, smallest),
        inf_cl_plan(n, d),
    ]


def rows_for(plans: list[Plan], n: int, d: int) -> list[dict]:
    """One dictionary per backend: counts, times and fractions of peak."""
    minimum = minimum_flops(n, d)
    rows = []
    for plan in plans:
        row = {
            "backend": plan.backend,
            "matmul_tflop": plan.flops / 1e12,
            "times_minimum": plan.flops / minimum,
            "exp_g": plan.exps / 1e9,
            "hbm_gb": plan.bytes / 1e9,
            "extra_gb": plan.extra_bytes / 1e9,
            "launches": len(plan.launches),
            "note": plan.note,
        }
        for key, chip in CHIPS.items():
            seconds = plan.seconds(chip)
            row[f"{key}_ms"] = seconds * 1e3
            row[f"{key}_peak_fraction"] = minimum / seconds / (chip.half_tflops * 1e12)
        rows.append(row)
    return rows


def format_table(rows: list[dict], n: int, d: int, dtype: str, markdown: bool = False) -> str:
    """The table users read (``--markdown`` for docs/kernels.md)."""
    columns = ["backend", "matmul TFLOP", "× 8N²D", "exp (G)", "HBM GB", "extra GB"]
    columns += [f"{chip} ms (% peak)" for chip in CHIPS]
    lines = []
    for row in rows:
        cells = [
            row["backend"],
            f"{row['matmul_tflop']:.2f}",
            f"{row['times_minimum']:.2f}",
            f"{row['exp_g']:.1f}",
            f"{row['hbm_gb']:.1f}",
            f"{row['extra_gb']:.2f}",
        ]
        cells += [f"{row[f'{chip}_ms']:.1f} ({100 * row[f'{chip}_peak_fraction']:.0f}%)" for chip in CHIPS]
        lines.append(cells)
    title = f"N = {n:,}, D = {d}, {dtype}, forward + backward; % peak = 8N²D / time / dense half-precision peak"
    if markdown:
        head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
        return title + "\n\n" + head + "\n" + "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    widths = [max(len(columns[i]), *(len(cells[i]) for cells in lines)) for i in range(len(columns))]

    def render(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([title, render(columns), *(render(cells) for cells in lines)])


def chip_notes() -> str:
    """Where each peak figure and efficiency comes from."""
    lines = [f"{key}: {chip.name}, {chip.half_tflops:g} TFLOP/s bf16/fp16, {chip.tf32_tflops:g} TF32, "
             f"{chip.hbm_tb_per_s:g} TB/s, {chip.sms} SMs at {chip.boost_ghz:g} GHz ({chip.source})"
             for key, chip in CHIPS.items()]  # fmt: skip
    lines.append(
        "efficiencies: library GEMMs {gemm:.0%}, fused Triton tiles {triton:.0%}, HBM {hbm:.0%}; "
        "exponentials at 16 per clock per SM".format(**EFFICIENCY)
    )
    return "\n".join(lines)


@contextlib.contextmanager
def interpreter_counts() -> Iterator[dict[str, float]]:
    """Count the ``tl.dot`` flops (``2·M·N·K`` at each call's padded tile shape) and ``exp2`` elements that kernels
    execute under ``TRITON_INTERPRET=1``, while the block runs."""
    from triton.runtime.interpreter import InterpreterBuilder

    counts = {"dot_flops": 0.0, "exp2": 0.0}
    original_dot, original_exp2 = InterpreterBuilder.create_dot, InterpreterBuilder.create_exp2

    def counted_dot(self, a, b, d, *args):
        m, k = a.data.shape[-2:]
        counts["dot_flops"] += 2.0 * m * k * b.data.shape[-1]
        return original_dot(self, a, b, d, *args)

    def counted_exp2(self, arg):
        counts["exp2"] += float(arg.data.size)
        return original_exp2(self, arg)

    InterpreterBuilder.create_dot, InterpreterBuilder.create_exp2 = counted_dot, counted_exp2
    try:
        yield counts
    finally:
        InterpreterBuilder.create_dot, InterpreterBuilder.create_exp2 = original_dot, original_exp2


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=65536, help="batch size N")
    parser.add_argument("--d", type=int, default=512, help="feature dimension D")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--markdown", action="store_true", help="a Markdown table (as in docs/kernels.md)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.n < 1 or args.d < 1:
        parser.error(f"--n and --d must be positive, got {args.n} and {args.d}")
    rows = rows_for(all_plans(args.n, args.d, DTYPES[args.dtype]), args.n, args.d)
    print(format_table(rows, args.n, args.d, args.dtype, args.markdown))
    print()
    print(chip_notes())
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "d": args.d, "dtype": args.dtype, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
