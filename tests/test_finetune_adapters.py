"""Fine-tuning an adapter model end to end, as docs/finetune.md tells a new user: ``unicl-train`` on an
``open_clip:ARCH --pretrained FILE`` or ``hf:DIR`` model with a frozen text tower and ``--tower-lr``, then
``python -m unicl.evaluate zeroshot --model RUN/final`` with no other option, then ``python -m unicl.evaluate
wise-ft`` from the same start, whose ends are the two models' own zero-shot scores.

The models are the tiny ones of tests/adapter_models.py, built here (nothing is downloaded).
"""

from __future__ import annotations

import csv
import itertools
import re
import shlex
from pathlib import Path

import pytest
import torch
from adapter_models import ARCH, build_clip_dir, build_open_clip_file, build_siglip_dir, image_folder

import unicl
from unicl.evaluation.wise_ft import interpolated_model
from unicl.training.towers import tower_of

pytest.importorskip("open_clip")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def starts(tmp_path_factory) -> dict[str, tuple[list[str], dict]]:
    """Per kind, the ``--model`` (and ``--pretrained``) arguments of the starting model and `unicl.create_model`'s
    arguments for it."""
    folder = tmp_path_factory.mktemp("finetune-adapters")
    checkpoint = build_open_clip_file(folder)
    return {
        "open_clip": (["--model", f"open_clip:{ARCH}", "--pretrained", str(checkpoint)],
                      {"name": f"open_clip:{ARCH}", "pretrained": checkpoint}),
        "hf-clip": (["--model", f"hf:{build_clip_dir(folder)}"], {"name": f"hf:{folder / 'clip'}"}),
        "hf-siglip": (["--model", f"hf:{build_siglip_dir(folder)}"], {"name": f"hf:{folder / 'siglip'}"}),
    }  # fmt: skip


def _top1(arguments: list[str], data: Path, capsys) -> float:
    """``python -m unicl.evaluate zeroshot ARGUMENTS --data DATA``'s top-1, with no model option but ``arguments``."""
    from unicl.evaluate import main as evaluate

    result = evaluate(["zeroshot", *arguments, "--data", str(data), "--workers", "0", "--no-progress"])
    capsys.readouterr()
    return result["top1"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["open_clip", "hf-clip", "hf-siglip"])
def test_a_fine_tune_with_a_frozen_text_tower_and_its_wise_ft_table(kind, starts, tmp_path, capsys):
    from unicl.evaluate import main as evaluate
    from unicl.train import main as train

    model_arguments, create = starts[kind]
    train_folder, eval_folder = image_folder(tmp_path / "train", 2), image_folder(tmp_path / "eval", 2)
    loss = ["--loss", "sigmoid"] if kind == "hf-siglip" else []
    run = tmp_path / "run"
    train([
        *model_arguments, "--image-folder", str(train_folder), "--eval-folder", str(eval_folder), "--steps", "2",
        "--batch-size", "4", "--freeze-text", "--tower-lr", "1e-4", *loss, "--output", str(run), "--workers", "0",
        "--no-progress", "--no-tensorboard",
    ])  # fmt: skip
    initial = unicl.create_model(**create)
    tuned = unicl.load_model(run / "final")
    assert type(tuned) is type(initial)
    before, after = dict(initial.named_parameters()), dict(tuned.named_parameters())
    assert before.keys() == after.keys()
    # The text tower is as it was given; every image parameter, the logit scale (and SigLIP's bias) moved, but for a
    # scale held at its bound (the test SigLIP starts at its bound, a trained SigLIP's 117).
    at_bound = bool(tuned.clamped_logit_scale() == tuned.config.max_logit_scale)
    for name, parameter in before.items():
        held = name.endswith("logit_scale") and at_bound
        assert torch.equal(after[name], parameter) == (tower_of(name) == "text" or held), name
    assert {tower_of(name) for name in before} == {"image", "text", None}

    pretrained = model_arguments[2:]
    start_top1 = _top1(model_arguments, eval_folder, capsys)
    tuned_top1 = _top1(["--model", str(run / "final")], eval_folder, capsys)
    output = tmp_path / "wise-ft"
    # The run's start, spelled otherwise for hf:DIR (the same directory): no warning either.
    start = model_arguments[1] + ("/." if kind.startswith("hf") else "")
    summary = evaluate([
        "wise-ft", "--model", start, *pretrained, "--fine-tuned", str(run / "final"), "--data",
        str(eval_folder), "--alphas", "0,0.5,1", "--output", str(output), "--save", "0.5", "--workers", "0",
        "--no-progress",
    ])  # fmt: skip
    streams = capsys.readouterr()
    assert "warning" not in streams.err  # the run's own start: nothing to warn about
    rows = list(csv.DictReader((output / "wise_ft.csv").open()))
    assert [row["alpha"] for row in rows] == ["0.0", "0.5", "1.0"]
    assert float(rows[0]["top1"]) == start_top1 and float(rows[2]["top1"]) == tuned_top1
    saved = unicl.load_model(summary["saved"])
    assert type(saved) is type(initial)
    mixed = interpolated_model(initial, tuned, 0.5).state_dict()
    assert all(torch.equal(tensor, mixed[name]) for name, tensor in saved.state_dict().items())
    assert float(rows[1]["top1"]) == _top1(["--model", summary["saved"]], eval_folder, capsys)


def _page_commands() -> list[tuple[str, list[str]]]:
    """``(program, arguments)`` of every ``unicl-train`` and ``python -m unicl.evaluate`` line of docs/finetune.md's
    shell blocks, in the page's order (continuations joined)."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "finetune.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", page, flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    programs = ("unicl-train", "python -m unicl.evaluate")
    return [
        (program, shlex.split(line)[len(program.split()) :])
        for line in lines
        for program in programs
        if line.startswith(program + " ")
    ]


def test_the_pages_command_lines_are_the_commands_options(tmp_path, monkeypatch):
    """Every ``unicl-train`` and ``python -m unicl.evaluate`` line of the page parses and passes the training
    command's checks; ``zeroshot`` takes the fine-tuned model with no other option; each ``wise-ft`` starts from the
    ``--model`` and ``--pretrained`` of the fine-tune before it whose ``RUN/final`` it mixes."""
    from unicl.evaluate import build_parser
    from unicl.train import parse_config
    from unicl.training.options import check_options

    monkeypatch.chdir(tmp_path)  # the page's folders, made here: the checks read them
    trained: dict[str, tuple] = {}
    counts = {"unicl-train": 0, "zeroshot": 0, "wise-ft": 0}
    for program, argv in _page_commands():
        if program == "unicl-train":
            for option, value in itertools.pairwise(argv):
                if option in ("--image-folder", "--eval-folder"):
                    Path(value).mkdir(parents=True, exist_ok=True)
            config = check_options(parse_config(argv))
            trained[f"{config.output}/final"] = (config.model, config.pretrained)
            counts[program] += 1
            continue
        args = build_parser().parse_args(argv)
        counts[args.command] += 1
        if args.command == "zeroshot":
            assert args.model in trained and args.pretrained is None and args.tokenizer is None, argv
        else:
            assert trained[str(args.fine_tuned)] == (args.model, args.pretrained), argv
            assert len(args.alphas.split(",")) >= 3, argv
    assert counts == {"unicl-train": 4, "zeroshot": 2, "wise-ft": 3}
