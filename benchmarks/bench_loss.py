"""Benchmark UniCL loss implementations side by side: time, peak extra memory and throughput against N.

One run benchmarks one objective (``--objective``): UniCL's softmax loss (unicl's backends, open_clip's ClipLoss,
Inf-CL, SupCon) or the sigmoid loss (unicl's sigmoid backends, open_clip's SigLipLoss). Every provider runs on the
same inputs in one process tree. Before any timing, each provider's value is compared with unicl's dense backend of
that objective on a small batch (the correctness gate). Timing is the median over repeats after a
warm-up (``triton.testing.do_bench`` on CUDA, or three CUDA-event timed runs where one run takes over 0.25 s;
``time.perf_counter`` on the CPU). Peak extra memory is the CUDA
allocator's peak above the inputs on GPU; on the CPU each measurement runs in a forked child whose peak resident
set above the inputs is read from ``/proc`` (and whose address space is capped, so running out of memory is
recorded as ``OOM`` instead of crashing the machine). Throughput counts ``8·N²·D`` flops for forward+backward and
``2·N²·D`` for forward only.

On the CPU every float32 row also gets a roofline, measured in the same child process right after the loss: the
minimum work (``8·N²·D`` flops and ``4·N²`` exponentials for forward+backward, ``2·N²·D`` and ``2·N²`` for forward;
the sigmoid objective's ``3·N²`` and ``2·N²`` transcendentals, see docs/objective.md)
at the rate of one large float32 matmul and of one large in-place ``exp_``, each the fastest of five calls.
``roofline_fraction`` is the roofline time over the fastest of the loss's timed runs (best against best, since this
kind of shared machine varies by 10-20% from call to call; 1.0 would be a loss with no overhead beyond those two
kernels).

Rectangular batches (``--shape``): ``N`` images against ``M != N`` texts with labels of their own, for the providers
that take ``text_labels`` (unicl's): ``captions`` gives each image ``--captions-per-image`` K captions (``M = K·N``,
all K its positives), ``class-bank`` contrasts the images (random class labels) with one prompt per class of
``--classes`` C (``M = C``). The labels column then names the shape (``captions:4``, ``class-bank:21841``), the M
column holds the texts, and the flop and roofline counts use ``N·M`` entries.

Examples:
    python benchmarks/bench_loss.py --quick --out benchmarks/results/cpu
    python benchmarks/bench_loss.py --objective sigmoid --n 8192 --labels unique --out benchmarks/results/cpu-sigmoid
    python benchmarks/bench_loss.py --device cuda --n 1024 4096 16384 65536 --dtype bfloat16 --out results/h200
    python benchmarks/bench_loss.py --shape captions --n 4096 --passes forward+backward --out results/rectangular
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import functools
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plot_loss import plot_results
from providers import PROVIDERS, REFERENCE_PROVIDERS, Provider

import unicl
from unicl.loss.shapes import caption_groups, class_bank

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
PASSES = ("forward", "forward+backward")
#: Dense bf16 peaks (TFLOP/s) used for the "fraction of peak" column: the H200 figure is the rate of large bf16
#: matmuls measured in the notes this project was designed from (docs/objective.md, "Cost"; no H200 run of this
#: repository has measured it yet); the H100's is NVIDIA's dense datasheet figure.
PEAK_TFLOPS = {"H200": {"bfloat16": 790.0, "float16": 790.0}, "H100": {"bfloat16": 989.0, "float16": 989.0}}
GATE_N = 64
#: Transcendentals per entry of ``S`` at the minimum, per objective and pass (docs/objective.md, "Cost").
TRANSCENDENTALS = {
    "softmax": {"forward": 2, "forward+backward": 4},
    "sigmoid": {"forward": 2, "forward+backward": 3},
}
#: The logit scale of each objective's runs when ``--scale`` is not given: CLIP's and SigLIP's initialisations.
DEFAULT_SCALES = {"softmax": 1 / 0.07, "sigmoid": 10.0}


@dataclass
class Row:
    """One measurement in the long-format CSV."""

    date: str
    device: str
    torch: str
    triton: str
    unicl: str
    provider: str
    objective: str
    n: int
    m: int
    d: int
    dtype: str
    labels: str
    pass_: str
    status: str
    time_ms: float = math.nan
    time_ms_q20: float = math.nan
    time_ms_q80: float = math.nan
    time_ms_best: float = math.nan
    extra_memory_mb: float = math.nan
    tflops: float = math.nan
    peak_fraction: float = math.nan
    roofline_ms: float = math.nan
    roofline_fraction: float = math.nan
    note: str = ""


def device_name(device: torch.device) -> str:
    """A human name for the device: the GPU's name, or the CPU model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({os.cpu_count()} cores)"


#: The rectangular shapes of ``--shape``: each labels kind ``"<shape>:<count>"`` names one.
SHAPES = ("captions", "class-bank")


def shape_labels(shape: str, captions_per_image: int, classes: int) -> str:
    """The labels kind of a rectangular shape: ``"captions:K"`` or ``"class-bank:C"``."""
    return f"{shape}:{captions_per_image if shape == 'captions' else classes}"


def text_count(labels: str, n: int) -> int:
    """``M``, the texts of a batch of ``n`` images with this labels kind (``n`` for the square kinds)."""
    shape, _, count = labels.partition(":")
    if shape == "captions":
        return int(count) * n
    return int(count) if shape == "class-bank" else n


def make_inputs(n: int, d: int, dtype: torch.dtype, device: torch.device, labels: str, seed: int = 0):
    """Random features and labels: ``"unique"`` (every pair unique) or ``"mixed"`` (half classes, half pairs), or a
    rectangular shape (``"captions:K"``, ``"class-bank:C"``, see `SHAPES`), whose labels come back as
    ``(labels [N], text_labels [M])``."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    image = torch.randn(n, d, generator=generator).to(device=device, dtype=dtype).requires_grad_()
    text = torch.randn(text_count(labels, n), d, generator=generator).to(device=device, dtype=dtype).requires_grad_()
    shape, _, count = labels.partition(":")
    if shape == "captions":
        y, text_y = caption_groups(torch.full((n,), int(count)))
        return image, text, (y.to(device), text_y.to(device))
    if shape == "class-bank":
        y = torch.randint(0, int(count), (n,), generator=generator)
        return image, text, (y.to(device), class_bank(int(count), device))
    if labels == "unique":
        y = torch.full((n,), -1, dtype=torch.long)
    else:
        y = torch.randint(0, max(1, n // 8), (n,), generator=generator)
        y[torch.rand(n, generator=generator) < 0.5] = -1
    return image, text, y.to(device)


def with_text_labels(loss_fn, labels):
    """``loss_fn`` and the labels to call it with: a rectangular batch's ``(labels, text_labels)`` become the labels
    argument and a bound ``text_labels=``."""
    if isinstance(labels, tuple):
        return functools.partial(loss_fn, text_labels=labels[1]), labels[0]
    return loss_fn, labels


def run_once(loss_fn, image, text, labels, scale: float, with_backward: bool) -> None:
    loss = loss_fn(image, text, labels, scale)
    if with_backward:
        image.grad = text.grad = None
        loss.backward()


#: A CUDA run longer than this (seconds) is timed over `LONG_RUN_REPEATS` plain runs instead of
#: ``triton.testing.do_bench``, which makes at least eight calls (one, five to estimate, one warm-up, one timed):
#: at N = 262,144 the chunked backend's forward+backward takes seconds, and a GPU session has minutes.
LONG_RUN_SECONDS = 0.25
LONG_RUN_REPEATS = 3


def measure_cuda(loss_fn, image, text, labels, scale, with_backward, repeats):
    import triton.testing

    torch.cuda.synchronize()
    run_once(loss_fn, image, text, labels, scale, with_backward)
    image.grad = text.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    start = time.perf_counter()
    run_once(loss_fn, image, text, labels, scale, with_backward)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    extra = (torch.cuda.max_memory_allocated() - baseline) / 2**20
    if seconds > LONG_RUN_SECONDS:
        times_ms = []
        for _ in range(LONG_RUN_REPEATS):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            run_once(loss_fn, image, text, labels, scale, with_backward)
            end.record()
            end.synchronize()
            times_ms.append(begin.elapsed_time(end))
        low, high = min(times_ms), max(times_ms)
        # Three runs have no 20% and 80% quantiles: those columns get the fastest and the slowest run.
        return [statistics.median(times_ms), low, high, low], extra
    times = triton.testing.do_bench(
        lambda: run_once(loss_fn, image, text, labels, scale, with_backward),
        warmup=25,
        rep=max(100, 20 * repeats),
        quantiles=[0.5, 0.2, 0.8, 0.0],
    )
    return list(times), extra


def _resident_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return math.nan


def measure_cpu(loss_fn, image, text, labels, scale, with_backward, repeats):
    """Peak resident memory above the inputs during one run, then ``repeats`` timed runs after it."""
    baseline = _resident_mb("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current resident set
    run_once(loss_fn, image, text, labels, scale, with_backward)
    extra = _resident_mb("VmHWM:") - baseline
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once(loss_fn, image, text, labels, scale, with_backward)
        times.append((time.perf_counter() - start) * 1e3)
    quantiles = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return [statistics.median(times), quantiles[0], quantiles[3], min(times)], extra


#: Largest side of the probe matmul and of the probe exponential (as a square) for the CPU roofline: 8,192 holds
#: 256 MiB of float32, and larger products run no faster.
ROOFLINE_PROBE_SIDE = 8192


def _best_seconds(fn, repeats: int = 5, reset=None) -> float:
    """Fastest of ``repeats`` timed calls of ``fn`` after one untimed call; ``reset`` runs untimed before each."""
    times = []
    for _ in range(repeats + 1):
        if reset is not None:
            reset()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def cpu_roofline_ms(n: int, d: int, with_backward: bool, objective: str = "softmax", m: int | None = None) -> float:
    """The minimum time of the loss on this CPU: its matmul flops at one large float32 matmul's rate plus its
    transcendentals (`TRANSCENDENTALS`) at one large in-place ``exp_``'s rate, both measured now; ``m`` texts
    (``None``: ``n``)."""
    m = n if m is None else m
    side = min(max(n, m), ROOFLINE_PROBE_SIDE)
    left, right = torch.randn(side, d), torch.randn(d, side)
    product = torch.empty(side, side)
    matmul_rate = 2 * side * side * d / _best_seconds(functools.partial(torch.mm, left, right, out=product))
    del left, right
    # Exponents in [-20, 0], as the loss's shifted logits are; refilled before each call so values stay bounded.
    source = torch.rand(side, side).mul_(-20)
    exp_rate = side * side / _best_seconds(product.exp_, reset=lambda: product.copy_(source))
    passes = 4 if with_backward else 1
    per_entry = TRANSCENDENTALS[objective]["forward+backward" if with_backward else "forward"]
    return (passes * 2 * n * m * d / matmul_rate + per_entry * n * m / exp_rate) * 1e3


def _measure(provider: Provider, n, d, dtype, device, labels, with_backward, repeats, scale):
    """Build the inputs and measure; returns ``(status, [median, q20, q80] ms, extra MB, roofline ms)``."""
    failed = [math.nan] * 4, math.nan, math.nan
    try:
        image, text, y = make_inputs(n, d, dtype, device, labels)
        loss_fn, y = with_text_labels(provider.make(), y)
        if device.type == "cuda":
            times, extra = measure_cuda(loss_fn, image, text, y, scale, with_backward, repeats)
            return "ok", times, extra, math.nan
        times, extra = measure_cpu(loss_fn, image, text, y, scale, with_backward, repeats)
        del image, text
        roofline = math.nan
        if dtype == torch.float32:
            roofline = cpu_roofline_ms(n, d, with_backward, provider.objective, text_count(labels, n))
        return "ok", times, extra, roofline
    except torch.OutOfMemoryError:
        return "OOM", *failed
    except RuntimeError as error:
        if "allocate" in str(error) or "out of memory" in str(error):
            return "OOM", *failed
        return f"error: {str(error).splitlines()[0][:120]}", *failed
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _child(connection, memory_cap_bytes, *args) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_cap_bytes, memory_cap_bytes))
    connection.send(_measure(*args))
    connection.close()


def measure_in_child(*args):
    """Run `_measure` in a forked child with its address space capped near the free memory."""
    available = _meminfo_bytes("MemAvailable:")
    current = _resident_mb("VmSize:") * 2**20
    cap = int(current + 0.85 * available)
    context = _child_context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, cap, *args))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        result = (
            "OOM" if process.exitcode in (None, -9) else f"error: child exit {process.exitcode}",
            [math.nan] * 4,
            math.nan,
            math.nan,
        )
    process.join()
    return result


def _child_context():
    """A fork server that imported torch but never ran an op: forking a process whose OpenMP pool is running
    deadlocks, and spawning a fresh interpreter per measurement would cost seconds each."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "unicl", "providers"])
    return context


def _meminfo_bytes(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/meminfo")


def correctness_gate(
    providers, device, dtype, labels_kinds, scale, objective: str = "softmax"
) -> dict[tuple[str, str], str]:
    """Compare every provider's value with unicl's dense backend of ``objective`` on a small batch; returns a note
    per pair."""
    tolerance = 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2
    verdicts = {}
    reference_fn = PROVIDERS[REFERENCE_PROVIDERS[objective]].make()
    for labels in labels_kinds:
        image, text, y = make_inputs(GATE_N, 64, dtype, device, labels, seed=1)
        bound_reference, reference_labels = with_text_labels(reference_fn, y)
        with torch.no_grad():
            reference = float(bound_reference(image, text, reference_labels, scale))
        for provider in providers:
            if provider.unique_labels_only and labels != "unique":
                continue
            try:
                loss_fn, provider_labels = with_text_labels(provider.make(), y)
                with torch.no_grad():
                    value = float(loss_fn(image, text, provider_labels, scale))
            except Exception as error:
                verdicts[provider.name, labels] = f"gate error: {type(error).__name__}: {error}"[:160]
                continue
            relative = abs(value - reference) / max(abs(reference), 1e-12)
            agrees = relative <= tolerance
            if provider.same_objective and not agrees:
                raise SystemExit(f"correctness gate: {provider.name} gives {value:.6g}, dense gives {reference:.6g}")
            verdicts[provider.name, labels] = (
                f"matches dense (rel. diff {relative:.1e})"
                if agrees
                else f"differs from dense by {relative:.1e} (different objective)"
            )
    return verdicts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small CPU sweep, under 2 minutes")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latest"), help="folder for CSV and PNG")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, nargs="+", help="batch sizes (default: powers of two)")
    parser.add_argument("--d", type=int, nargs="+", default=[512], help="feature dimensions")
    parser.add_argument("--dtype", nargs="+", default=None, choices=sorted(DTYPES))
    parser.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    parser.add_argument("--labels", nargs="+", default=["mixed", "unique"], choices=["mixed", "unique"])
    parser.add_argument(
        "--shape",
        choices=SHAPES,
        default=None,
        help="a rectangular batch instead of --labels: N images against K captions each, or against a class bank",
    )
    parser.add_argument("--captions-per-image", type=int, default=4, help="K of --shape captions (M = K·N)")
    parser.add_argument("--classes", type=int, default=21841, help="C of --shape class-bank (M = C)")
    parser.add_argument("--providers", nargs="+", default=None, choices=sorted(PROVIDERS))
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats on the CPU after a warm-up run")
    parser.add_argument(
        "--objective", default="softmax", choices=sorted(REFERENCE_PROVIDERS), help="the loss the providers compute"
    )
    parser.add_argument(
        "--scale", type=float, default=None, help="logit scale (default: 1/0.07 for softmax, 10 for sigmoid)"
    )
    parser.add_argument("--no-plot", action="store_true", help="write the CSV only (plot it later with plot_loss.py)")
    parser.add_argument(
        "--date",
        help="the run's date in the CSV (default: now, UTC); give several invocations one date and plot_loss.py "
        "draws them as one run, since it plots the newest date of each device",
    )
    return parser.parse_args(argv)


def plan(args: argparse.Namespace, device: torch.device) -> tuple[list[Provider], list[int], list[str]]:
    """Providers, batch sizes and dtypes for this run, filled in from ``--quick`` and the device."""
    if args.providers:
        providers = [PROVIDERS[name] for name in args.providers]
        others = [p.name for p in providers if p.objective != args.objective]
        if others:
            raise SystemExit(f"--providers {' '.join(others)}: not the {args.objective} objective (see --objective)")
    elif device.type == "cuda":
        providers = [p for p in PROVIDERS.values() if p.objective == args.objective]
    else:
        # torch.compile on the CPU spends minutes in the C++ compiler; ask for it by name.
        providers = [
            p
            for p in PROVIDERS.values()
            if not p.gpu_only and p.name != "torch-compile-dense" and p.objective == args.objective
        ]
    providers = [p for p in providers if device.type == "cuda" or not p.gpu_only]
    if args.shape:
        if args.providers and any(not p.takes_text_labels for p in providers):
            others = " ".join(p.name for p in providers if not p.takes_text_labels)
            raise SystemExit(f"--providers {others}: takes no text_labels, so no --shape {args.shape}")
        for name, value in (("--captions-per-image", args.captions_per_image), ("--classes", args.classes)):
            if value < 1:
                raise SystemExit(f"{name} must be >= 1; got {value}")
        providers = [p for p in providers if p.takes_text_labels]
        args.labels = [shape_labels(args.shape, args.captions_per_image, args.classes)]
    available = []
    for provider in providers:
        try:
            provider.make()
            available.append(provider)
        except ImportError as error:
            print(f"skipping {provider.name}: {error} (pip install -e '.[bench]')", file=sys.stderr)
    providers = available
    if args.n:
        sizes = args.n
    elif args.quick:
        sizes = [256, 1024, 4096]
    else:
        sizes = [2**k for k in range(10, 21 if device.type == "cuda" else 17)]
    dtypes = args.dtype or (["bfloat16"] if device.type == "cuda" else ["float32"])
    if args.quick:
        args.repeats = min(args.repeats, 3)
    return providers, sizes, dtypes


def main(argv=None) -> list[Row]:
    args = parse_args(argv)
    if args.scale is None:
        args.scale = DEFAULT_SCALES[args.objective]
    device = torch.device(args.device)
    providers, sizes, dtypes = plan(args, device)
    name = device_name(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    common = {
        "date": args.date or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "unicl": unicl.__version__,
    }
    peak = next((peaks for key, peaks in PEAK_TFLOPS.items() if key in name), {})
    rows: list[Row] = []
    csv_path = args.out / "bench_loss.csv"
    skipped_oom: set[tuple] = set()
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        verdicts = correctness_gate(providers, device, dtype, args.labels, args.scale, args.objective)
        jobs = [
            (provider, labels, n, d, pass_)
            for provider in providers
            for labels in args.labels
            if not (provider.unique_labels_only and labels != "unique")
            for d in args.d
            for pass_ in args.passes
            for n in sizes
        ]
        for provider, labels, n, d, pass_ in tqdm(jobs, desc=f"bench {dtype_name}", file=sys.stderr):
            key = (provider.name, labels, d, pass_)
            note = "; ".join(x for x in (provider.note, verdicts.get((provider.name, labels), "")) if x)
            row = Row(
                **common,
                provider=provider.name,
                objective=provider.objective,
                n=n,
                m=text_count(labels, n),
                d=d,
                dtype=dtype_name,
                labels=labels,
                pass_=pass_,
                status="OOM",
                note=note,
            )
            if key not in skipped_oom:  # a larger N than one that ran out of memory is not tried
                with_backward = pass_ == "forward+backward"
                measure = _measure if device.type == "cuda" else measure_in_child
                args_ = (provider, n, d, dtype, device, labels, with_backward, args.repeats, args.scale)
                row.status, times, row.extra_memory_mb, row.roofline_ms = measure(*args_)
                row.time_ms, row.time_ms_q20, row.time_ms_q80, row.time_ms_best = times
            if row.status == "OOM":
                skipped_oom.add(key)
            elif row.status == "ok":
                flops = (8 if pass_ == "forward+backward" else 2) * n * row.m * d
                row.tflops = flops / (row.time_ms * 1e-3) / 1e12
                if dtype_name in peak:
                    row.peak_fraction = row.tflops / peak[dtype_name]
                row.roofline_fraction = row.roofline_ms / row.time_ms_best
            rows.append(row)
            append_csv(row, csv_path)  # as it goes, so a run stopped by a time limit keeps what it measured
    print(format_table(rows))
    for path in [] if args.no_plot else plot_results(csv_path, args.out):
        print(f"wrote {path}")
    print(f"wrote {csv_path}")
    return rows


def append_csv(row: Any, csv_path: Path) -> None:
    """Append one dataclass row (its fields are the columns) to a long-format CSV, writing the header first into a
    new file (shared by the benchmarks)."""
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not csv_path.exists()
    with csv_path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(row)])
        if new_file:
            writer.writeheader()
        writer.writerow(asdict(row))


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'provider':<22}{'labels':<18}{'N':>8}{'M':>8}{'D':>6} {'dtype':<9}{'pass':<17}"
        f"{'time ms':>10}{'extra MB':>10}{'TFLOP/s':>9}{'roofline':>9}  status"
    )
    lines = [f"device: {rows[0].device}; torch {rows[0].torch}, triton {rows[0].triton}" if rows else "", header]
    for r in rows:
        lines.append(
            f"{r.provider:<22}{r.labels:<18}{r.n:>8}{r.m:>8}{r.d:>6} {r.dtype:<9}{r.pass_:<17}{r.time_ms:>10.2f}"
            f"{r.extra_memory_mb:>10.1f}{r.tflops:>9.3f}{r.roofline_fraction:>9.2f}  {r.status}"
        )
    notes = sorted({f"{r.provider} ({r.labels} labels): {r.note}" for r in rows if r.note})
    return "\n".join([*lines, "", "notes:", *notes])


if __name__ == "__main__":
    main()
