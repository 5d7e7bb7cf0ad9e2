"""Measurements of a CUDA GPU for benchmarks/gpu_check.sh: the ceilings the cost model needs, the Triton kernels'
chosen tiles with their registers, spills and timings, and one forward+backward at N = 2^20.

Subcommands (each prints a report and writes it as JSON with ``--json``; the exit status is 1 if any measurement
failed, and the others are still made):

``ceilings``
    Versions (nvidia-smi, torch, triton, the chip), the bandwidth of a large device-to-device copy, one large bf16
    GEMM and one exact float32 GEMM, the two GEMM shapes of the one-pass schedule's backward with float32 results
    (``torch.mm(W [R, N], V [N, D], out_dtype=float32)`` and ``Wᵀ·U`` accumulated into a float32 ``[N, D]`` by
    ``torch.addmm(acc, a, b, out_dtype=float32, out=acc)``), and whether this torch takes that in-place float32
    accumulator with bf16 operands at all.
``kernels``
    One forward+backward per Triton schedule at N = 65,536, D = 512 in bf16 (autotuning then picks the tiles), then
    each kernel and GEMM of both schedules timed alone with those tiles, the autotuners' choices, and the
    registers and spills of every compiled kernel (read from the JIT function's device cache).
``one-million``
    One N = 2^20, D = 512 bf16 forward+backward with ``backend="triton"``, twice (the first includes compiling and
    autotuning), with the peak extra memory of each.

Times are CUDA-event medians after warm-up; rates count ``2·M·N·K`` flops per product.

Examples:
    python benchmarks/gpu_probes.py ceilings --json results/probes.json
    python benchmarks/gpu_probes.py kernels --n 65536 --d 512 --json results/kernels.json
    python benchmarks/gpu_probes.py one-million --json results/one_million.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class Report:
    """Named results of one subcommand; a measurement that raised is kept as its error and fails the run."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        self.errors: list[str] = []

    def measure(self, name: str, fn: Callable[[], Any]) -> Any:
        """``self.data[name] = fn()``, or the error it raised; written to the JSON file after every measurement, so
        a step stopped by its time limit keeps what it measured."""
        try:
            value = fn()
        except Exception as error:  # every failure is reported, none stops the other measurements
            value = {"error": f"{type(error).__name__}: {error}"}
            self.errors.append(f"{name}: {type(error).__name__}: {error}")
            traceback.print_exc()
        self.data[name] = value
        print(f"{name}: {_short(value)}", flush=True)
        self.write()
        return value

    def write(self) -> None:
        if self.path is None:
            return
        # Written in place (no temporary file beside it): the output folder holds only the files gpu_check.sh names.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({**self.data, "errors": self.errors}, indent=2, default=str) + "\n")

    def exit_status(self) -> int:
        if self.errors:
            print(f"{len(self.errors)} measurement(s) failed:\n  " + "\n  ".join(self.errors), flush=True)
        return 1 if self.errors else 0


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 400 else text[:400] + " ..."


def time_cuda(fn: Callable[[], Any], warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """Median and best of ``repeats`` CUDA-event timings of ``fn`` after ``warmup`` untimed calls, in ms (wall-clock
    timings where there is no CUDA: a ``--device cpu`` smoke run)."""
    for _ in range(warmup):
        fn()
    times = []
    if not torch.cuda.is_available():
        for _ in range(repeats):
            start_s = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start_s) * 1e3)
        return {"median_ms": statistics.median(times), "best_ms": min(times), "runs": repeats}
    torch.cuda.synchronize()
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "best_ms": min(times), "runs": repeats}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def with_rate(timing: dict[str, float], flops: float) -> dict[str, float]:
    """``timing`` with the TFLOP/s of ``flops`` at its median."""
    return {**timing, "flops": flops, "tflops": flops / (timing["median_ms"] * 1e-3) / 1e12}


# --- ceilings ------------------------------------------------------------------------------------------------------


def versions() -> dict[str, Any]:
    """Python, torch, triton, CUDA, the chip and what nvidia-smi says about it."""
    import triton

    properties = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0),
        "capability": list(torch.cuda.get_device_capability(0)),
        "multiprocessors": properties.multi_processor_count,
        "memory_gib": properties.total_memory / 2**30,
    }
    query = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit"
    try:
        smi = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        info["nvidia_smi"] = dict(zip(query.split(","), (x.strip() for x in smi.stdout.split(",")), strict=False))
    except (OSError, subprocess.SubprocessError) as error:
        info["nvidia_smi"] = f"unavailable: {error}"
    return info


def copy_bandwidth(gib: float = 4.0) -> dict[str, float]:
    """One ``gib`` GiB device-to-device copy: GB/s counting the bytes read and written (as KINDS.md quotes it) and
    counting the bytes copied once."""
    elements = int(gib * 2**30) // 2
    source = torch.empty(elements, dtype=torch.bfloat16, device="cuda").fill_(1.0)
    target = torch.empty_like(source)
    timing = time_cuda(lambda: target.copy_(source))
    seconds = timing["median_ms"] * 1e-3
    size = source.numel() * source.element_size()
    return {
        **timing,
        "bytes": size,
        "gbps_read_plus_write": 2 * size / seconds / 1e9,
        "gbps_copied": size / seconds / 1e9,
    }


def square_gemm(side: int, dtype: torch.dtype) -> dict[str, float]:
    """``C = A·B`` for ``side × side`` matrices of ``dtype`` (float32 with TF32 off: the exact-product rate)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a = torch.randn(side, side, device="cuda").to(dtype)
        b = torch.randn(side, side, device="cuda").to(dtype)
        c = torch.empty(side, side, device="cuda", dtype=dtype)
        return {"side": side, **with_rate(time_cuda(lambda: torch.mm(a, b, out=c)), 2 * side**3)}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def addmm_accepts_float32_accumulator() -> dict[str, Any]:
    """Whether ``torch.addmm(acc, a, b, out_dtype=float32, out=acc)`` takes a float32 ``acc`` with bf16 ``a``, ``b``
    and accumulates (``acc += a @ b``), checked on a small product against float64."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(256, 128, device="cuda", generator=generator).to(torch.bfloat16)
    b = torch.randn(128, 64, device="cuda", generator=generator).to(torch.bfloat16)
    acc = torch.ones(256, 64, device="cuda")
    try:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    except (RuntimeError, TypeError) as error:
        return {"in_place_float32_accumulator": "no", "error": f"{type(error).__name__}: {error}"[:300]}
    expected = 1.0 + a.double() @ b.double()
    relative = float((acc.double() - expected).norm() / expected.norm())
    return {"in_place_float32_accumulator": "yes", "accumulates": relative < 1e-5, "relative_error": relative}


def backward_gemms(n: int, d: int) -> dict[str, Any]:
    """The one-pass backward's products for one super-chunk at ``N = n`` bf16: ``W V`` and ``Wᵀ U`` with float32
    results, and ``W V`` with a bf16 result for comparison."""
    from unicl.loss.kernels.plan import DEFAULT_WORKSPACE_BYTES, backward_rows

    rows = backward_rows(n, n, 2, None, DEFAULT_WORKSPACE_BYTES)
    weights = (torch.rand(rows, n, device="cuda") / n).to(torch.bfloat16)
    v = torch.randn(n, d, device="cuda").to(torch.bfloat16)
    u = torch.randn(rows, d, device="cuda").to(torch.bfloat16)
    flops = 2 * rows * n * d
    result: dict[str, Any] = {"rows": rows, "n": n, "d": d}
    out = torch.empty(rows, d, device="cuda")
    try:
        torch.mm(weights, v, out_dtype=torch.float32, out=out)
        result["mm_out_dtype_float32"] = with_rate(
            time_cuda(lambda: torch.mm(weights, v, out_dtype=torch.float32, out=out)), flops
        )
    except (RuntimeError, TypeError) as error:
        result["mm_out_dtype_float32"] = {"supported": False, "error": f"{type(error).__name__}: {error}"[:300]}
    half_out = torch.empty(rows, d, device="cuda", dtype=torch.bfloat16)
    result["mm_bfloat16_out"] = with_rate(time_cuda(lambda: torch.mm(weights, v, out=half_out)), flops)
    acc = torch.zeros(n, d, device="cuda")
    try:
        torch.addmm(acc, weights.T, u, out_dtype=torch.float32, out=acc)
        result["addmm_in_place_float32"] = with_rate(
            time_cuda(lambda: torch.addmm(acc, weights.T, u, out_dtype=torch.float32, out=acc)), flops
        )
    except (RuntimeError, TypeError) as error:
        result["addmm_in_place_float32"] = {"supported": False, "error": f"{type(error).__name__}: {error}"[:300]}
        # What unicl.loss.matmul.mixed_addmm_ does on a torch without it: a float32 temporary, then add.
        try:
            result["mm_then_add_float32"] = with_rate(
                time_cuda(lambda: acc.add_(torch.mm(weights.T, u, out_dtype=torch.float32))), flops
            )
        except (RuntimeError, TypeError) as mm_error:
            result["mm_then_add_float32"] = {"supported": False, "error": f"{type(mm_error).__name__}: {mm_error}"}
    return result


def ceilings(args: argparse.Namespace) -> int:
    report = Report(args.json)
    report.measure("versions", versions)
    report.measure("copy", lambda: copy_bandwidth(args.copy_gib))
    report.measure("gemm_bf16", lambda: square_gemm(args.gemm_side, torch.bfloat16))
    report.measure("gemm_float32", lambda: square_gemm(args.gemm_side, torch.float32))
    report.measure("addmm_float32_accumulator", addmm_accepts_float32_accumulator)
    report.measure("backward_gemms", lambda: backward_gemms(args.n, args.d))
    return report.exit_status()


# --- kernels -------------------------------------------------------------------------------------------------------


def install_recorders() -> list[tuple[str, tuple, Any]]:
    """Wrap `unicl.loss.kernels.tuning.tuned` so every autotuner it hands out is recorded with the name of its
    kernel spec and the arguments it was made for ``(spec, capability, dtype, buckets)``. The launches look
    ``tuned`` up at call time, so the wrapper sees every launch."""
    from unicl.loss.kernels import tuning

    original = tuning.tuned
    existing = getattr(original, "records", None)
    if existing is not None:  # a second call extends the same list instead of wrapping twice
        return existing
    records: list[tuple[str, tuple, Any]] = []

    def recording(*args: Any) -> Any:
        tuner = original(*args)
        if not any(tuner is recorded for _, _, recorded in records):
            records.append((getattr(args[0], "name", str(args[0])), args, tuner))
        return tuner

    recording.records = records  # type: ignore[attr-defined]
    recording.cache_info = getattr(original, "cache_info", None)  # type: ignore[attr-defined]
    recording.cache_clear = getattr(original, "cache_clear", None)  # type: ignore[attr-defined]
    tuning.tuned = recording  # type: ignore[assignment]
    return records


def _jit_function(fn: Any) -> Any:
    """The ``JITFunction`` under an autotuner or heuristics wrapper (each keeps the function it wraps as ``.fn``)."""
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:  # a Triton without that module layout: unwrap by attribute alone
        JITFunction = ()
    for _ in range(8):
        if isinstance(fn, JITFunction) or not hasattr(fn, "fn"):
            return fn
        fn = fn.fn
    return fn


def describe_config(config: Any) -> dict[str, Any]:
    """A ``triton.Config`` as a plain dict."""
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def describe_autotuners(records: list[tuple[str, tuple, Any]]) -> list[dict[str, Any]]:
    """For every recorded autotuner: the arguments it was made for, the configuration it chose last, every key it
    tuned with its choice, and the candidates' timings of its last tuning (where this Triton keeps them)."""
    described = []
    for spec_name, args, tuner in records:
        best = getattr(tuner, "best_config", None)
        timings = getattr(tuner, "configs_timings", None) or {}
        described.append(
            {
                "spec": spec_name,
                "kernel": getattr(_jit_function(tuner), "__name__", str(tuner)),
                "made_for": [str(arg) for arg in args],
                "best_config": None if best is None else describe_config(best),
                "tuned_keys": {
                    str(key): describe_config(config) for key, config in getattr(tuner, "cache", {}).items()
                },
                "candidate_ms": [
                    {"config": describe_config(config), "ms": ms if isinstance(ms, (int, float)) else list(ms)}
                    for config, ms in timings.items()
                ],
            }
        )
    return described


def kernel_caches(jit_fn: Any) -> tuple[list[tuple[str, dict]], str]:
    """The dicts of compiled kernels a ``JITFunction`` keeps, per device, and a line saying where they were found.

    Triton 3.x keeps ``device_caches[device] = (kernel_cache, ...)`` (a tuple whose first dict maps specialisation
    keys to compiled kernels: 3 entries in some releases, 5 in 3.8); Triton 2.x kept ``cache[device] = {key:
    kernel}``. Both are searched, and every dict in those entries whose values look like compiled kernels is taken.
    """
    found: list[tuple[str, dict]] = []
    where = []
    for attribute in ("device_caches", "cache"):
        caches = getattr(jit_fn, attribute, None)
        if not isinstance(caches, dict):
            continue
        for device, entry in caches.items():
            parts = entry if isinstance(entry, (tuple, list)) else (entry,)
            shapes = []
            for part in parts:
                if isinstance(part, dict) and any(hasattr(v, "metadata") for v in part.values()):
                    found.append((str(device), part))
                    shapes.append(f"dict of {len(part)} kernels")
                else:
                    shapes.append(type(part).__name__)
            where.append(f"{attribute}[{device}] = ({', '.join(shapes)})")
    return found, "; ".join(where) or "no device cache found"


def compiled_kernels(jit_fn: Any) -> tuple[list[dict[str, Any]], str]:
    """Every compiled variant of ``jit_fn`` in this process: its constants (tile sizes, flags and integer
    specialisations), warps, stages, shared memory, registers per thread and spilled registers."""
    caches, where = kernel_caches(jit_fn)
    names = list(getattr(jit_fn, "arg_names", []))
    variants = []
    for device, cache in caches:
        for kernel in cache.values():
            if not hasattr(kernel, "metadata"):
                continue
            if getattr(kernel, "n_regs", None) is None and hasattr(kernel, "_init_handles"):
                try:
                    kernel._init_handles()  # loads the binary, which is where the driver reports registers
                except Exception as error:  # a kernel too large for this chip still gets listed
                    print(f"could not load a variant of {getattr(jit_fn, '__name__', jit_fn)}: {error}")
            constants = {}
            for key, value in (getattr(getattr(kernel, "src", None), "constants", None) or {}).items():
                index = key[0] if isinstance(key, tuple) and len(key) == 1 else key
                name = names[index] if isinstance(index, int) and index < len(names) else str(key)
                constants[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
            metadata = kernel.metadata
            variants.append(
                {
                    "device": device,
                    "constants": constants,
                    "num_warps": getattr(metadata, "num_warps", None),
                    "num_stages": getattr(metadata, "num_stages", None),
                    "shared_bytes": getattr(metadata, "shared", None),
                    "n_regs": getattr(kernel, "n_regs", None),
                    "n_spills": getattr(kernel, "n_spills", None),
                }
            )
    return variants, where


def best_config_of(records: list[tuple[str, tuple, Any]], kernel: Any) -> list[dict[str, Any]]:
    """The configurations the recorded autotuners of ``kernel`` (a JIT function) chose, one per autotuner."""
    target = _jit_function(kernel)
    chosen = []
    for _, _, tuner in records:
        best = getattr(tuner, "best_config", None)
        if best is not None and _jit_function(tuner) is target:
            chosen.append(describe_config(best))
    return chosen


def _matches(variant: dict[str, Any], config: dict[str, Any] | None) -> bool:
    if not config:
        return False
    return all(variant["constants"].get(key, variant.get(key)) == value for key, value in config.items())


def kernels(args: argparse.Namespace) -> int:
    from unicl import unicl_loss
    from unicl.loss.engine import Similarity
    from unicl.loss.kernels import one_pass, tiles, two_pass
    from unicl.loss.matmul import mixed_addmm_, mixed_mm
    from unicl.loss.normalize import inverse_norms

    report = Report(args.json)
    records = install_recorders()
    n, d, dtype, device = args.n, args.d, DTYPES[args.dtype], torch.device(args.device)
    report.data["shape"] = {"n": n, "d": d, "dtype": args.dtype}
    image = torch.randn(n, d, device=device).to(dtype).requires_grad_()
    text = torch.randn(n, d, device=device).to(dtype).requires_grad_()
    square = 2 * n * n * d

    def loss_run(backend: str, backward: bool = True) -> Callable[[], None]:
        def run() -> None:
            image.grad = text.grad = None
            loss = unicl_loss(image, text, None, 30.0, backend=backend)
            if backward:
                loss.backward()

        return run

    for backend in ("triton", "triton_rowwise"):

        def first_call(backend: str = backend) -> dict[str, float]:
            synchronize(device)
            start = time.perf_counter()
            loss_run(backend)()
            synchronize(device)
            return {"seconds": time.perf_counter() - start}

        report.measure(f"{backend}: first forward+backward (compiles and autotunes)", first_call)
        flops = 8 * n * n * d if backend == "triton" else 12 * n * n * d
        report.measure(f"{backend}: forward+backward", lambda b=backend, f=flops: with_rate(time_cuda(loss_run(b)), f))
        forward_flops = square if backend == "triton" else 2 * square
        report.measure(
            f"{backend}: forward", lambda b=backend, f=forward_flops: with_rate(time_cuda(loss_run(b, False)), f)
        )
    u, v = image.detach(), text.detach()
    a, b = inverse_norms(u), inverse_norms(v)
    scale = torch.tensor(30.0, device=device)
    g = torch.full((n,), 1 / (2 * n), device=device)
    engine = one_pass.OnePassEngine()
    sim = Similarity(u, v, scale, a, b)
    rows, cols_per_range = engine.forward_plan(sim)
    report.data["one_pass_plan"] = {"forward_rows": rows, "cols_per_range": cols_per_range}
    lse = {}

    def forward_statistics() -> dict[str, float]:
        lse["r"], lse["c"] = one_pass.one_pass_logsumexp(u, v, scale, a, b, rows, cols_per_range)
        return with_rate(
            time_cuda(lambda: one_pass.one_pass_logsumexp(u, v, scale, a, b, rows, cols_per_range)), square
        )

    report.measure("one_pass partials kernel + merges (forward)", forward_statistics)
    chunk = engine.backward_rows(sim)
    report.data["one_pass_plan"]["backward_rows"] = chunk
    part = slice(0, chunk)
    flops_chunk = 2 * chunk * n * d
    buffers: dict[str, torch.Tensor] = {}

    def weights_kernel() -> dict[str, float]:
        arguments = (u[part], v, scale, a[part], b, lse["r"][part], lse["c"], g[part], g)
        buffers["w"] = one_pass.one_pass_weights(*arguments)
        return with_rate(time_cuda(lambda: one_pass.one_pass_weights(*arguments)), flops_chunk)

    report.measure("one_pass weights kernel (one super-chunk)", weights_kernel)

    def weights_times_v() -> dict[str, float]:
        out = torch.empty(chunk, d, device=device)
        return with_rate(time_cuda(lambda: mixed_mm(buffers["w"], v, out=out)), flops_chunk)

    def weights_t_times_u() -> dict[str, float]:
        acc = torch.zeros(n, d, device=device)
        scaled = (u[part].float() * a[part, None]).to(dtype)
        return with_rate(time_cuda(lambda: mixed_addmm_(acc, buffers["w"].T, scaled)), flops_chunk)

    report.measure("one_pass W·V GEMM, float32 result (one super-chunk)", weights_times_v)
    report.measure("one_pass Wt·U GEMM into float32 (one super-chunk)", weights_t_times_u)
    buffers.clear()
    report.measure(
        "one_pass backward softmax part (every super-chunk)",
        lambda: with_rate(
            time_cuda(lambda: engine.softmax_grad(sim, lse["r"], lse["c"], g, g), warmup=1, repeats=5), 3 * square
        ),
    )
    report.measure(
        "rowwise row log-sum-exp kernel (one direction)",
        lambda: with_rate(time_cuda(lambda: tiles.row_logsumexp(u, v, scale, a, b)), square),
    )

    def rowwise_grad() -> dict[str, float]:
        arguments = (u, v, scale, a, b, lse["r"], lse["c"], g, g)
        timing = time_cuda(lambda: two_pass.two_pass_grad(*arguments), warmup=1, repeats=5)
        chosen = best_config_of(records, two_pass._two_pass_grad_kernel)
        block_d = chosen[-1].get("BLOCK_D", d) if chosen else d
        # Each of the ceil(D / BLOCK_D) column blocks recomputes S (2N²D) and multiplies P by its BLOCK_D columns.
        return {**with_rate(timing, square * (math.ceil(d / block_d) + 1)), "block_d": block_d}

    report.measure("rowwise softmax-gradient kernel (one direction)", rowwise_grad)
    report.measure("autotuners", lambda: describe_autotuners(records or _autotuners_by_scan()))

    def registers() -> dict[str, Any]:
        found = {}
        for name, fn in [
            ("partials", one_pass._one_pass_partials_kernel),
            ("weights", one_pass._one_pass_weights_kernel),
            ("lse", tiles._row_statistics_kernel),
            ("grad", two_pass._two_pass_grad_kernel),
        ]:
            variants, where = compiled_kernels(_jit_function(fn))
            chosen = best_config_of(records, fn)
            for variant in variants:
                variant["chosen"] = any(_matches(variant, config) for config in chosen)
            found[name] = {"found_in": where, "variants": variants}
            print(f"{name}: {where}")
            for variant in variants:
                blocks = {k: v for k, v in variant["constants"].items() if k.startswith("BLOCK")}
                print(
                    f"  {'*' if variant['chosen'] else ' '} {blocks} warps {variant['num_warps']} stages "
                    f"{variant['num_stages']}: {variant['n_regs']} registers, {variant['n_spills']} spilled, "
                    f"{variant['shared_bytes']} B shared"
                )
        return found

    report.measure("compiled kernels (* = a chosen tile)", registers)
    return report.exit_status()


def _autotuners_by_scan() -> list[tuple[str, tuple, Any]]:
    """Every live Triton autotuner over a unicl kernel, found by the garbage collector: the fallback when the
    launchers did not go through the recorded `unicl.loss.kernels.tuning.tuned` (a refactor that bound it early)."""
    import triton

    from unicl.loss.kernels import one_pass, tiles, two_pass

    ours = {id(spec.kernel) for spec in (one_pass.PARTIALS, one_pass.WEIGHTS, tiles.LSE, two_pass.GRAD)}
    autotuner = getattr(triton.runtime, "Autotuner", None)
    return [
        ("scan", (), obj)
        for obj in gc.get_objects()
        if autotuner is not None and isinstance(obj, autotuner) and id(_jit_function(obj)) in ours
    ]


# --- one million ---------------------------------------------------------------------------------------------------


def one_million(args: argparse.Namespace) -> int:
    from unicl import unicl_loss

    report = Report(args.json)
    n, d = args.n, args.d
    report.data["shape"] = {"n": n, "d": d, "dtype": "bfloat16", "backend": args.backend, "labels": "mixed"}
    generator = torch.Generator(device="cuda").manual_seed(0)
    image = torch.randn(n, d, device="cuda", generator=generator).to(torch.bfloat16).requires_grad_()
    text = torch.randn(n, d, device="cuda", generator=generator).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(-1, 1000, (n,), device="cuda", generator=generator)

    def call() -> dict[str, float]:
        image.grad = text.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        start = time.perf_counter()
        loss = unicl_loss(image, text, labels, 20.0, backend=args.backend)
        loss.backward()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        extra = torch.cuda.max_memory_allocated() - baseline
        return {
            "seconds": seconds,
            "tflops_at_8N2D": 8 * n * n * d / seconds / 1e12,
            "peak_extra_gib": extra / 2**30,
            "gradients_gib": 2 * n * d * 2 / 2**30,
            "loss": float(loss),
        }

    report.measure("first call (includes compiling and autotuning)", call)
    report.measure("second call", call)
    return report.exit_status()


# --- command line --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    probe = commands.add_parser("ceilings", help="versions, copy bandwidth, GEMM rates, the backward's GEMM shapes")
    probe.add_argument("--copy-gib", type=float, default=4.0, help="size of the copy (default 4 GiB)")
    probe.add_argument("--gemm-side", type=int, default=8192, help="side of the square GEMMs (default 8192)")
    probe.add_argument("--n", type=int, default=65536, help="N of the backward GEMM shapes (default 65,536)")
    probe.add_argument("--d", type=int, default=512, help="D of the backward GEMM shapes (default 512)")
    probe.set_defaults(run=ceilings)
    kernel = commands.add_parser("kernels", help="per-kernel timings with the chosen tiles, registers and spills")
    kernel.add_argument("--n", type=int, default=65536)
    kernel.add_argument("--d", type=int, default=512)
    kernel.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    kernel.add_argument(
        "--device",
        default="cuda",
        help="cuda (default); cpu runs the kernels through Triton's interpreter (smoke test)",
    )
    kernel.set_defaults(run=kernels)
    million = commands.add_parser("one-million", help="one N = 2^20 forward+backward and its peak extra memory")
    million.add_argument("--n", type=int, default=1 << 20)
    million.add_argument("--d", type=int, default=512)
    million.add_argument("--backend", default="triton")
    million.set_defaults(run=one_million)
    for sub in (probe, kernel, million):
        sub.add_argument("--json", type=Path, help="write the results here as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if getattr(args, "device", "cuda") == "cuda" and not torch.cuda.is_available():
        print(f"gpu_probes.py {args.command}: no CUDA device here", file=sys.stderr)
        return 1
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
