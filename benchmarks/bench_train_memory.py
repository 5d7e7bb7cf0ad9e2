"""Peak extra memory and time per sample of one training step against the global batch: plain and gradient-cached.

For each global batch ``B`` and each mode, one training step of a small preset (``unicl_tiny`` by default: 32 px
images, 16-token texts, ``D = 64``) runs on the CPU on random inputs of the right shapes and dtypes: ``[B, 3, H, W]``
float32 images, ``[B, L]`` int64 token ids with an attention mask of random lengths, and ``[B]`` labels of which half
are classes that repeat in the batch (about eight samples each) and half are unique image-text pairs (``-1``), as
UniCL batches mix them. The loss is ``unicl.UniCLLoss(backend=--loss-backend)`` (``auto``, as ``unicl-train`` uses:
the dense backend up to ``B = 1,024``, the chunked one above).

* ``plain``: ``loss_fn(**model(images, input_ids, attention_mask), labels=labels).backward()``;
* ``cached``: ``unicl.training.cached_backward(model, images, texts, labels, loss_fn=..., micro_batch=M)``.

A step is the forward and the backward only: the optimiser step is excluded, since its cost is a constant per
parameter, the same in both modes and at every ``B`` (``unicl-train`` runs ``AdamW`` after either).

What is measured, in a child process forked per ``(B, mode, M)`` from a parent that imported torch but never ran an
operation (so every measurement starts from a fresh heap, and no OpenMP pool is forked):

1. The model, the inputs and the loss are built; one warm-up step allocates every parameter's ``.grad`` (zeroed in
   place afterwards, not freed), torch's thread pool and one-off buffers.
2. ``extra_memory_mb``: the process's peak resident set during the next step above its resident set just before
   it. The peak is the kernel's high-water mark ``VmHWM``, reset to the current resident set by writing ``5`` to
   ``/proc/self/clear_refs`` right before the step; the baseline is ``VmRSS`` after ``gc.collect()`` and glibc's
   ``malloc_trim(0)``. The trim matters: glibc keeps memory freed by the warm-up step mapped in its heap, and the
   measured step would reuse those pages without raising the high-water mark, so without the trim a step's
   activations could go uncounted. After the trim every page the step touches is counted, which is the memory a
   machine must have for the step (allocator overhead and fragmentation included).
3. ``tensor_peak_mb``, the cross-check by a second, independent method: another step under a
   ``TorchDispatchMode`` that adds up the bytes of every tensor storage an operation creates (an output sharing no
   storage with the operation's inputs) and subtracts them when the storage is freed (a weak reference's callback);
   its maximum over the step is the peak of live tensor bytes above what existed before. It sees neither allocator
   overhead nor buffers a kernel allocates and frees inside itself, so it reads somewhat below ``extra_memory_mb``;
   the two agreeing on the scaling (and the resident peak being the larger) is what makes the resident figure
   trustworthy.
4. ``seconds_per_step``: the median of ``--repeats`` timed steps (``time.perf_counter``, gradients zeroed in place
   outside the timing) after those; ``microseconds_per_sample`` is that over ``B``. ``threads`` is
   ``torch.set_num_threads`` in the child. ``cpu_seconds_per_step`` and ``cpu_microseconds_per_sample`` are the
   same for the process's CPU time (``time.process_time``, all its threads): on a machine shared with other jobs the
   wall time includes the time the step waited for a core, the CPU time does not, so with one thread it is the
   steadier measure of the step's work (it still feels other jobs through shared caches and memory bandwidth).

``features_mb`` is the size of the whole batch's ``O(B·D)`` tensors that gradient caching must hold however small its
micro-batch: the image and text features and their gradients, ``4·B·D`` float32 values. ``cached`` is expected to
be flat in ``B`` apart from it (and from the loss's own memory: ``O(B²)`` with the dense backend, ``O(B·D)`` plus a
block with the chunked one), ``plain`` to grow as ``B`` times the activations of one sample.

Before each job the parent predicts its peak from the largest smaller batch of the same mode (linearly in ``B``)
and skips it, with the reason printed and written to the CSV's ``note``, if that exceeds ``--memory-fraction`` of the
available memory; each child's address space is also capped near the available memory, so running out is recorded
as ``killed`` instead of swapping or calling the OOM killer on other jobs. MB means 2^20 bytes.

Outputs in ``--out``: ``train_memory.csv``, ``train_memory.png`` (memory against ``B``, log-log; time per sample
against ``B``) and ``README.md`` (machine, torch, load average, the command line; ``--append`` adds a run to them).

Examples:
    python benchmarks/bench_train_memory.py --quick --out /tmp/train-memory
    python benchmarks/bench_train_memory.py --threads 1 --out benchmarks/results/train-memory-cpu
    python benchmarks/bench_train_memory.py --batches 4096 --micro-batch 8 128 512 --modes cached --append \\
        --threads 1 --out benchmarks/results/train-memory-cpu
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import datetime as dt
import gc
import math
import multiprocessing
import os
import resource
import shlex
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_loss import _meminfo_bytes, _resident_mb, append_csv, device_name

import unicl
from unicl.loss.backends import BACKENDS, resolve_backend
from unicl.models.presets import get_config
from unicl.training import cached_backward

MODES = ("plain", "cached")
DEFAULT_BATCHES = [2**k for k in range(6, 15)]  # 64 ... 16,384
QUICK_BATCHES = [16, 128]
QUICK_MICRO_BATCH = 8
CSV_NAME = "train_memory.csv"
PLOT_NAME = "train_memory.png"


@dataclass
class Row:
    """One ``(B, mode, M)`` measurement of the CSV; the first nine columns are the ones the docs read."""

    batch: int
    mode: str
    micro_batch: int | str
    extra_memory_mb: float
    features_mb: float
    seconds_per_step: float
    microseconds_per_sample: float
    threads: int
    machine: str
    cpu_seconds_per_step: float = math.nan
    cpu_microseconds_per_sample: float = math.nan
    tensor_peak_mb: float = math.nan
    loss_backend: str = ""
    model: str = ""
    repeats: int = 0
    load_1min: float = math.nan
    torch: str = ""
    date: str = ""
    note: str = ""


# --- memory ---------------------------------------------------------------------------------------------------------


def _trim_heap() -> None:
    """Give the pages glibc holds for freed memory back to the kernel (nothing where libc has no ``malloc_trim``)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages created under this mode and still alive; ``peak`` is their maximum.

    A storage counts as created by an operation when it is one of the operation's outputs and none of its inputs
    (views and in-place results share an input's storage, so tensors that existed before, such as parameters, their
    ``.grad`` or the batch, are never counted). It stops counting when its last reference dies.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: dict[int, tuple[weakref.ref, int]] = {}

    def _forget(self, key: int) -> None:
        entry = self._tracked.pop(key, None)
        if entry is not None:
            self.live -= entry[1]

    def _callback(self, key: int) -> Callable[[weakref.ref], None]:
        return lambda _: self._forget(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        outputs = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(outputs):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self._tracked or storage.nbytes() == 0:
                continue
            self._tracked[key] = (weakref.ref(storage, self._callback(key)), storage.nbytes())
            self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        return outputs


# --- one measurement (in a child process) ---------------------------------------------------------------------------


@dataclass
class Job:
    """What one child measures."""

    batch: int
    mode: str
    micro_batch: int | None
    model: str
    loss_backend: str
    threads: int
    repeats: int
    seed: int


def make_batch(config: Any, batch: int, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Random inputs of a UniCL step for a model ``config``.

    Returns:
        ``[B, C, H, W]`` float32 images, ``{"input_ids": [B, L] int64, "attention_mask": [B, L] int64}`` (each text
        1 to ``L`` tokens long) and ``[B]`` int64 labels: half of them classes of about eight samples each, the
        other half ``-1`` (unique image-text pairs).
    """
    generator = torch.Generator().manual_seed(seed)
    side, length = config.image.image_size, config.text.context_length
    images = torch.randn(batch, config.image.in_chans, side, side, generator=generator)
    ids = torch.randint(0, config.text.vocab_size, (batch, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch, 1), generator=generator)
    mask = (torch.arange(length).unsqueeze(0) < lengths).long()
    labels = torch.randint(0, max(1, batch // 16), (batch,), generator=generator)
    labels[torch.rand(batch, generator=generator) < 0.5] = -1
    return images, {"input_ids": ids, "attention_mask": mask}, labels


def make_step(job: Job) -> tuple[Callable[[], None], torch.nn.Module, str]:
    """The step to measure (forward and backward, no optimiser), its model, and the loss backend it resolves to."""
    torch.manual_seed(job.seed)
    model = unicl.create_model(job.model)
    model.train()
    loss_fn = unicl.UniCLLoss(backend=job.loss_backend)
    images, texts, labels = make_batch(model.config, job.batch, job.seed)
    backend = resolve_backend(job.loss_backend, images.device, torch.float32, job.batch, job.batch)

    def plain() -> None:
        loss_fn(**model(images, texts["input_ids"], texts["attention_mask"]), labels=labels).backward()

    def cached() -> None:
        cached_backward(model, images, texts, labels, loss_fn=loss_fn, micro_batch=job.micro_batch or job.batch)

    return (plain if job.mode == "plain" else cached), model, backend


def _zero_grads(model: torch.nn.Module) -> None:
    # In place, so the gradients stay allocated: they are held before the step, not part of its extra memory.
    model.zero_grad(set_to_none=False)


def measure(job: Job) -> dict[str, Any]:
    """Warm up, then the resident peak of one step, the timed steps and the live-tensor peak of one more step."""
    torch.set_num_threads(job.threads)
    step, model, backend = make_step(job)
    step()
    _zero_grads(model)

    gc.collect()
    _trim_heap()
    baseline = _resident_mb("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark VmHWM restarts from the current VmRSS
    step()
    extra = _resident_mb("VmHWM:") - baseline
    _zero_grads(model)

    times, cpu_times = [], []
    for _ in range(job.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        _zero_grads(model)

    gc.collect()
    with LiveTensorBytes() as counter:
        step()
    return {
        "extra_memory_mb": extra,
        "seconds_per_step": statistics.median(times),
        "cpu_seconds_per_step": statistics.median(cpu_times),
        "tensor_peak_mb": counter.peak / 2**20,
        "loss_backend": backend,
    }


def _child(connection: Any, memory_cap_bytes: int, job: Job) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_cap_bytes, memory_cap_bytes))
    try:
        result: dict[str, Any] | str = measure(job)
    except (MemoryError, RuntimeError) as error:  # torch reports a failed allocation as a RuntimeError
        result = f"failed: {str(error).splitlines()[0][:160]}"
    connection.send(result)
    connection.close()


def measure_in_child(job: Job) -> dict[str, Any] | str:
    """Run `measure` in a forked child with its address space capped near the available memory.

    Returns:
        The measurements, or a one-line reason why there are none.
    """
    cap = int(_resident_mb("VmSize:") * 2**20 + 0.9 * _meminfo_bytes("MemAvailable:"))
    # The parent has imported torch but run no operation, so forking is safe (no OpenMP pool to deadlock on) and
    # each child starts from the same fresh heap.
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, cap, job))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:
        result = f"killed (exit code {process.exitcode})"
    process.join()
    return result


# --- the sweep ------------------------------------------------------------------------------------------------------


def features_mb(batch: int, dim: int) -> float:
    """MB of the whole batch's image and text features and their gradients: ``4·B·D`` float32 values."""
    return 4 * batch * dim * 4 / 2**20


def predicted_peak_mb(done: list[Row], job: Job) -> float | None:
    """The job's peak extrapolated linearly in ``B`` from the largest smaller batch measured in the same setting."""
    same = [
        r
        for r in done
        if r.mode == job.mode
        and str(r.micro_batch) == str(job.micro_batch or "")
        and r.batch < job.batch
        and math.isfinite(r.extra_memory_mb)
    ]
    if not same:
        return None
    largest = max(same, key=lambda r: r.batch)
    return max(largest.extra_memory_mb, 0.0) * job.batch / largest.batch


def jobs_for(args: argparse.Namespace) -> list[Job]:
    jobs = []
    for batch in args.batches:
        for mode in args.modes:
            for micro_batch in args.micro_batch if mode == "cached" else [None]:
                jobs.append(
                    Job(batch, mode, micro_batch, args.model, args.loss_backend, args.threads, args.repeats, args.seed)
                )
    return jobs


def run(args: argparse.Namespace) -> list[Row]:
    """Measure every job, appending each row to the CSV as it comes (a stopped run keeps what it measured)."""
    machine = device_name(torch.device("cpu"))
    dim = get_config(args.model).embed_dim  # from the preset: building the model here would run operations
    csv_path = args.out / CSV_NAME
    if not args.append and csv_path.exists():
        csv_path.unlink()
    rows: list[Row] = []
    for job in jobs_for(args):
        row = Row(
            batch=job.batch,
            mode=job.mode,
            micro_batch=job.micro_batch or "",
            extra_memory_mb=math.nan,
            features_mb=features_mb(job.batch, dim),
            seconds_per_step=math.nan,
            microseconds_per_sample=math.nan,
            threads=job.threads,
            machine=machine,
            model=job.model,
            repeats=job.repeats,
            load_1min=os.getloadavg()[0],
            torch=torch.__version__,
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        label = f"B={job.batch:>6} {job.mode:<6}" + (f" M={job.micro_batch}" if job.micro_batch else "")
        available = _meminfo_bytes("MemAvailable:") / 2**20
        predicted = predicted_peak_mb(rows, job)
        if predicted is not None and predicted > args.memory_fraction * available:
            row.note = (
                f"skipped: predicted peak {predicted:.0f} MB > {args.memory_fraction:g} of the {available:.0f} MB "
                "available"
            )
        else:
            result = measure_in_child(job)
            if isinstance(result, str):
                row.note = result
            else:
                row.extra_memory_mb = result["extra_memory_mb"]
                row.tensor_peak_mb = result["tensor_peak_mb"]
                row.seconds_per_step = result["seconds_per_step"]
                row.microseconds_per_sample = result["seconds_per_step"] / job.batch * 1e6
                row.cpu_seconds_per_step = result["cpu_seconds_per_step"]
                row.cpu_microseconds_per_sample = result["cpu_seconds_per_step"] / job.batch * 1e6
                row.loss_backend = result["loss_backend"]
        print(
            f"{label:<24} extra {row.extra_memory_mb:9.1f} MB  tensors {row.tensor_peak_mb:9.1f} MB  "
            f"features {row.features_mb:7.2f} MB  {row.microseconds_per_sample:9.1f} us/sample "
            f"(CPU {row.cpu_microseconds_per_sample:7.1f})  "
            f"load {row.load_1min:.2f}  {row.note}",
            flush=True,
        )
        rows.append(row)
        append_csv(row, csv_path)
    return rows


def read_csv(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open() as handle:
        return list(csv.DictReader(handle))


# --- plot and README ------------------------------------------------------------------------------------------------


def plot(csv_path: Path, out: Path) -> Path:
    """Memory against ``B`` (log-log) and time per sample against ``B``, one line per mode and micro-batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_csv(csv_path) if math.isfinite(float(r["extra_memory_mb"]))]
    groups: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        name = "plain" if r["mode"] == "plain" else f"cached, micro-batch {r['micro_batch']}"
        groups.setdefault(name, []).append(r)
    figure, (memory_axis, time_axis) = plt.subplots(1, 2, figsize=(11, 5.2))
    for name, points in sorted(groups.items(), key=lambda item: (item[0] != "plain", len(item[0]), item[0])):
        points.sort(key=lambda r: int(r["batch"]))
        batches = [int(r["batch"]) for r in points]
        line = memory_axis.plot(
            batches, [max(float(r["extra_memory_mb"]), 0.1) for r in points], marker="o", label=name
        )[0]
        memory_axis.plot(
            batches,
            [max(float(r["tensor_peak_mb"]), 0.1) for r in points],
            marker=".",
            linestyle=":",
            color=line.get_color(),
        )
        line = time_axis.plot(batches, [float(r["microseconds_per_sample"]) for r in points], marker="o")[0]
        time_axis.plot(
            batches,
            [float(r["cpu_microseconds_per_sample"]) for r in points],
            marker=".",
            linestyle=":",
            color=line.get_color(),
        )
    features = sorted({(int(r["batch"]), float(r["features_mb"])) for r in rows})
    memory_axis.plot(
        [b for b, _ in features],
        [f for _, f in features],
        color="grey",
        linestyle="--",
        label="features + their gradients (4·B·D)",
    )
    memory_axis.set_yscale("log")
    memory_axis.set_ylabel("peak extra memory of the step (MB)")
    memory_axis.set_title("solid: resident peak; dotted: live tensors", fontsize=8)
    time_axis.set_ylabel("time per sample (µs), median of the repeats")
    time_axis.set_title("solid: wall time; dotted: CPU time", fontsize=8)
    time_axis.set_ylim(bottom=0)
    for axis in (memory_axis, time_axis):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("global batch B")
        axis.grid(True, which="both", alpha=0.3)
    figure.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    first = rows[0] if rows else {"model": "", "machine": "", "threads": "", "torch": ""}
    figure.suptitle(
        f"one training step (forward + backward) of {first['model']}: {first['machine']}, "
        f"{first['threads']} thread(s), torch {first['torch']}",
        fontsize=9,
    )
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    path = out / PLOT_NAME
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_readme(
    args: argparse.Namespace, rows: list[Row], loads: tuple[tuple[float, ...], tuple[float, ...]], argv: list[str]
) -> Path:
    """Add this run's record (machine, torch, load, command line, skipped jobs) to ``README.md``."""
    path = args.out / "README.md"
    lines = []
    if not args.append or not path.exists():
        lines += [
            "# Training-step memory and time per sample, plain and gradient-cached",
            "",
            f"Written by `benchmarks/bench_train_memory.py` (see its docstring for what is measured): "
            f"[{CSV_NAME}]({CSV_NAME}), [{PLOT_NAME}]({PLOT_NAME}).",
        ]
    skipped = [r for r in rows if r.note]
    lines += [
        "",
        f"## Run of {rows[0].date if rows else ''}",
        "",
        "```bash",
        shlex.join(["python", "benchmarks/bench_train_memory.py", *argv]),
        "```",
        "",
        f"- machine: {device_name(torch.device('cpu'))}, {os.cpu_count()} logical CPUs; "
        f"{_meminfo_bytes('MemTotal:') / 2**30:.0f} GiB memory",
        f"- torch {torch.__version__}, {args.threads} thread(s) per step, model `{args.model}`, "
        f"loss backend `{args.loss_backend}`, {args.repeats} timed repeats after a warm-up",
        f"- load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in loads[0])}; "
        f"after: {', '.join(f'{x:.2f}' for x in loads[1])} (the machine is shared with other jobs)",
        f"- jobs: {len(rows)}, not measured: {len(skipped)}",
        *[f"  - B = {r.batch} {r.mode} {r.micro_batch}: {r.note}" for r in skipped],
    ]
    with path.open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


# --- command line ---------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench_train_memory.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=_positive_int, nargs="+", help="global batch sizes (default: 64 to 16384)")
    parser.add_argument(
        "--micro-batch",
        type=_positive_int,
        nargs="+",
        default=None,
        help="micro-batch sizes of the cached step (default: 32)",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="steps to measure")
    parser.add_argument("--model", default="unicl_tiny", help="the preset (default: unicl_tiny)")
    parser.add_argument("--loss-backend", default="auto", help="the UniCLLoss backend (default: auto)")
    parser.add_argument("--repeats", type=_positive_int, default=3, help="timed steps after the warm-up (median)")
    parser.add_argument(
        "--threads", type=_positive_int, default=None, help="torch threads in each step (default: the number of CPUs)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the inputs")
    parser.add_argument(
        "--memory-fraction",
        type=_fraction,
        default=0.8,
        help="skip a job whose predicted peak exceeds this fraction of the available memory",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results/train-memory-cpu"),
        help="folder for the CSV, the plot and the README",
    )
    parser.add_argument("--append", action="store_true", help="add to the folder's CSV and README, not replace them")
    parser.add_argument("--no-plot", action="store_true", help="write the CSV and README only")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: batches {QUICK_BATCHES}, micro-batch {QUICK_MICRO_BATCH}, one repeat, one thread",
    )
    args = parser.parse_args(argv)
    if args.model not in unicl.list_models():
        parser.error(f"argument --model: expected one of {', '.join(unicl.list_models())}; got {args.model!r}")
    if args.loss_backend not in BACKENDS:
        parser.error(f"argument --loss-backend: expected one of {', '.join(BACKENDS)}; got {args.loss_backend!r}")
    if args.quick:
        args.batches = args.batches or QUICK_BATCHES
        args.micro_batch = args.micro_batch or [QUICK_MICRO_BATCH]
        given = argv if argv is not None else sys.argv[1:]
        args.repeats = args.repeats if "--repeats" in given else 1
        args.threads = args.threads or 1
    args.batches = args.batches or DEFAULT_BATCHES
    args.micro_batch = args.micro_batch or [32]
    args.threads = args.threads or os.cpu_count() or 1
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not Path("/proc/self/clear_refs").exists():
        raise SystemExit("bench_train_memory.py: error: needs Linux's /proc/self/clear_refs to reset the peak memory")
    before = os.getloadavg()
    rows = run(args)
    after = os.getloadavg()
    csv_path = args.out / CSV_NAME
    print(f"wrote {csv_path}")
    if not args.no_plot:
        print(f"wrote {plot(csv_path, args.out)}")
    print(f"wrote {write_readme(args, rows, (before, after), argv)}")
    return rows


if __name__ == "__main__":
    main()
