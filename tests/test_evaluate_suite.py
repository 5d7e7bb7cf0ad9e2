"""``python -m unicl.evaluate suite``: three local datasets end to end (digits, multi-label, binary) plus a few-shot
probe and a retrieval entry, the same numbers as the single commands, reruns that skip, ``--force``, the shipped
ELEVATER example, and bad suite files as one line naming the entry."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_evaluate import make_workspace

import unicl
import unicl.evaluate
from unicl.evaluate import main
from unicl.evaluation.suite import read_suite

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--workers", "0", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("suite"))


def _suite(workspace: Path, entries: list[dict]) -> Path:
    path = workspace / "suite.json"
    path.write_text(json.dumps({"defaults": {"templates": "plain"}, "entries": entries}))
    return path


ENTRIES = [
    {"name": "digits", "task": "zeroshot", "data": "digits", "metric": "mean_per_class_recall"},
    {"name": "shapes", "task": "zeroshot", "data": "labels.csv"},
    {"name": "zero-or-one", "task": "zeroshot", "data": "binary", "metric": "roc_auc"},
    {"name": "digits-3-shot", "task": "linear-probe", "train": "digits", "test": "held-out",
     "options": {"shots": 3, "seeds": [0, 1]}},
    {"name": "captions", "task": "retrieval", "captions": "captions.csv", "metric": "text_to_image_R@5"},
]  # fmt: skip


@pytest.mark.slow
def test_a_suite_runs_every_entry_then_skips_them(workspace, tmp_path, capsys, monkeypatch):
    config = _suite(workspace, ENTRIES)
    output = tmp_path / "results"
    summary = main(["suite", str(config), "--model", str(workspace / "model"), "--output", str(output), *COMMON])
    assert summary["ran"] == 5 and summary["skipped"] == 0
    captured = capsys.readouterr()
    assert "[1/5] digits (zeroshot): running" in captured.err and "[5/5] captions (retrieval): " in captured.err
    assert "elapsed" in captured.err

    model = ["--model", str(workspace / "model"), *COMMON]
    single = {
        "digits": main(["zeroshot", *model, "--data", str(workspace / "digits"), "--templates", "plain",
                        "--metric", "mean_per_class_recall"]),
        "shapes": main(["zeroshot", *model, "--data", str(workspace / "labels.csv"), "--templates", "plain"]),
        "zero-or-one": main(["zeroshot", *model, "--data", str(workspace / "binary"), "--templates", "plain",
                             "--metric", "roc_auc"]),
        "digits-3-shot": main(["linear-probe", *model, "--train", str(workspace / "digits"), "--test",
                               str(workspace / "held-out"), "--shots", "3", "--seeds", "0", "1"]),
        "captions": main(["retrieval", *model, "--captions", str(workspace / "captions.csv")]),
    }  # fmt: skip
    scores = {"digits": ("mean_per_class_recall", single["digits"]["mean_per_class_recall"], None),
              "shapes": ("map_11_point", single["shapes"]["map_11_point"], None),
              "zero-or-one": ("roc_auc", single["zero-or-one"]["roc_auc"], None),
              "digits-3-shot": ("top1", single["digits-3-shot"]["mean"]["top1"],
                                single["digits-3-shot"]["std"]["top1"]),
              "captions": ("text_to_image_R@5", single["captions"]["text_to_image_R@5"], None)}  # fmt: skip
    for name, (metric, score, std) in scores.items():
        record = json.loads((output / f"{name}.json").read_text())
        assert record["results"] == single[name], name
        assert (record["metric"], record["score"], record["std"]) == (metric, score, std)
    with (output / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == list(scores)
    assert [float(row["score"]) for row in rows] == [score for _, score, _ in scores.values()]
    table = (output / "results.md").read_text().splitlines()
    assert table[0] == "| Entry | Task | Metric | Score (%) | Model |" and len(table) == 2 + 5
    model_dir = workspace / "model"
    assert table[2] == f"| digits | zeroshot | mean_per_class_recall | {100 * scores['digits'][1]:.2f} | {model_dir} |"
    assert [row["model"] for row in rows] == [str(model_dir)] * 5
    assert f"{100 * scores['digits-3-shot'][1]:.2f} ± {100 * scores['digits-3-shot'][2]:.2f}" in table[5]
    capsys.readouterr()

    # A rerun does no work: the model is never loaded and the results stay as they were.
    before = {path.name: path.read_bytes() for path in output.glob("*.json")}

    def no_model(args):
        raise AssertionError("a rerun with every entry done loaded the model")

    monkeypatch.setattr(unicl.evaluate, "_load_model", no_model)
    again = main(["suite", str(config), "--model", str(workspace / "model"), "--output", str(output), *COMMON])
    assert again["ran"] == 0 and again["skipped"] == 5
    assert capsys.readouterr().err.count("done before, skipped") == 5
    assert {path.name: path.read_bytes() for path in output.glob("*.json")} == before
    monkeypatch.undo()

    # --force redoes them (the same numbers); a corrupt result file is redone too.
    (output / "shapes.json").write_text("{")
    forced = main(["suite", str(config), "--model", str(workspace / "model"), "--output", str(output), "--force",
                   *COMMON])  # fmt: skip
    assert forced["ran"] == 5
    assert json.loads((output / "shapes.json").read_text())["results"] == single["shapes"]


def _sha256_of_directory(directory: Path) -> str:
    """An independent digest of a model directory: every file's name and bytes, in sorted order."""
    import hashlib

    parts = [f"{p.name}|{hashlib.sha256(p.read_bytes()).hexdigest()}|" for p in sorted(directory.iterdir())]
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def _suite_error(capsys, arguments: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(arguments)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    return lines[-1]


@pytest.mark.slow
def test_results_of_another_model_or_entry_are_refused_not_reused(workspace, tmp_path, capsys):
    """The review's fault: a rerun with another --model (or --pretrained, changed weights, an edited entry) into the
    same --output skipped every entry and reported the old model's results as the new one's."""
    import shutil

    import torch

    entries = [{"name": "zero-or-one", "task": "zeroshot", "data": "binary", "metric": "roc_auc"}]
    config = workspace / "fingerprint-suite.json"
    config.write_text(json.dumps({"defaults": {"templates": "plain"}, "entries": entries}))
    copy = tmp_path / "model"
    shutil.copytree(workspace / "model", copy)
    output = tmp_path / "results"
    base = ["suite", str(config), "--output", str(output), *COMMON]
    assert main([*base, "--model", str(copy)])["ran"] == 1
    record = json.loads((output / "zero-or-one.json").read_text())
    assert record["model"]["model"] == str(copy) and record["model"]["pretrained"] is None
    assert record["model"]["model_digest"] == _sha256_of_directory(copy)
    assert record["model"]["precision"] == "bf16"  # the command's default
    before = (output / "zero-or-one.json").read_bytes()
    assert main([*base, "--model", str(copy)])["skipped"] == 1  # the same model: skipped

    refused = "--output '{o}': results in '{o}' are from another model/entry (zero-or-one.json: another {what}): use " \
              "--force or another --output"  # fmt: skip
    # The same weights under another name, a preset with them as --pretrained, another precision or tokenizer.
    for other in (["--model", str(workspace / "model")], ["--model", "unicl_tiny", "--pretrained", str(copy)],
                  ["--model", str(copy), "--precision", "fp32"],
                  ["--model", str(copy), "--tokenizer", str(workspace / "tokenizer.json")]):  # fmt: skip
        last = _suite_error(capsys, [*base, *other])
        assert last.endswith(refused.format(o=output, what="model")), (other, last)
    # The same directory with other weights.
    torch.manual_seed(1)
    unicl.create_model("unicl_tiny").save_pretrained(copy, tokenizer=unicl.get_tokenizer(workspace / "model"))
    assert _suite_error(capsys, [*base, "--model", str(copy)]).endswith(refused.format(o=output, what="model"))
    assert (output / "zero-or-one.json").read_bytes() == before  # nothing was run or overwritten
    # An edited entry (its metric), with the model it was computed with.
    shutil.rmtree(copy)
    shutil.copytree(workspace / "model", copy)
    assert main([*base, "--model", str(copy)])["skipped"] == 1
    config.write_text(json.dumps({"defaults": {"templates": "plain"}, "entries": [{**entries[0], "metric": "top1"}]}))
    assert _suite_error(capsys, [*base, "--model", str(copy)]).endswith(refused.format(o=output, what="entry"))
    # --force recomputes with the new model and records it; the table names it.
    forced = main([*base, "--model", "unicl_tiny", "--pretrained", str(copy), "--force"])
    assert forced["ran"] == 1
    record = json.loads((output / "zero-or-one.json").read_text())
    assert record["model"]["pretrained"] == str(copy) and record["model"]["model"] == "unicl_tiny"
    assert (output / "results.md").read_text().splitlines()[2].endswith(f"| unicl_tiny ({copy.name}) |")


def test_an_entry_failing_midway_is_named_and_the_entries_before_it_are_kept(workspace, tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / "broken" / name).mkdir(parents=True)
        (tmp_path / "broken" / name / "x.png").write_text("not a PNG")
    config = _suite(workspace, [{"name": "fine", "task": "zeroshot", "data": "binary"},
                                {"name": "broken", "task": "zeroshot", "data": str(tmp_path / "broken")}])  # fmt: skip
    arguments = ["suite", str(config), "--model", str(workspace / "model"), "--output", str(tmp_path / "out"), *COMMON]
    with pytest.raises(SystemExit) as stopped:
        main(arguments)
    assert stopped.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "entry 2 ('broken'): --data: cannot identify image file" in last, last
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["fine.json"]


def test_the_elevater_example_lists_the_20_datasets_and_imagenet_with_their_metrics(tmp_path):
    entries = read_suite(ROOT / "examples" / "elevater_suite.json", root=tmp_path)
    zeroshot = {entry.name.removesuffix("-zeroshot"): entry for entry in entries if entry.task == "zeroshot"}
    assert len(zeroshot) == 21 and len(entries) == 21 + 19 + 1  # VOC2007 (multi-label) has no probe
    metrics = {name: entry.metric for name, entry in zeroshot.items()}
    for name in ("caltech101", "fgvc-aircraft", "oxford-flowers102", "oxford-iiit-pets"):
        assert metrics.pop(name) == "mean_per_class_recall"
    assert metrics.pop("voc2007") == "map_11_point" and metrics.pop("hateful-memes") == "roc_auc"
    assert set(metrics.values()) == {"top1"} and len(metrics) == 15
    assert zeroshot["voc2007"].paths["data"] == str(tmp_path / "voc2007" / "test.csv")
    assert zeroshot["imagenet-1k"].paths["classnames"] == "imagenet"
    assert zeroshot["imagenet-1k"].paths["templates"] == "unicl"
    probes = [entry for entry in entries if entry.task == "linear-probe"]
    assert all(entry.paths["train"].startswith(str(tmp_path)) for entry in probes)
    assert probes[-1].options["shots"] == 5 and probes[-1].options["seeds"] == [0, 1, 2]
    assert probes[-1].arguments()[-6:] == ["--seeds", "0", "1", "2", "--cache-dir", str(tmp_path / "feature-cache")]


def test_a_toml_suite_reads_as_the_same_json_suite(tmp_path):
    (tmp_path / "suite.toml").write_text(
        'root = "data"\n[defaults]\ntemplates = "unicl"\n'
        '[[entries]]\nname = "a"\ntask = "zeroshot"\ndata = "a/test"\nmetric = "mean_per_class_recall"\n'
        '[[entries]]\nname = "b"\ntask = "linear-probe"\ntrain = "b/train"\ntest = "b/test"\n'
        "[entries.options]\nshots = 5\nseeds = [0, 1]\n"
    )
    (tmp_path / "suite.json").write_text(json.dumps({"root": "data", "defaults": {"templates": "unicl"}, "entries": [
        {"name": "a", "task": "zeroshot", "data": "a/test", "metric": "mean_per_class_recall"},
        {"name": "b", "task": "linear-probe", "train": "b/train", "test": "b/test",
         "options": {"shots": 5, "seeds": [0, 1]}}]}))  # fmt: skip
    entries = read_suite(tmp_path / "suite.toml")
    assert entries == read_suite(tmp_path / "suite.json")
    assert entries[0].arguments() == ["--data", str(tmp_path / "data" / "a" / "test"), "--templates", "unicl",
                                      "--metric", "mean_per_class_recall"]  # fmt: skip
    assert entries[1].arguments()[-5:] == ["--shots", "5", "--seeds", "0", "1"] and "templates" not in entries[1].paths


BAD_SUITES = {
    "invalid JSON": ("{", "is not valid JSON"),
    "no entries": ("[]", "has no entries"),
    "unknown field": ('[{"name": "a", "task": "zeroshot", "data": "digits", "colour": 1}]',
                      "entry 1 ('a') has unknown field(s) ['colour']"),
    "model per entry": ('[{"name": "a", "task": "zeroshot", "data": "digits", "model": "x"}]',
                        "['model'] is set on the suite command line"),
    "bad task": ('[{"name": "a", "task": "segment", "data": "digits"}]', "task must be one of zeroshot"),
    "missing data field": ('[{"name": "a", "task": "linear-probe", "train": "digits"}]', "needs train and test"),
    "bad name": ('[{"name": "a/b", "task": "zeroshot", "data": "digits"}]', "name must be letters"),
    "duplicate names": ('[{"name": "a", "task": "zeroshot", "data": "digits"}, '
                        '{"name": "a", "task": "zeroshot", "data": "binary"}]', "has two entries named 'a'"),
    "missing data": ('[{"name": "a", "task": "zeroshot", "data": "digits"}, '
                     '{"name": "b", "task": "zeroshot", "data": "nowhere"}]',
                     "entry 2 ('b'): --data '{w}/nowhere': does not exist"),
    "metric that does not fit": ('[{"name": "a", "task": "zeroshot", "data": "binary", "metric": "map_11_point"}]',
                                 "entry 1 ('a'): --metric 'map_11_point'"),
    "unknown option": ('[{"name": "a", "task": "zeroshot", "data": "digits", "options": {"shots": 3}}]',
                       "entry 1 ('a'): unrecognized arguments: --shots 3"),
    "bad retrieval metric": ('[{"name": "a", "task": "retrieval", "captions": "captions.csv", "metric": "top1"}]',
                             "a retrieval entry's metric must be one of"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_SUITES))
def test_bad_suites_are_one_line_naming_the_entry(workspace, tmp_path, capsys, case):
    text, expected = BAD_SUITES[case]
    config = workspace / f"bad-{case.replace(' ', '-')}.json"
    config.write_text(text)
    with pytest.raises(SystemExit) as stopped:
        main(["suite", str(config), "--model", str(workspace / "model"), "--output", str(tmp_path), *COMMON])
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith(f"python -m unicl.evaluate suite: error: config '{config}'"), lines[-1]
    assert expected.format(w=workspace) in lines[-1], lines[-1]
    assert not list(tmp_path.iterdir())  # nothing ran


def test_a_release_tag_is_fingerprinted_by_its_file_in_the_checkpoint_directory(tmp_path, monkeypatch):
    import hashlib

    from unicl.evaluation.suite import model_fingerprint
    from unicl.models.pretrained import get_pretrained

    monkeypatch.setenv("UNICL_HOME", str(tmp_path))
    entry = get_pretrained("unicl_swin_tiny", "in1k")
    assert model_fingerprint("unicl_swin_tiny", "in1k")["pretrained_digest"] is None  # not fetched yet
    entry.local_path().parent.mkdir(parents=True)
    entry.local_path().write_bytes(b"weights one")
    first = model_fingerprint("unicl_swin_tiny", "in1k")
    assert first["pretrained"] == "in1k"
    assert first["pretrained_digest"] == hashlib.sha256(b"weights one").hexdigest()
    entry.local_path().write_bytes(b"weights two")
    assert model_fingerprint("unicl_swin_tiny", "in1k")["pretrained_digest"] != first["pretrained_digest"]
