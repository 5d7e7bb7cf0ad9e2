"""Compile the UniCL kernels as a real launch would, for a GPU that need not be present, and report what came out.

Every autotune configuration of every kernel (the one-pass schedule's ``partials`` and ``weights``, the two-pass
schedule's ``grad``, and the row kernel ``lse`` both schedules share), for every objective it computes (its
``OBJECTIVE`` constant: the softmax objective in all four, the sigmoid one in ``lse``, ``weights`` and ``grad``), is
compiled for a chip and feature dtype with
the specialisation Triton's JIT gives a typical launch: the arguments of a representative launch (`Launch`; by
default N = 65,536 rows and columns, D = 512, contiguous features, 16-byte aligned CUDA allocations) go through the
JIT's own binder (``triton.runtime.jit.create_function_from_signature`` and ``JITFunction._pack_args``, what
``JITFunction.run`` calls), so pointers and integers divisible by 16 get ``tt.divisibility = 16`` and integers equal
to 1 become constants, exactly as at launch, and the pipelined kernels that will run are the ones inspected.

Per kernel, configuration, chip and dtype it reports registers, spill stores and loads (bytes of ``STL``/``LDL`` in
the SASS), stack and local memory (``cuobjdump -res-usage``), the number of stages, shared memory against the chip's
limit and the launcher's estimate (`unicl.loss.kernels.tuning.estimated_shared_bytes`), whether ``cp.async``, TMA,
``wgmma`` and tensor-core instructions appear, and for the forward kernels (``partials``, ``lse``) the SASS of the
column loop per ``S`` entry (`loop_counts`).

Run it without ``TRITON_INTERPRET`` (the interpreter replaces the kernels by Python functions)::

    python -m unicl.loss.kernels.compile_report --capability 90 --dtype bfloat16 --table
    python -m unicl.loss.kernels.compile_report --objective sigmoid --capability 80 86 90 --table
    python -m unicl.loss.kernels.compile_report --jobs 2 > report.json   # every chip and dtype, JSON
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import MockTensor, create_function_from_signature

from unicl.loss.kernels import one_pass, plan, tiles, two_pass
from unicl.loss.kernels.availability import interpreter_active
from unicl.loss.kernels.tuning import SHARED_MEMORY_LIMIT, estimated_shared_bytes
from unicl.loss.objectives import OBJECTIVES

TRITON_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
#: Every kernel by the name of its tile table.
KERNELS = {
    spec.name: spec for spec in (one_pass.PARTIALS, one_pass.WEIGHTS, tiles.LSE, tiles.SIGMOID_LSE, two_pass.GRAD)
}
#: Pointers to feature-dtype data; every other pointer is float32.
FEATURE_POINTERS = {"q_ptr", "k_ptr", "w_ptr"}
#: The PTX of a tensor-core product per chip family.
TENSOR_CORE_PTX = {8: r"\bmma\.sync\.", 9: r"\bwgmma\.", 10: r"\btcgen05\.mma"}
#: Streaming multiprocessors of each chip's representative part (A100, RTX 3090, L40, H100 SXM, B200): only the
#: forward launch's column ranges depend on it, and only through their divisibility, which is always by 256.
SM_COUNT = {80: 108, 86: 82, 89: 142, 90: 132, 100: 148}
#: The bytes one ``STL``/``LDL`` moves, by width suffix (none: 32 bits).
LOCAL_ACCESS_BYTES = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}


@dataclass(frozen=True)
class Launch:
    """The representative launch whose specialisation is compiled.

    Attributes:
        n: rows and columns of ``S`` (image and text batch). The one-pass kernels take a super-chunk of its rows, as
            `unicl.loss.kernels.plan` sizes them with the default workspace.
        d: feature dimension, which is also every feature row's stride (the launchers make features contiguous).
    """

    n: int = 65536
    d: int = 512

    def integers(self, kernel_name: str, capability: int, dtype: str) -> dict[str, int]:
        """The integer arguments the launcher of ``kernel_name`` passes at this launch, by parameter name."""
        itemsize = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
        values = {"N": self.n, "D": self.d, "stride_q": self.d, "stride_k": self.d, "stride_out": self.d}
        if kernel_name == "partials":
            block_m = min(c.kwargs["BLOCK_M"] for c in _configs(kernel_name, capability, dtype))
            rows = plan.forward_rows(self.n, self.n, block_m, None, plan.DEFAULT_WORKSPACE_BYTES)
            programs = plan.PROGRAMS_PER_SM * SM_COUNT[capability]
            values.update(M=rows, cols_per_range=plan.column_ranges(self.n, plan.cdiv(rows, block_m), programs)[0])
        elif kernel_name == "weights":
            rows = plan.backward_rows(self.n, self.n, itemsize, None, plan.DEFAULT_WORKSPACE_BYTES)
            values.update(M=rows, stride_w=self.n)
        else:
            values["M"] = self.n
        return values


@dataclass
class LoopCounts:
    """SASS of a forward kernel's column loop, per ``S`` entry (see `loop_counts`)."""

    instructions: float
    shuffles: float
    ex2: float
    barriers: float
    shared_accesses: float
    product_step: float
    by_opcode: dict[str, float]


@dataclass
class KernelReport:
    """What the compiler made of one kernel configuration at one launch's specialisation."""

    kernel: str
    objective: str
    capability: int
    dtype: str
    config: dict
    num_warps: int
    num_stages: int
    integers: dict[str, int]
    divisible_by_16: list[str]
    constant_ones: list[str]
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    local_bytes: int
    shared_bytes: int
    shared_estimate: int
    shared_limit: int
    cp_async: bool
    tma: bool
    wgmma: bool
    tensor_cores: bool
    ptx_local_memory: bool
    loop: LoopCounts | None = None
    compile_seconds: float = 0.0

    @property
    def spills(self) -> bool:
        """Whether anything goes to local memory: spilled registers, a stack frame, or ``.local`` in the PTX."""
        return bool(self.spill_store_bytes or self.spill_load_bytes or self.stack_bytes or self.ptx_local_memory)


def _configs(kernel_name: str, capability: int, dtype: str) -> list[triton.Config]:
    return KERNELS[kernel_name].configs_for(divmod(capability, 10), getattr(torch, dtype))


def launch_arguments(
    kernel_name: str, capability: int, dtype: str, config: triton.Config, launch: Launch, objective: str = "softmax"
) -> dict[str, object]:
    """Every argument of one autotuned launch, by name: stand-in tensors (``MockTensor``, 16-byte aligned as CUDA
    allocations are) for the pointers, the launcher's integers and flags (both weights present: the backward
    kernels' largest variant), the objective's kernel code, and the configuration's meta-parameters.

    Raises:
        KeyError: a kernel parameter this module does not know a launch value for (a new argument needs one here).
    """
    kernel = KERNELS[kernel_name].kernel
    integers = launch.integers(kernel_name, capability, dtype)
    flags = {
        # What tuning.tile_options passes compiled launches, and the weighted variant of the backward kernels.
        "INPUT_PRECISION": "ieee" if dtype == "float32" else "tf32",
        "UPCAST_DOT": False,
        "HAS_Q_WEIGHT": True,
        "HAS_K_WEIGHT": True,
        "OBJECTIVE": OBJECTIVES[objective].kernel_code,
    }
    arguments: dict[str, object] = {}
    meta = config.all_kwargs()
    for param in kernel.params:
        name = param.name
        if name in meta:
            continue
        if name.endswith("_ptr"):
            arguments[name] = MockTensor(getattr(torch, dtype) if name in FEATURE_POINTERS else torch.float32)
        elif name in integers:
            arguments[name] = integers[name]
        elif name in flags:
            arguments[name] = flags[name]
        elif not param.has_default:
            raise KeyError(f"compile_report has no launch value for {kernel_name}'s argument {name!r}")
    return {**arguments, **meta}


def specialise(
    kernel: triton.JITFunction, target: GPUTarget, arguments: dict[str, object]
) -> tuple[dict[str, str], dict, dict, object]:
    """The ``(signature, constexprs, attrs, options)`` that ``JITFunction.run`` compiles for ``arguments``."""
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(arguments)
    # As JITFunction.run sets them before binding.
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bound, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, options


def _tool(name: str) -> str | None:
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(bundled) if bundled.exists() else shutil.which(name)


def _dump_cubin(cubin: bytes, sass: bool = True) -> str:
    """``cuobjdump -res-usage`` of a cubin, with ``-sass`` (half a second of disassembly) if ``sass``."""
    executable = _tool("cuobjdump")
    if executable is None:
        raise RuntimeError("compile_report needs cuobjdump (bundled with Triton's NVIDIA backend)")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        command = [executable, "-res-usage", *(["-sass"] if sass else []), handle.name]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def _sass_instructions(dump: str) -> list[tuple[int, str, str]]:
    """``(address, opcode, text)`` of every instruction in a ``cuobjdump -sass`` dump, predicates stripped."""
    instructions = []
    for line in dump.splitlines():
        match = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if match:
            text = match.group(2)
            opcode = re.sub(r"^@!?U?P[T0-9]+\s+", "", text).split()[0]
            instructions.append((int(match.group(1), 16), opcode, text))
    return instructions


def loop_counts(dump: str, entries_per_thread: float) -> LoopCounts | None:
    """SASS of the column loop per ``S`` entry, or ``None`` where no loop holds the similarity tile's loop.

    Loops are backward branches. The product loop walks ``D`` in ``BLOCK_K`` steps and is recognised by its global
    loads (``LDG``, ``LDGSTS`` or TMA's ``UTMALDG``); the column loop is the smallest loop around it. Loops nested in
    the column loop (the product loop, barrier waits) are left out, and so are the out-of-line wait paths ptxas
    places after the function body, so what is counted is, once per tile: the pipelined loads' prologue and the wait
    for the last product, the scaling of the tile, both log-sum-exp updates with their reductions, and the stores.
    Static counts (each instruction once, as ptxas laid it out) are taken per thread and divided by the entries each
    thread holds, ``BLOCK_M·BLOCK_N / (32·num_warps)``, so 1.0 means one instruction per entry of ``S``; ``ex2``
    counts ``MUFU.EX2``, ``shuffles`` ``SHFL``, ``barriers`` ``BAR``, and ``shared_accesses`` ``LDS``/``STS``
    (cross-warp reductions and layout conversions). ``product_step`` is one pass of the product loop per entry, so
    a launch issues about ``instructions + (D / BLOCK_K)·product_step`` thread instructions per entry of ``S``.
    """
    instructions = _sass_instructions(dump)
    loops = []
    for address, opcode, text in instructions:
        # "BRA 0x1380", "BRA.U !UP0, 0x140" (Blackwell's uniform branches): the target is the last operand.
        target = re.search(r"\b0x([0-9a-f]+)\s*$", text) if opcode.split(".")[0] == "BRA" else None
        if target and int(target.group(1), 16) < address:
            loops.append((int(target.group(1), 16), address))

    def inside(span: tuple[int, int], outer: tuple[int, int]) -> bool:
        return span != outer and outer[0] <= span[0] and span[1] <= outer[1]

    loads = [address for address, opcode, _ in instructions if opcode.startswith(("LDG", "UTMALDG"))]
    product = [span for span in loops if any(span[0] <= address <= span[1] for address in loads)]
    around = [span for span in loops if any(inside(p, span) for p in product)]
    if not around:
        return None
    outer = min(around, key=lambda span: span[1] - span[0])
    inner = [span for span in loops if inside(span, outer)]
    steps = [span for span in product if inside(span, outer)]
    step = sum(any(begin <= address <= end for begin, end in steps) for address, _, _ in instructions)
    body = [
        opcode
        for address, opcode, _ in instructions
        if outer[0] <= address <= outer[1] and not any(begin <= address <= end for begin, end in inner)
    ]
    families = collections.Counter(opcode.split(".")[0] for opcode in body)

    def per_entry(count: int) -> float:
        return round(count / entries_per_thread, 3)

    return LoopCounts(
        instructions=per_entry(len(body)),
        shuffles=per_entry(families["SHFL"]),
        ex2=per_entry(sum(opcode.startswith("MUFU.EX2") for opcode in body)),
        barriers=per_entry(families["BAR"]),
        shared_accesses=per_entry(families["LDS"] + families["STS"]),
        product_step=per_entry(step),
        by_opcode={name: per_entry(count) for name, count in families.most_common()},
    )


def _resource(dump: str, name: str) -> int:
    match = re.search(rf"\b{name}:(\d+)", dump)
    return int(match.group(1)) if match else 0


def _local_bytes(instructions: list[tuple[int, str, str]], opcode: str) -> int:
    total = 0
    for _, name, _ in instructions:
        parts = name.split(".")
        if parts[0] == opcode:
            total += next((LOCAL_ACCESS_BYTES[p] for p in parts[1:] if p in LOCAL_ACCESS_BYTES), 4)
    return total


def compile_kernel(
    kernel_name: str,
    capability: int,
    dtype: str,
    config: triton.Config,
    launch: Launch = Launch(),
    objective: str = "softmax",
) -> KernelReport:
    """Compile one kernel configuration for ``sm_<capability>`` and ``objective`` at ``launch``'s specialisation and
    inspect it."""
    kernel = KERNELS[kernel_name].kernel
    target = GPUTarget("cuda", capability, 32)
    arguments = launch_arguments(kernel_name, capability, dtype, config, launch, objective)
    signature, constexprs, attrs, options = specialise(kernel, target, arguments)
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)
    seconds = time.perf_counter() - start
    names = kernel.arg_names
    integer_params = {p.name for p in kernel.params if not p.is_constexpr and not p.name.endswith("_ptr")}
    divisible = [names[path[0]] for path, values in attrs.items() if ["tt.divisibility", 16] in values]
    ones = [names[p[0]] for p, value in constexprs.items() if value == 1 and not kernel.params[p[0]].is_constexpr]
    ptx = compiled.asm["ptx"]
    dump = _dump_cubin(compiled.asm["cubin"], sass=KERNELS[kernel_name].forward)
    if not KERNELS[kernel_name].forward and (_resource(dump, "STACK") or _resource(dump, "LOCAL")):
        # ptxas spills to the stack frame, so only a kernel with one needs its SASS read for the spill bytes.
        dump = _dump_cubin(compiled.asm["cubin"])
    sass = _sass_instructions(dump)
    meta = config.kwargs
    loop = None
    if KERNELS[kernel_name].forward:
        loop = loop_counts(dump, meta["BLOCK_M"] * meta["BLOCK_N"] / (32 * config.num_warps))
    return KernelReport(
        kernel=kernel_name,
        objective=objective,
        capability=capability,
        dtype=dtype,
        config=dict(meta),
        num_warps=int(compiled.metadata.num_warps),
        num_stages=int(compiled.metadata.num_stages),
        integers={name: value for name, value in arguments.items() if type(value) is int and name in integer_params},
        divisible_by_16=divisible,
        constant_ones=ones,
        registers=_resource(dump, "REG"),
        spill_store_bytes=_local_bytes(sass, "STL"),
        spill_load_bytes=_local_bytes(sass, "LDL"),
        stack_bytes=_resource(dump, "STACK"),
        local_bytes=_resource(dump, "LOCAL"),
        shared_bytes=int(compiled.metadata.shared),
        shared_estimate=estimated_shared_bytes(config, getattr(torch, dtype)),
        shared_limit=SHARED_MEMORY_LIMIT[capability],
        cp_async=bool(re.search(r"\bcp\.async\.c[ag]\b", ptx)),
        tma=bool(re.search(r"\bcp\.async\.bulk\.tensor\b", ptx)),
        wgmma=bool(re.search(r"\bwgmma\.", ptx)),
        tensor_cores=bool(re.search(TENSOR_CORE_PTX[min(capability // 10, 10)], ptx)),
        ptx_local_memory=bool(re.search(r"\b(ld|st)\.local\b", ptx)),
        loop=loop,
        compile_seconds=round(seconds, 2),
    )


def _compile_task(task: tuple[str, int, str, int, Launch, str]) -> dict:
    kernel_name, capability, dtype, index, launch, objective = task
    config = _configs(kernel_name, capability, dtype)[index]
    return asdict(compile_kernel(kernel_name, capability, dtype, config, launch, objective))


def compile_all(
    capabilities: list[int], dtypes: list[str], kernels: list[str] | None = None, launch: Launch = Launch(),
    jobs: int = 1, objectives: list[str] | None = None,
) -> list[dict]:  # fmt: skip
    """Reports (as dictionaries) for every autotune configuration of ``kernels`` at each capability and dtype, for
    each of ``objectives`` (default: all) that the kernel computes, compiled in ``jobs`` processes."""
    if interpreter_active():
        raise RuntimeError("compile_report needs the compiler: unset TRITON_INTERPRET before importing unicl")
    wanted = objectives or list(OBJECTIVES)
    tasks = [
        (name, capability, dtype, index, launch, objective)
        for capability in capabilities
        for dtype in dtypes
        for name in kernels or KERNELS
        for objective in KERNELS[name].objectives
        if objective in wanted
        for index in range(len(_configs(name, capability, dtype)))
    ]
    # The slowest compiles first, so the pool does not end on one long partials kernel.
    order = sorted(range(len(tasks)), key=lambda i: not KERNELS[tasks[i][0]].forward)
    if jobs <= 1:
        results = {i: _compile_task(tasks[i]) for i in order}
    else:
        # spawn: a forked child would inherit the parent's Triton and CUDA state.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            results = dict(zip(order, pool.map(_compile_task, [tasks[i] for i in order])))
    return [results[i] for i in range(len(tasks))]


def forward_ratios(reports: list[dict]) -> dict[str, dict]:
    """Per chip and dtype, the one-pass forward's SASS per entry against the row-only kernel's, both for the softmax
    objective: the worst ``partials`` configuration over the best ``lse`` one, for instructions, shuffles and
    ``MUFU.EX2``."""
    groups: dict[tuple[int, str], dict[str, list[dict]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for report in reports:
        if report["loop"] is not None and report["objective"] == "softmax":
            groups[(report["capability"], report["dtype"])][report["kernel"]].append(report["loop"])
    ratios = {}
    for (capability, dtype), kernels in sorted(groups.items()):
        if {"partials", "lse"} <= kernels.keys():
            entry = {}
            for key in ("instructions", "shuffles", "ex2"):
                worst = max(loop[key] for loop in kernels["partials"])
                best = min(loop[key] for loop in kernels["lse"])
                entry[key] = {"partials_max": worst, "lse_min": best, "ratio": round(worst / best, 3) if best else None}
            ratios[f"sm_{capability} {dtype}"] = entry
    return ratios


def _table(reports: list[dict]) -> str:
    header = (
        f"{'kernel':12}{'objective':10}{'sm':>4} {'dtype':9}{'tile MxNxK[xD]':>17}{'w':>3}{'st':>3}{'regs':>5}"
        f"{'spill':>7}"
        f"{'smem KiB':>9}{'est KiB':>8}  {'units':14}{'instr/e':>8}{'shfl/e':>7}{'ex2/e':>6}{'mufu/e':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in reports:
        c = r["config"]
        tile = "x".join(str(c[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_D") if k in c)
        units = ",".join(
            name for name, on in (("wgmma", r["wgmma"]), ("mma", r["tensor_cores"] and not r["wgmma"]),
                                  ("cp.async", r["cp_async"]), ("tma", r["tma"])) if on
        )  # fmt: skip
        spill = r["spill_store_bytes"] + r["spill_load_bytes"]
        loop = r["loop"] or {}
        widths = (("instructions", 8), ("shuffles", 7), ("ex2", 6))
        counts = "".join(f"{loop[k]:>{w}.2f}" for k, w in widths) if loop else ""
        counts += f"{loop['by_opcode'].get('MUFU', 0.0):>7.2f}" if loop else ""
        lines.append(
            f"{r['kernel']:12}{r['objective']:10}{r['capability']:>4} {r['dtype']:9}{tile:>17}{r['num_warps']:>3}"
            f"{r['num_stages']:>3}{r['registers']:>5}{spill:>7}"
            f"{r['shared_bytes'] / 1024:>9.1f}{r['shared_estimate'] / 1024:>8.1f}  "
            f"{units:14}{counts}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capability", type=int, nargs="+", default=sorted(SHARED_MEMORY_LIMIT), choices=SM_COUNT)
    parser.add_argument("--dtype", nargs="+", default=list(TRITON_DTYPE), choices=TRITON_DTYPE)
    parser.add_argument("--kernel", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--objective", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--n", type=int, default=Launch.n, help="rows and columns of the launch (default %(default)s)")
    parser.add_argument("--d", type=int, default=Launch.d, help="feature dimension of the launch (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help="compiler processes (default %(default)s)")
    parser.add_argument("--table", action="store_true", help="a table to read instead of JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="unicl-triton-cache-"))
    launch = Launch(args.n, args.d)
    reports = compile_all(args.capability, args.dtype, args.kernel, launch, args.jobs, args.objective)
    if args.table:
        print(f"launch: N = {launch.n}, D = {launch.d}; per-entry counts: SASS of the column loop (loop_counts)")
        print(_table(reports))
        for group, entry in forward_ratios(reports).items():
            print(group, " ".join(f"{k} {v['partials_max']}/{v['lse_min']} = {v['ratio']}" for k, v in entry.items()))
        return
    summary = {
        "triton": triton.__version__,
        "launch": {**asdict(launch), "pointers": "16-byte aligned", "features": "contiguous"},
        "forward_ratios": forward_ratios(reports),
        "reports": reports,
    }
    json.dump(summary, sys.stdout)
    print()


if __name__ == "__main__":
    main()
