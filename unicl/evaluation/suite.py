"""Evaluation suites: a list of evaluations in one JSON (or TOML) file, run one by one into one table.

A suite file is a list of entries, or an object ``{"root": ..., "defaults": {...}, "entries": [...]}`` (TOML:
``root``, a ``[defaults]`` table and ``[[entries]]`` tables). Each entry has:

* ``name``: unique, letters, digits, ``.``, ``_`` and ``-`` (it names the entry's result file);
* ``task``: ``zeroshot``, ``retrieval`` or ``linear-probe``;
* the task's data: ``data`` (zeroshot: an ImageFolder root or a labels CSV), ``captions`` (retrieval), ``train``
  and ``test`` (linear-probe);
* optionally ``classnames`` and ``templates`` (a file, or a shipped set's name such as ``imagenet`` or ``clip``),
  ``metric`` (for retrieval, which recall column is the entry's score; default ``image_to_text_R@1``), and
  ``options``: more of the task's command options, ``{"shots": 5, "seeds": [0, 1, 2]}`` for
  ``--shots 5 --seeds 0 1 2`` (``true`` for a flag).

``defaults`` fills what an entry leaves out (``classnames`` and ``templates`` only in the entries that use prompts:
zero-shot ones and probes with ``"init": "text"``). Relative paths start at ``root`` (itself relative to the suite
file's folder), or at the suite file's folder. The model, tokenizer, device and batch size are the suite command's
own, so entries may not set them.

Every result file records the model it was computed with (`model_fingerprint`: the ``--model`` and ``--pretrained``
names with the SHA-256 of their files, the tokenizer and the precision) and the entry (`SuiteEntry.describe`). A rerun
skips an entry only when both match; a result from another model or another version of the entry stops the suite
(`ForeignResultsError`) rather than be reported as this one's.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from unicl.evaluation.names import CLASSNAMES_OPTIONS, RECALL_AT
from unicl.text.names import TEMPLATE_SETS

TASKS = ("zeroshot", "retrieval", "linear-probe")
#: Each task's data fields (all required).
DATA_FIELDS = {"zeroshot": ("data",), "retrieval": ("captions",), "linear-probe": ("train", "test")}
#: Fields that are paths unless they name a shipped set.
NAMED_SETS = {"classnames": tuple(CLASSNAMES_OPTIONS), "templates": TEMPLATE_SETS}
#: Options the suite command sets once for every entry.
SUITE_OPTIONS = ("model", "pretrained", "tokenizer", "device", "json", "precision", "workers", "no_progress")
#: The score column of a retrieval entry unless its ``metric`` names another.
RETRIEVAL_METRIC = "image_to_text_R@1"
RETRIEVAL_METRICS = tuple(f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in RECALL_AT)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_FIELDS = ("name", "task", "data", "captions", "train", "test", "classnames", "templates", "metric", "options")


class ForeignResultsError(ValueError):
    """A result file in the output directory was computed with another model or another version of its entry."""


@dataclass(frozen=True)
class SuiteEntry:
    """One evaluation of a suite (see the module docstring).

    Attributes:
        name: the entry's name (its result file is ``NAME.json``).
        task: ``zeroshot``, ``retrieval`` or ``linear-probe``.
        paths: the data fields, ``classnames`` and ``templates`` as resolved paths (or shipped sets' names).
        metric: the score column (``None``: the task's default).
        options: further command options, by option name without dashes (``shots``, ``cache_dir``).
    """

    name: str
    task: str
    paths: dict[str, str] = field(default_factory=dict)
    metric: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def arguments(self) -> list[str]:
        """The entry as the task command's arguments (``--data PATH --metric M --shots 5 ...``)."""
        arguments: list[str] = []
        for key, value in self.paths.items():
            arguments += [f"--{key}", value]
        if self.metric is not None and self.task != "retrieval":
            arguments += ["--metric", self.metric]
        for key, value in self.options.items():
            flag = f"--{key.replace('_', '-')}"
            if value is True:
                arguments.append(flag)
            elif isinstance(value, list):
                arguments += [flag, *map(str, value)]
            elif value is not False and value is not None:
                arguments += [flag, str(value)]
        return arguments

    def describe(self) -> dict[str, Any]:
        """The entry as written into its result file."""
        return {"name": self.name, "task": self.task, **self.paths, "metric": self.metric, "options": self.options}


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_digest(source: str | os.PathLike[str] | None) -> str | None:
    """SHA-256 of what a model, weights or tokenizer argument names, so that results follow the files, not the name.

    A directory hashes every regular file directly in it (by name, in sorted order: a saved model's config, weights
    and tokenizer); a file hashes its bytes; anything else (a preset name, ``clip``, ``None``) has no digest.

    Raises:
        OSError: a file that cannot be read.
    """
    if source is None:
        return None
    path = Path(source)
    if path.is_dir():
        digest = hashlib.sha256()
        for member in sorted(p for p in path.iterdir() if p.is_file()):
            digest.update(f"{member.name}|{_file_digest(member)}|".encode())
        return digest.hexdigest()
    return _file_digest(path) if path.is_file() else None


def _pretrained_file(model: str, pretrained: str | None) -> str | os.PathLike[str] | None:
    """The file ``--pretrained`` reads: a release tag's file in the checkpoint directory, else the argument."""
    # Imported here: the models package loads torch, and this module is read before a command's options parse.
    from unicl.models.pretrained import get_pretrained, is_pretrained_tag

    if not is_pretrained_tag(pretrained):
        return pretrained
    try:
        return get_pretrained(model, str(pretrained)).local_path()
    except ValueError:  # a tag of another preset, which loading the model reports
        return pretrained


def model_fingerprint(
    model: str, pretrained: str | None = None, tokenizer: str | None = None, precision: str = "fp32"
) -> dict[str, Any]:
    """What a suite's results depend on besides the entry: the arguments as given and the digests of their files.

    Args:
        model: ``--model`` (a preset name or a model directory).
        pretrained: ``--pretrained``.
        tokenizer: ``--tokenizer`` (``None``: the model's own, which lives in the files hashed above).
        precision: ``--precision``.

    Returns:
        ``{"model", "model_digest", "pretrained", "pretrained_digest", "tokenizer", "tokenizer_digest",
        "precision"}``; the digests are `source_digest`'s (``None`` for names), a release tag's that of its file in
        `unicl.models.pretrained.checkpoint_dir`.

    Raises:
        OSError: a file that cannot be read.
    """
    return {
        "model": model, "model_digest": source_digest(model), "pretrained": pretrained,
        "pretrained_digest": source_digest(_pretrained_file(model, pretrained)), "tokenizer": tokenizer,
        "tokenizer_digest": source_digest(tokenizer), "precision": precision,
    }  # fmt: skip


def model_label(fingerprint: Mapping[str, Any] | None) -> str:
    """The model column of the tables: ``--model``, with ``--pretrained``'s file name in brackets when given."""
    if not fingerprint:
        return ""
    label = str(fingerprint.get("model", ""))
    if fingerprint.get("pretrained") is not None:
        label += f" ({Path(str(fingerprint['pretrained'])).name})"
    return label


def _load(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError("does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"is not valid TOML: {error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"is not valid JSON: {error}") from None


def _resolve(value: object, root: Path, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where} must be a non-empty path string; got {value!r}")
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else root / path)


def _entry(raw: object, defaults: Mapping[str, Any], root: Path, number: int) -> SuiteEntry:
    where = f"entry {number}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object of fields; got {type(raw).__name__}")
    # Default prompts go only where prompts are used: zero-shot entries and zero-shot-initialised probes.
    options = raw.get("options", defaults.get("options"))
    prompted = raw.get("task") == "zeroshot" or (isinstance(options, dict) and options.get("init") == "text")
    values = {**{k: v for k, v in defaults.items() if prompted or k not in NAMED_SETS}, **raw}
    name = values.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: name must be letters, digits, '.', '_' or '-' (it names a file); got {name!r}")
    where = f"entry {number} ({name!r})"
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        set_once = [key for key in unknown if key in SUITE_OPTIONS]
        if set_once:
            raise ValueError(f"{where}: {set_once} is set on the suite command line, not per entry")
        raise ValueError(f"{where} has unknown field(s) {unknown}; known: {list(_FIELDS)}")
    task = values.get("task")
    if task not in TASKS:
        raise ValueError(f"{where}: task must be one of {', '.join(TASKS)}; got {task!r}")
    paths: dict[str, str] = {}
    for key in DATA_FIELDS[task]:
        if key not in values:
            raise ValueError(f"{where}: a {task} entry needs {' and '.join(DATA_FIELDS[task])}")
        paths[key] = _resolve(values[key], root, f"{where}: {key}")
    stray = sorted(key for task_fields in DATA_FIELDS.values() for key in task_fields if key in values and key not in
                   paths)  # fmt: skip
    if stray:
        raise ValueError(f"{where}: {stray} is not data of a {task} entry (it takes {list(DATA_FIELDS[task])})")
    for key, names in NAMED_SETS.items():
        if key in values:
            if task == "retrieval":
                raise ValueError(f"{where}: a retrieval entry takes no {key}")
            value = values[key]
            paths[key] = value if value in names else _resolve(value, root, f"{where}: {key}")
    metric = values.get("metric")
    if metric is not None and not isinstance(metric, str):
        raise ValueError(f"{where}: metric must be a string; got {metric!r}")
    if task == "retrieval" and metric is not None and metric not in RETRIEVAL_METRICS:
        raise ValueError(f"{where}: a retrieval entry's metric must be one of {', '.join(RETRIEVAL_METRICS)}")
    options = values.get("options", {})
    if not isinstance(options, dict):
        raise ValueError(f"{where}: options must be an object of command options; got {type(options).__name__}")
    options = {key.replace("-", "_"): value for key, value in options.items()}
    set_once = sorted(set(options) & set(SUITE_OPTIONS))
    if set_once:
        raise ValueError(f"{where}: options {set_once} are set on the suite command line, not per entry")
    if "cache_dir" in options:
        options["cache_dir"] = _resolve(options["cache_dir"], root, f"{where}: options.cache_dir")
    return SuiteEntry(name, task, paths, metric, options)


def read_suite(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> list[SuiteEntry]:
    """The entries of a suite file (see the module docstring), paths resolved.

    Args:
        path: a ``.json`` or ``.toml`` file.
        root: where relative paths start, overriding the file's ``root``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid JSON/TOML, no entries, duplicate names, or an entry with a bad field (named).
    """
    path = Path(path)
    loaded = _load(path)
    if isinstance(loaded, list):
        loaded = {"entries": loaded}
    if not isinstance(loaded, dict) or not isinstance(loaded.get("entries"), list):
        raise ValueError("must be a list of entries, or an object with an 'entries' list")
    extra = sorted(set(loaded) - {"root", "defaults", "entries", "description"})
    if extra:
        raise ValueError(f"has unknown top-level field(s) {extra}; known: root, defaults, entries, description")
    defaults = loaded.get("defaults", {})
    if not isinstance(defaults, dict) or "name" in defaults:
        raise ValueError("defaults must be an object of entry fields other than name")
    if root is None:
        root = Path(loaded.get("root", ".")).expanduser()
        root = root if root.is_absolute() else path.parent / root
    entries = [_entry(raw, defaults, Path(root), number) for number, raw in enumerate(loaded["entries"], 1)]
    if not entries:
        raise ValueError("has no entries")
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ValueError(f"has two entries named {entry.name!r}")
        seen.add(entry.name)
    return entries


def entry_score(task: str, metric: str | None, results: Mapping[str, Any]) -> tuple[str, float, float | None]:
    """``(metric, score, standard deviation over seeds or None)`` of one entry's results."""
    if task == "retrieval":
        name = metric or RETRIEVAL_METRIC
        return name, float(results[name]), None
    name = str(results.get("metric", metric))
    if isinstance(results.get("mean"), Mapping):  # a few-shot probe: the mean and spread over its seeds
        return name, float(results["mean"][name]), float(results["std"][name])
    return name, float(results[name]), None


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def write_tables(records: Sequence[Mapping[str, Any]], output: Path) -> tuple[Path, Path]:
    """``results.csv`` (one row per entry) and ``results.md`` (a Markdown table, scores in percent) in ``output``."""
    columns = ("name", "task", "metric", "score", "std", "images", "seconds", "model")
    csv_path, markdown_path = output / "results.csv", output / "results.md"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for record in records:
            row = {**record, "model": model_label(record.get("model"))}
            writer.writerow([row.get(column) if row.get(column) is not None else "" for column in columns])
    lines = ["| Entry | Task | Metric | Score (%) | Model |", "|---|---|---|---:|---|"]
    for record in records:
        score = f"{100 * record['score']:.2f}"
        if record.get("std") is not None:
            score += f" ± {100 * record['std']:.2f}"
        model = model_label(record.get("model")).replace("|", "\\|")
        lines.append(f"| {record['name']} | {record['task']} | {record['metric']} | {score} | {model} |")
    markdown_path.write_text("\n".join(lines) + "\n")
    return csv_path, markdown_path


def _test_images(results: Mapping[str, Any]) -> int | None:
    """How many images an entry scored: ``images`` (zero-shot, retrieval) or a probe's ``test`` count."""
    if "images" in results:
        return int(results["images"])
    runs = results.get("runs")
    probe = runs[0] if isinstance(runs, list) and runs else results
    return int(probe["test"]) if "test" in probe else None


def _as_json(value: object) -> Any:
    """``value`` as it reads back from a result file (tuples become lists), for comparing with what was written."""
    return json.loads(json.dumps(value))


def _done_before(
    path: Path, entry: SuiteEntry, fingerprint: Mapping[str, Any] | None, output: Path
) -> dict[str, Any] | None:
    """The entry's earlier record if it holds results of this model and this entry; ``None`` if there is none.

    Raises:
        ForeignResultsError: the record holds results of another model or of another version of the entry.
    """
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # none, or cut short: run it (again)
        return None
    if not (isinstance(record, dict) and "score" in record and "results" in record):
        return None
    differs = [what for what, key, expected in (("model", "model", fingerprint), ("entry", "entry", entry.describe()))
               if record.get(key) != _as_json(expected)]  # fmt: skip
    if differs:
        raise ForeignResultsError(
            f"results in {str(output)!r} are from another model/entry ({path.name}: another {' and '.join(differs)}):"
            " use --force or another --output"
        )
    return record


def run_suite(
    entries: Sequence[SuiteEntry],
    output: str | os.PathLike[str],
    run_entry: Callable[[int], Mapping[str, Any]],
    *,
    force: bool = False,
    log: TextIO | None = None,
    fingerprint: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``entries`` in order into ``output``: ``NAME.json`` per entry, then the tables of `write_tables`.

    An entry whose ``NAME.json`` holds results of the same ``fingerprint`` and the same entry is not run again
    unless ``force``; results of another model or entry stop the suite before anything runs. Progress (entry i of
    n, its score, its time and the time so far) goes to ``log``.

    Args:
        entries: from `read_suite`.
        output: the results directory (created).
        run_entry: runs entry ``i`` and returns its results (the command's results dict).
        force: redo entries that have results, whoever computed them.
        log: where progress lines go (``None``: nowhere).
        fingerprint: what the results depend on besides the entry (`model_fingerprint`), written into every record.

    Returns:
        ``{"entries": n, "ran": r, "skipped": s, "csv": path, "markdown": path}``.

    Raises:
        ForeignResultsError: without ``force``, a result file of another model or another version of its entry.
    """
    output = Path(output)
    # Every earlier result is checked before the first entry runs: a suite never mixes two models' results.
    previous = [None if force else _done_before(output / f"{e.name}.json", e, fingerprint, output) for e in entries]
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    records: list[Mapping[str, Any]] = []
    ran = 0

    def say(line: str) -> None:
        if log is not None:
            print(line, file=log, flush=True)

    for index, entry in enumerate(entries):
        prefix = f"[{index + 1}/{len(entries)}] {entry.name} ({entry.task})"
        path = output / f"{entry.name}.json"
        earlier = previous[index]
        if earlier is not None:
            say(f"{prefix}: done before, skipped ({path}; --force redoes it)")
            records.append(earlier)
            continue
        say(f"{prefix}: running")
        entry_started = time.perf_counter()
        results = dict(run_entry(index))
        seconds = time.perf_counter() - entry_started
        metric, score, std = entry_score(entry.task, entry.metric, results)
        record = {
            "name": entry.name, "task": entry.task, "metric": metric, "score": score, "std": std,
            "images": _test_images(results), "seconds": round(seconds, 3), "entry": entry.describe(),
            "model": dict(fingerprint) if fingerprint is not None else None, "results": results,
        }  # fmt: skip
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(temporary, path)  # a suite stopped mid-write leaves no half result that would be skipped
        records.append(record)
        ran += 1
        elapsed = _minutes(time.perf_counter() - started)
        say(f"{prefix}: {metric}={score:.4f} in {seconds:.1f} s (elapsed {elapsed})")
    csv_path, markdown_path = write_tables(records, output)
    say(f"{len(entries)} entries ({ran} run, {len(entries) - ran} skipped) in {_minutes(time.perf_counter() - started)}"
        f": {csv_path}, {markdown_path}")  # fmt: skip
    return {"entries": len(entries), "ran": ran, "skipped": len(entries) - ran, "csv": str(csv_path),
            "markdown": str(markdown_path)}  # fmt: skip
