"""WiSE-FT: `unicl.evaluation.wise_ft` mixes two models' weights (α = 0 and α = 1 give them bit for bit, the mix
is linear to float32 rounding of a float64 reference, two architectures are refused), and ``python -m
unicl.evaluate wise-ft`` evaluates each mix, zero-shot or by a suite, into one table, as a new user runs it."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_evaluate import make_workspace

import unicl
from unicl.evaluate import main
from unicl.evaluation.wise_ft import check_interpolable, interpolate_weights, interpolated_model, wise_ft_rows

#: float32's unit roundoff; a mix is two products and a sum, each rounded once, then rounded to float32.
EPS32 = torch.finfo(torch.float32).eps


def _model(seed: int, **overrides) -> unicl.UniCLModel:
    torch.manual_seed(seed)
    return unicl.create_model("unicl_tiny", **overrides)


#: A unicl_tiny of 55k parameters.
SMALL = {"embed_dim": 16, "text": {"layers": 1, "width": 32, "vocab_size": 100},
         "image": {"timm_kwargs": {"patch_size": 16, "depth": 1, "embed_dim": 32, "num_heads": 2}}}  # fmt: skip


@pytest.fixture(scope="module")
def pair():
    """Two small models of one architecture with different weights."""
    return _model(0, **SMALL), _model(1, **SMALL)


def test_alpha_0_and_1_give_the_two_models_bit_for_bit(pair):
    initial, fine_tuned = pair
    for alpha, expected in ((0, initial), (1.0, fine_tuned)):
        mixed = interpolated_model(initial, fine_tuned, alpha).state_dict()
        for name, tensor in expected.state_dict().items():
            assert torch.equal(mixed[name], tensor), (alpha, name)


@settings(max_examples=10)
@given(alpha=st.floats(min_value=-0.5, max_value=1.5, allow_nan=False))
def test_the_mix_is_linear_to_float32_rounding_of_a_float64_reference(pair, alpha):
    initial, fine_tuned = (model.state_dict() for model in pair)
    mixed = interpolate_weights(initial, fine_tuned, alpha)
    assert all(mixed[n].dtype == t.dtype and mixed[n].shape == t.shape for n, t in fine_tuned.items())
    flat = [torch.cat([tensors[n].double().flatten() for n in fine_tuned]) for tensors in (initial, fine_tuned, mixed)]
    start, tuned, got = flat
    reference = (1 - alpha) * start + alpha * tuned
    bound = 4 * EPS32 * (((1 - alpha) * start).abs() + (alpha * tuned).abs())
    assert ((got - reference).abs() <= bound).all(), alpha


def test_integer_buffers_are_the_fine_tuneds_and_float64_stays_float64():
    initial = {"count": torch.tensor(3), "w": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    fine_tuned = {"count": torch.tensor(7), "w": torch.tensor([3.0, -2.0], dtype=torch.float64)}
    mixed = interpolate_weights(initial, fine_tuned, 0.25)
    assert mixed["count"].item() == 7 and mixed["count"] is not fine_tuned["count"]
    assert mixed["w"].dtype == torch.float64 and mixed["w"].tolist() == [1.5, 1.0]


def test_a_mix_leaves_both_models_as_they_were(pair):
    initial, fine_tuned = pair
    before = [{n: t.clone() for n, t in m.state_dict().items()} for m in pair]
    interpolated_model(initial, fine_tuned, 0.3)
    for model, saved in zip(pair, before):
        assert all(torch.equal(model.state_dict()[n], t) for n, t in saved.items())


def test_two_architectures_are_refused_in_one_line(pair):
    initial, _ = pair
    wider = _model(2, **{**SMALL, "embed_dim": 32})
    with pytest.raises(ValueError, match=r"^the models' 'image_projection\.weight' differ: \(16, "):
        interpolated_model(initial, wider, 0.5)
    sigmoid = _model(2, **SMALL, logit_bias=-10.0)
    with pytest.raises(ValueError, match=r"only the initial has none, only the fine-tuned has \['logit_bias'\]"):
        check_interpolable(initial, sigmoid)
    with pytest.raises(ValueError, match=r"^the models are not one architecture: UniCLModel and Linear$"):
        check_interpolable(initial, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"'w' differ: \(2,\) torch.float32 in the initial, \(2,\) torch.float16"):
        interpolate_weights({"w": torch.zeros(2)}, {"w": torch.zeros(2, dtype=torch.float16)}, 0.5)
    with pytest.raises(ValueError, match=r"^alpha must be a finite number; got nan$"):
        interpolate_weights({}, {}, float("nan"))


def test_the_table_has_a_row_per_coefficient_and_a_column_per_score():
    columns, rows = wise_ft_rows([(0.0, {"top1": 0.5}), (1.0, {"top1": 0.75, "top5": 1.0})])
    assert columns == ["alpha", "top1", "top5"]
    assert rows == [[0.0, 0.5, None], [1.0, 0.75, 1.0]]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """make_workspace's digits and its saved model (the initial weights), and a second model of its architecture
    saved with the same tokenizer (the "fine-tuned" one)."""
    root = make_workspace(tmp_path_factory.mktemp("wise-ft"))
    torch.manual_seed(5)
    unicl.create_model("unicl_tiny").save_pretrained(root / "tuned", unicl.get_tokenizer(root / "model"))
    return root


def _zeroshot(model: str, data, capsys) -> float:
    result = main(["zeroshot", "--model", model, "--data", str(data), "--no-progress", "--workers", "0"])
    capsys.readouterr()
    return result["top1"]


@pytest.mark.slow
def test_the_command_writes_one_table_whose_ends_are_the_two_models_zero_shot_scores(workspace, tmp_path, capsys):
    root, output = workspace, tmp_path / "wise"
    summary = main(["wise-ft", "--model", str(root / "model"), "--fine-tuned", str(root / "tuned"), "--data",
                    str(root / "digits"), "--alphas", "0,0.5,1", "--output", str(output), "--no-progress",
                    "--workers", "0", "--save", "0.5"])  # fmt: skip
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((output / "wise_ft.csv").open()))
    assert [row["alpha"] for row in rows] == ["0.0", "0.5", "1.0"] and set(rows[0]) == {"alpha", "top1", "top5"}
    assert float(rows[0]["top1"]) == _zeroshot(str(root / "model"), root / "digits", capsys)
    assert float(rows[2]["top1"]) == _zeroshot(str(root / "tuned"), root / "digits", capsys)
    saved = tmp_path / "wise" / "model-alpha-0.5"
    assert summary["saved"] == str(saved)
    assert float(rows[1]["top1"]) == _zeroshot(str(saved), root / "digits", capsys)
    mixed = interpolated_model(unicl.load_model(root / "model"), unicl.load_model(root / "tuned"), 0.5)
    assert all(torch.equal(unicl.load_model(saved).state_dict()[n], t) for n, t in mixed.state_dict().items())
    table = (output / "wise_ft.md").read_text()
    assert printed == table and table.splitlines()[0] == "| α | top1 (%) | top5 (%) |"
    details = json.loads((output / "wise_ft.json").read_text())
    assert details["fine_tuned"] == str(root / "tuned") and len(details["rows"]) == 3


@pytest.mark.slow
def test_a_suite_scores_every_mix_and_a_rerun_skips_what_it_did(workspace, tmp_path, capsys):
    root = workspace
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"root": str(root), "entries": [
        {"name": "digits", "task": "zeroshot", "data": "digits"},
        {"name": "held-out", "task": "zeroshot", "data": "held-out", "metric": "top5"},
    ]}))  # fmt: skip
    arguments = ["wise-ft", "--model", str(root / "model"), "--fine-tuned", str(root / "tuned"), "--suite",
                 str(suite), "--alphas", "0,1", "--output", str(tmp_path / "out"), "--no-progress",
                 "--workers", "0"]  # fmt: skip
    main(arguments)
    rows = list(csv.DictReader((tmp_path / "out" / "wise_ft.csv").open()))
    assert [row["alpha"] for row in rows] == ["0.0", "1.0"] and list(rows[0]) == ["alpha", "digits", "held-out"]
    assert float(rows[1]["digits"]) == _zeroshot(str(root / "tuned"), root / "digits", capsys)
    main(arguments)
    assert capsys.readouterr().err.count("done before, skipped") == 4


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"--alphas": "0,x"}, "--alphas '0,x': expected numbers separated by commas"),
        ({"--alphas": "0,1,1"}, "--alphas '0,1,1': expected distinct finite numbers"),
        ({"--fine-tuned": "MISSING"}, "is not a directory (a training run's final/"),
        ({"--fine-tuned": "WIDER"}, "cannot be mixed with --model"),
        ({"--data": None}, "give the evaluation as --data"),
        ({"--suite": "SUITE"}, "give the evaluation as --data"),
        ({"--save": "nan"}, "--save 'nan': must be a finite mixing coefficient"),
    ],
)
def test_bad_inputs_are_one_line_naming_the_argument(workspace, tmp_path, capsys, change, words):
    root = workspace
    torch.manual_seed(0)
    unicl.create_model("unicl_tiny", embed_dim=32).save_pretrained(tmp_path / "wider")
    (tmp_path / "suite.json").write_text('{"entries": []}')
    places = {"MISSING": str(tmp_path / "missing"), "WIDER": str(tmp_path / "wider"),
              "SUITE": str(tmp_path / "suite.json")}  # fmt: skip
    options = {"--model": str(root / "model"), "--fine-tuned": str(root / "tuned"), "--data": str(root / "digits"),
               "--output": str(tmp_path / "out"), **change}  # fmt: skip
    argv = ["wise-ft", "--no-progress"]
    for name, value in options.items():
        if value is not None:
            argv += [name, places.get(value, value)]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("python -m unicl.evaluate wise-ft: error: ") and words in error[-1], error[-1]
    assert not (tmp_path / "out" / "wise_ft.csv").exists()


def test_the_help_answers_without_torch():
    probe = (
        "import sys\nfrom unicl.evaluate import main\ntry:\n    main(['wise-ft', '--help'])\nexcept SystemExit:\n"
        "    pass\nprint(sorted(n for n in ('torch', 'PIL') if n in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().endswith("[]"), result.stderr
    assert "--fine-tuned" in result.stdout and "--alphas" in result.stdout


@pytest.mark.slow
def test_a_start_other_than_the_fine_tuning_runs_is_warned_about(workspace, tmp_path, capsys):
    tuned = tmp_path / "tuned"
    shutil.copytree(workspace / "tuned", tuned)
    (tuned / "training.json").write_text(json.dumps({"options": {"model": "unicl_tiny", "pretrained": "start"}}))
    arguments = ["wise-ft", "--model", str(workspace / "model"), "--fine-tuned", str(tuned), "--data",
                 str(workspace / "digits"), "--alphas", "0", "--output", str(tmp_path / "out"), "--no-progress",
                 "--workers", "0"]  # fmt: skip
    main(arguments)
    assert f"warning: --fine-tuned {tuned} was trained from --model unicl_tiny --pretrained start" in (
        capsys.readouterr().err
    )
    (tuned / "training.json").write_text(json.dumps({"options": {"model": str(workspace / "model")}}))
    main(arguments)
    assert "warning" not in capsys.readouterr().err
    # A run's relative paths resolve in the directory it ran in, not in the one wise-ft runs in.
    ran_elsewhere = {"options": {"model": "model"}, "working_directory": str(workspace)}
    (tuned / "training.json").write_text(json.dumps(ran_elsewhere))
    main(arguments)
    assert "warning" not in capsys.readouterr().err
    (tuned / "training.json").write_text(json.dumps({"options": {"model": "model"}}))  # no directory: this one
    main(arguments)
    assert "warning: --fine-tuned" in capsys.readouterr().err
