"""Tile configurations and launches shared by the Triton schedules: which tiles a chip may take, the dot options
of a dtype, and one launch path for the CPU interpreter and for autotuned CUDA kernels."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton

from unicl.loss.kernels.availability import interpreter_active

#: Largest shared memory one block may use, in bytes, per compute capability (CUDA programming guide, "Technical
#: Specifications per Compute Capability": A100 163 KiB, RTX 30xx/40xx/L40 99 KiB, H100/H200 and B200 227 KiB).
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448}


def tile_config(
    block_m: int, block_n: int, block_k: int, warps: int, stages: int, block_d: int | None = None
) -> triton.Config:
    """One autotune candidate: ``BLOCK_M × BLOCK_N`` tiles summed over ``D`` in ``BLOCK_K`` steps (and, for the
    two-pass gradient kernel, ``BLOCK_D`` output features per program), with its warps and pipeline stages."""
    meta = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
    if block_d is not None:
        meta["BLOCK_D"] = block_d
    return triton.Config(meta, num_warps=warps, num_stages=stages)


def precision_class(dtype: torch.dtype) -> str:
    """``"fp32"`` for float32 features, ``"half"`` for bfloat16 and float16."""
    return "fp32" if dtype == torch.float32 else "half"


def chip_family(capability: tuple[int, int]) -> str:
    """The tile family of a chip: ``"sm80"`` (A100 and older), ``"sm86"`` (RTX 30xx/40xx, L4, L40: 99 KiB of shared
    memory, and a register allocator that spills tiles sm_80 holds), ``"sm90"`` (Hopper) or ``"sm100"`` (Blackwell).
    """
    major, minor = capability
    if major >= 10:
        return "sm100"
    if major == 9:
        return "sm90"
    return "sm86" if major == 8 and minor > 0 else "sm80"


#: Where a family without its own entry takes its tiles from.
_FALLBACK_FAMILY = {"sm86": "sm80", "sm100": "sm90"}


def config_table(
    table: dict[tuple[str, str], list[triton.Config]], capability: tuple[int, int], dtype: torch.dtype
) -> list[triton.Config]:
    """The candidates of ``table`` for a chip: its family's own, else those of the family it falls back to."""
    family, precision = chip_family(capability), precision_class(dtype)
    if (family, precision) not in table:
        family = _FALLBACK_FAMILY[family]
    return table[(family, precision)]


def autotuner(
    kernel: Callable,
    table: dict[tuple[str, str], list[triton.Config]],
    capability: tuple[int, int],
    dtype: torch.dtype,
) -> triton.runtime.Autotuner:
    """The autotuner of ``kernel`` over its configuration ``table`` (`config_table`) for a chip and feature dtype:
    keyed on ``D`` and, for a kernel that computes several objectives, its ``OBJECTIVE`` constant (each objective's
    entry functions cost their own time per tile), its candidates pruned by `prune_for`. `tuned` caches one per
    kernel, chip, dtype and size bucket."""
    return triton.autotune(
        configs=config_table(table, capability, dtype),
        # Triton's autotuner skips key names the kernel does not take (the one-pass forward has no OBJECTIVE).
        key=["D", "OBJECTIVE"],
        prune_configs_by={"early_config_prune": prune_for(capability, dtype)},
    )(kernel)


def shared_memory_limit(capability: tuple[int, int]) -> int:
    """Shared memory per block on a chip of ``capability`` (the nearest listed one at or below it)."""
    number = capability[0] * 10 + capability[1]
    known = [c for c in SHARED_MEMORY_LIMIT if c <= number]
    return SHARED_MEMORY_LIMIT[max(known)] if known else SHARED_MEMORY_LIMIT[80]


def estimated_shared_bytes(config: triton.Config, dtype: torch.dtype) -> int:
    """An upper bound on the shared memory of a configuration: its pipelined operand tiles (``Q`` and ``K`` tiles of
    the similarity loop, and the ``K`` feature tile of a ``BLOCK_D`` product) in every stage, plus one
    ``BLOCK_M × BLOCK_N`` tile in the features' dtype (a product operand or an epilogue staged through shared
    memory). Checked against the compiler's own figure for every configuration and chip in
    tests/kernels/test_compile_for_gpus.py."""
    meta = config.kwargs
    itemsize = torch.empty(0, dtype=dtype).element_size()
    operands = meta["BLOCK_M"] * meta["BLOCK_K"] + meta["BLOCK_K"] * meta["BLOCK_N"]
    operands += meta["BLOCK_N"] * meta.get("BLOCK_D", 0)
    return (max(config.num_stages, 1) * operands + meta["BLOCK_M"] * meta["BLOCK_N"]) * itemsize


def prune_for(capability: tuple[int, int], dtype: torch.dtype) -> Callable[..., list[triton.Config]]:
    """An ``early_config_prune`` for one chip: drop tiles wider than the feature dimension needs and tiles that
    would not fit the chip's shared memory, keeping at least the smallest configuration."""
    limit = shared_memory_limit(capability)

    def prune(configs: list[triton.Config], named_args: dict, **_: object) -> list[triton.Config]:
        width = max(16, triton.next_power_of_2(named_args["D"]))
        fitting = [c for c in configs if estimated_shared_bytes(c, dtype) <= limit]
        narrow = [c for c in fitting if c.kwargs["BLOCK_K"] <= width and c.kwargs.get("BLOCK_D", 0) <= width]
        return narrow or fitting or [min(configs, key=lambda c: estimated_shared_bytes(c, dtype))]

    return prune


def tile_options(dtype: torch.dtype) -> dict[str, object]:
    """``INPUT_PRECISION`` and ``UPCAST_DOT`` for features of ``dtype``.

    The interpreter multiplies the raw bit patterns of bfloat16 ``tl.dot`` operands (Triton 3.x; see
    https://github.com/triton-lang/triton/issues/11584, "not supported yet"), so under it the operands are upcast
    to float32 after loading; compiled kernels never take that branch. float32 features use exact products unless
    ``torch.backends.cuda.matmul.allow_tf32`` is on, as torch's own matmul does.
    """
    exact = dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    return {"INPUT_PRECISION": "ieee" if exact else "tf32", "UPCAST_DOT": interpreter_active()}


def runs_compiled(device: torch.device) -> bool:
    """Whether launches on ``device`` take the compiled path (autotuned tiles for the chip) rather than the CPU
    interpreter's fixed tiles. Every CUDA-only line of the kernel modules branches on this one predicate, so the
    CPU test harness (tests/kernels/cuda_harness.py) takes the CUDA path on CPU tensors by replacing it."""
    return device.type == "cuda"


def size_bucket(size: int) -> int:
    """The power of two at or above ``size`` (at least 16): autotuners are kept per bucket of the rows and columns,
    so a tile chosen at a small first batch does not serve every later N."""
    return max(16, triton.next_power_of_2(max(size, 1)))


def device_capability(device: torch.device) -> tuple[int, int]:
    """The compute capability of the CUDA ``device``, which selects its tile table."""
    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


#: Tiles under the CPU interpreter, where autotuning is impossible and tiles cost Python time (a kernel drops the
#: sizes it does not take).
INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_D": 32}


@dataclass(frozen=True, eq=False, repr=False)
class KernelSpec:
    """One Triton kernel as its launchers, the compile report, the tests and the benchmarks know it.

    Attributes:
        name: the name its tile table goes by (``"partials"``, ``"weights"``, ``"lse"``, ``"lse_sigmoid"``,
            ``"grad"``); a kernel with a table per objective has one spec per table.
        kernel: the ``@triton.jit`` function.
        table: autotune candidates per chip family and operand precision (`config_table`).
        objectives: the names of the objectives the kernel computes with this table (compiled for each of them).
        forward: whether it is a forward kernel, whose column loop the compile report counts per ``S`` entry.
    """

    name: str
    kernel: triton.JITFunction
    table: dict[tuple[str, str], list[triton.Config]]
    objectives: tuple[str, ...]
    forward: bool = False

    def __repr__(self) -> str:
        return f"KernelSpec({self.name!r})"

    def interpreter_tiles(self) -> dict[str, int]:
        """The tile sizes the kernel takes under the CPU interpreter (those of `INTERPRETER_CONFIG` it has)."""
        return {name: size for name, size in INTERPRETER_CONFIG.items() if name in self.kernel.arg_names}

    def configs_for(self, capability: tuple[int, int], dtype: torch.dtype) -> list[triton.Config]:
        """Autotune candidates for a chip and feature dtype (`config_table`)."""
        return config_table(self.table, capability, dtype)

    def run(
        self, grid_fn: Callable[..., tuple[int, ...]], device: torch.device, dtype: torch.dtype, **arguments: Any
    ) -> dict[str, int]:
        """Launch with the interpreter's fixed tiles on the CPU, or autotuned tiles on CUDA; returns the tile sizes
        used.

        Args:
            grid_fn: the grid from the tile sizes.
            device: where the tensors are.
            dtype: the features' dtype.
            **arguments: the kernel's other arguments, by name (``M`` and ``N`` among them: their `size_bucket`
                is part of the autotune key).
        """
        with warnings.catch_warnings():
            # Triton 3.4+ calls block pointers deprecated in favour of tensor descriptors, which need 16-byte aligned
            # rows (D a multiple of 8 in bf16) and a device allocator; block pointers take any D. Revisit with a GPU.
            warnings.filterwarnings("ignore", message="tl.make_block_ptr is deprecated")
            if not runs_compiled(device):
                meta = self.interpreter_tiles()
                self.kernel[grid_fn(meta)](**arguments, **meta)
                return meta
            buckets = (size_bucket(int(arguments["M"])), size_bucket(int(arguments["N"])))
            # Looked up at call time, so benchmarks/gpu_probes.py can record every autotuner handed out.
            autotuner = tuned(self, device_capability(device), dtype, buckets)
            # Triton's Autotuner builds the arguments its key and early_config_prune read from the positional ones
            # only (Autotuner.run: ``nargs = dict(zip(arg_names, args))``), so everything before the first tuned
            # parameter goes by position; all of the kernels' keys and pruning inputs are among those.
            tuned_names = set(autotuner.configs[0].kwargs)
            leading = next(i for i, name in enumerate(self.kernel.arg_names) if name in tuned_names)
            positional = [arguments.pop(name) for name in self.kernel.arg_names[:leading]]
            with torch.cuda.device(device):
                autotuner[grid_fn](*positional, **arguments)
            return dict(autotuner.best_config.kwargs)


@functools.cache
def tuned(
    spec: KernelSpec, capability: tuple[int, int], dtype: torch.dtype, buckets: tuple[int, ...]
) -> triton.runtime.Autotuner:
    """The autotuner of one kernel for a chip, dtype and `size_bucket` of ``(M, N)``: one per bucket, so each size
    class gets its own tiles; within it the key is ``D`` (and ``OBJECTIVE``)."""
    return autotuner(spec.kernel, spec.table, capability, dtype)
