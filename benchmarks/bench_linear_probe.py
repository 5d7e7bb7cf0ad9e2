"""Time unicl's linear probe (L2 sweep + refit) against scikit-learn's tuned LogisticRegression on the same features.

Synthetic features: ``C`` class means drawn from ``N(0, σ²I)`` in ``F`` dimensions (``σ = 4/√F``) and every sample
its class mean plus ``N(0, I)`` noise, balanced classes, a training split of ``N`` and a test split of ``N/5``
samples. Four methods run on the same features, one after the other in this process, with the same number of threads:

* ``unicl``: `unicl.evaluation.linear_probe` as shipped: the coarse decade grid 1e-6..1e2, three refinement
  steps (fits to gradient tolerance 1e-4), the refit on the whole training split (to 1e-7).
* ``unicl-coarse``: the same on the coarse grid only (``refine=()``), the grid scikit-learn gets.
* ``unicl-coarse-tight``: the same with the sweep's fits converged as far as the final one (L-BFGS's gradient
  tolerance 1e-7 instead of the sweep's default 1e-4, scikit-learn's ``tol``).
* ``sklearn``: ``LogisticRegression(solver="lbfgs", C=1/(λ·n))`` on features standardised on the part it is fitted
  on, for every λ of the coarse grid on the same stratified held-out split (`stratified_split`, seed 0), the best
  refitted on the whole training split. Its iterations are capped by ``--sklearn-max-iter`` (scikit-learn's default
  100), and the CSV counts the fits that stopped at the cap.

The CSV gets one row per size and method (seconds of the whole protocol, test top-1, the chosen λ, the number of
fits), and the README the machine, the threads and the load average before and after.

Examples:
    python benchmarks/bench_linear_probe.py --out benchmarks/results/linear-probe-cpu
    python benchmarks/bench_linear_probe.py --sizes 2000x64x10 --threads 1 --out /tmp/quick
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from unicl.evaluation.logistic import DEFAULT_L2_GRID, L2Search, stratified_split
from unicl.evaluation.protocols import linear_probe

DEFAULT_SIZES = ("5000x128x10", "50000x512x100")
#: The class means' scale is σ = MEAN_SCALE/√F, so two means lie about 5.7 noise deviations apart in any F: hard
#: enough that the sweep matters (neither chance nor separable).
MEAN_SCALE = 4.0


@dataclass
class Row:
    size: str
    train: int
    test: int
    features: int
    classes: int
    method: str
    threads: int
    fits: int
    seconds: float
    top1: float
    l2: float
    max_iter: int
    fits_at_cap: int


def parse_size(text: str) -> tuple[int, int, int]:
    try:
        n, f, c = (int(part) for part in text.lower().split("x"))
    except ValueError:
        message = f"a size is NxFxC (samples x features x classes), e.g. 50000x512x100; got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if min(n, f, c) < 1 or n < 10 * c:
        raise argparse.ArgumentTypeError(f"a size needs N >= 10·C and positive F; got {text!r}")
    return n, f, c


def synthetic(n: int, f: int, c: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    means = MEAN_SCALE / f**0.5 * torch.randn(c, f, generator=generator)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(count) % c
        return means[y] + torch.randn(count, f, generator=generator), y

    return (*split(n), *split(n // 5))


def sklearn_tuned(train_x, train_y, test_x, test_y, classes: int, max_iter: int) -> tuple[float, float, int, int]:
    """scikit-learn's protocol on the coarse grid: (test top-1, chosen λ, fits, fits at the iteration cap)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    at_cap = 0

    def fit(x: np.ndarray, y: np.ndarray, l2: float):
        nonlocal at_cap
        scaler = StandardScaler().fit(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning at the cap: counted instead
            model = LogisticRegression(C=1 / (l2 * len(x)), max_iter=max_iter).fit(scaler.transform(x), y)
        at_cap += int(model.n_iter_.max() >= max_iter)
        return lambda features: model.predict(scaler.transform(features))

    part, held = stratified_split(train_y, fraction=0.2, seed=0, classes=classes)
    x, y = train_x.numpy(), train_y.numpy()
    scores = {}
    for l2 in sorted(DEFAULT_L2_GRID, reverse=True):
        scores[l2] = float((fit(x[part], y[part], l2)(x[held]) == y[held]).mean())
    best = max(scores, key=lambda value: (scores[value], value))
    top1 = float((fit(x, y, best)(test_x.numpy()) == test_y.numpy()).mean())
    return top1, best, len(scores) + 1, at_cap


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical CPUs, torch {torch.__version__}"


def run(sizes: list[tuple[int, int, int]], threads: int, sklearn_max_iter: int) -> list[Row]:
    torch.set_num_threads(threads)
    rows = []
    for n, f, c in sizes:
        train_x, train_y, test_x, test_y = synthetic(n, f, c)
        size = f"{n}x{f}x{c}"
        variants = {
            "unicl": L2Search(),
            "unicl-coarse": L2Search(refine=()),
            "unicl-coarse-tight": L2Search(refine=(), sweep_tolerance=1e-7),
        }
        for method, search in variants.items():
            start = time.perf_counter()
            result = linear_probe(train_x, train_y, test_x, test_y, search=search)
            seconds = time.perf_counter() - start
            rows.append(Row(size, n, len(test_y), f, c, method, threads, len(result["sweep"]) + 1, seconds,
                            result["top1"], result["l2"], 1000, 0))  # fmt: skip
            print(rows[-1], flush=True)
        start = time.perf_counter()
        top1, l2, fits, at_cap = sklearn_tuned(train_x, train_y, test_x, test_y, c, sklearn_max_iter)
        rows.append(Row(size, n, len(test_y), f, c, "sklearn", threads, fits, time.perf_counter() - start, top1, l2,
                        sklearn_max_iter, at_cap))  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def write(rows: list[Row], out: Path, load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "linear_probe.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[field.name for field in fields(Row)])
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows)
    table = ["| size (N x F x C) | method | fits | seconds | test top-1 | λ | fits at the iteration cap |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        cap = f"{row.fits_at_cap} (cap {row.max_iter})"
        table.append(f"| {row.size} | {row.method} | {row.fits} | {row.seconds:.1f} | {row.top1:.4f} | {row.l2:.3g} "
                     f"| {cap} |")  # fmt: skip
    text = f"""# Linear probe: unicl against scikit-learn

Written by `python {" ".join(sys.argv)}` on {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.

Machine: {machine()}; {rows[0].threads} thread(s) for torch and for scikit-learn's BLAS (set by
`OMP_NUM_THREADS`); load average (1, 5, 15 min) {", ".join(f"{v:.2f}" for v in load_before)} before and
{", ".join(f"{v:.2f}" for v in load_after)} after (the machine is shared with other jobs).

Synthetic features (class means of scale {MEAN_SCALE}/√F plus unit Gaussian noise), a test split of N/5; seconds are
the whole protocol (sweep and refit) on the CPU in float32 (scikit-learn in float64); see the script's docstring for
the methods. scikit-learn's fits stop at its iteration cap where the last column says so.

{chr(10).join(table)}
"""
    (out / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[parse_size(s) for s in DEFAULT_SIZES])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--sklearn-max-iter", type=int, default=100, help="scikit-learn's lbfgs iteration cap")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/linear-probe-cpu"))
    args = parser.parse_args(argv)
    if args.threads < 1 or args.sklearn_max_iter < 1:
        parser.error("--threads and --sklearn-max-iter must be >= 1")
    load_before = os.getloadavg()
    rows = run(args.sizes, args.threads, args.sklearn_max_iter)
    write(rows, args.out, load_before, os.getloadavg())


if __name__ == "__main__":
    main()
