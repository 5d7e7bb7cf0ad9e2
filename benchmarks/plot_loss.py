"""Plot ``bench_loss.csv``: time and peak extra memory against N, log-log, one PNG per (device, objective, D, dtype,
labels, pass).

Usage: ``python benchmarks/plot_loss.py RESULTS.csv [OUT_DIR]``.
"""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path


def plot_results(csv_path: Path, out: Path) -> list[Path]:
    """Draw the plots for the newest date of each device in ``csv_path``; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["status"] == "ok"]
    newest: dict[str, str] = {}
    for r in rows:
        newest[r["device"]] = max(newest.get(r["device"], ""), r["date"])
    groups: dict[tuple, dict[str, list[tuple[int, float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["date"] != newest[r["device"]]:
            continue
        # CSVs written before the sigmoid objective have no objective column: they are softmax runs.
        key = (r["device"], r.get("objective", "softmax"), r["d"], r["dtype"], r["labels"], r["pass_"])
        groups[key][r["provider"]].append((int(r["n"]), float(r["time_ms"]), float(r["extra_memory_mb"])))
    paths = []
    for (device, objective, d, dtype, labels, pass_), by_provider in sorted(groups.items()):
        figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
        for provider, points in sorted(by_provider.items()):
            points.sort()
            ns = [p[0] for p in points]
            time_axis.plot(ns, [p[1] for p in points], marker="o", label=provider)
            memory_axis.plot(ns, [max(p[2], 1e-3) for p in points], marker="o", label=provider)
        for axis, ylabel in ((time_axis, "time (ms)"), (memory_axis, "peak extra memory (MB)")):
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("batch size N")
            axis.set_ylabel(ylabel)
            axis.grid(True, which="both", alpha=0.3)
        time_axis.legend(fontsize=8)
        figure.suptitle(f"{device}\n{objective} loss, D={d}, {dtype}, labels={labels}, {pass_}", fontsize=9)
        figure.tight_layout()
        name = f"{device[:24]}-{'' if objective == 'softmax' else objective + '-'}d{d}-{dtype}-{labels}-{pass_}"
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
        path = out / f"{slug}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


if __name__ == "__main__":
    source = Path(sys.argv[1])
    plot_results(source, Path(sys.argv[2]) if len(sys.argv) > 2 else source.parent)
