"""`unicl.training.TrainingConfig` and the command's parser are one list of options: every option is a field and
every field an option, with the same name, type, default and meaning; the checks name options as the command line
spells them, for a configuration built in Python too."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from unicl.train import build_parser, parse_config
from unicl.training.config import TrainingConfig, field_docs, flag
from unicl.training.options import check_options

REQUIRED = ["--model", "unicl_tiny", "--batch-size", "8", "--steps", "2", "--output", "run"]


def _actions() -> dict[str, argparse.Action]:
    return {action.dest: action for action in build_parser()._actions if action.dest != "help"}


def test_every_option_is_a_field_and_every_field_an_option_under_its_name():
    fields = {item.name: item for item in dataclasses.fields(TrainingConfig)}
    actions = _actions()
    assert list(actions) == list(fields)
    for name, action in actions.items():
        assert action.option_strings[0] == flag(name)
        assert action.required == (
            fields[name].default is dataclasses.MISSING and fields[name].default_factory is dataclasses.MISSING
        ), name


def test_the_options_defaults_are_the_fields_defaults():
    """The command with only the required options and Python with only the required fields run the same thing."""
    config = TrainingConfig(model="unicl_tiny", batch_size=8, steps=2, output=Path("run"))
    assert parse_config(REQUIRED) == config
    for name, action in _actions().items():
        if not action.required:
            assert action.default == getattr(config, name), name


def test_every_field_has_a_docstring_that_is_its_options_help():
    docs = field_docs()
    assert set(docs) == {item.name for item in dataclasses.fields(TrainingConfig)}
    for name, action in _actions().items():
        help_text = action.help.replace("%%", "%")
        assert help_text.lower() == docs[name].removesuffix(".").lower(), name


def test_a_parsed_command_line_is_the_configuration_built_in_python(tmp_path):
    arguments = [*REQUIRED, "--image-folder", "a", "--image-folder", "b", "--no-local-loss", "--tensorboard",
                 "--micro-batch", "4", "--lr", "1e-3", "--resume", "auto", "--eval-folder", "held-out"]  # fmt: skip
    expected = TrainingConfig(
        model="unicl_tiny", batch_size=8, steps=2, output="run", image_folder=["a", Path("b")], local_loss=False,
        tensorboard=True, micro_batch=4, lr=1e-3, resume="auto", eval_folder="held-out",
    )  # fmt: skip
    assert parse_config(arguments) == expected
    assert expected.output == Path("run") and expected.image_folder == [Path("a"), Path("b")]
    assert expected.eval_folder == Path("held-out")


def test_python_values_are_brought_to_each_fields_type():
    config = TrainingConfig(model="m", batch_size=8, steps=2, output="run", lr=1, captions=("c.csv",), resume=Path("x"))
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.captions == [Path("c.csv")] and config.resume == "x"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": "8"}, "--batch-size must be an int; got '8'"),
        ({"steps": 2.0}, "--steps must be an int; got 2.0"),
        ({"lr": True}, "--lr must be a number; got True"),
        ({"local_loss": 1}, "--local-loss must be True or False; got 1"),
        ({"image_folder": "digits"}, "--image-folder must be a list of paths; got 'digits'"),
        ({"model": None}, "--model must be a string; got None"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_the_option(tmp_path, changes, message):
    options = {"model": "unicl_tiny", "batch_size": 8, "steps": 2, "output": tmp_path, "image_folder": [tmp_path]}
    with pytest.raises(TypeError) as raised:
        check_options(TrainingConfig(**{**options, **changes}))
    assert str(raised.value) == message


def test_check_options_returns_the_run_with_the_ratio_decided_and_leaves_the_given_one(tmp_path):
    config = TrainingConfig(model="unicl_tiny", batch_size=8, steps=2, output=tmp_path, image_folder=[tmp_path])
    checked = check_options(config)
    assert checked.ratio == 1.0 and config.ratio is None
    assert dataclasses.replace(checked, ratio=None) == config
    with pytest.raises(ValueError, match=r"^--batch-size must be >= 1; got 0$"):
        check_options(dataclasses.replace(config, batch_size=0))
    with pytest.raises(TypeError, match=r"config must be a unicl\.training\.TrainingConfig; got Namespace"):
        check_options(argparse.Namespace(**vars(config)))  # type: ignore[arg-type]


def test_the_configuration_and_its_checks_load_no_torch():
    probe = (
        "import sys\n"
        "from unicl.training.config import TrainingConfig\n"
        "from unicl.training.options import check_options\n"
        "TrainingConfig(model='m', batch_size=1, steps=1, output='o')\n"
        "print(sorted(name for name in ('torch', 'numpy', 'PIL', 'timm') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_objective_is_an_option_softmax_by_default():
    assert parse_config(REQUIRED).loss == "softmax"
    assert parse_config([*REQUIRED, "--loss", "sigmoid"]).loss == "sigmoid"
    with pytest.raises(SystemExit):
        parse_config([*REQUIRED, "--loss", "hinge"])


def test_a_checkpoint_from_before_the_loss_option_resumes_as_the_softmax_run_it_was(tmp_path):
    """Options the checkpoint's run did not have yet count as their defaults: no spurious 'changed options'."""
    from unicl.training.state import changed_options, run_configuration

    config = TrainingConfig(model="unicl_tiny", batch_size=8, steps=2, output=tmp_path, image_folder=[tmp_path])
    stored = run_configuration(config)
    del stored["loss"]
    state = {"config": stored, "world_size": 1}
    assert changed_options(state, config, world_size=1) == []
    assert changed_options(state, dataclasses.replace(config, loss="sigmoid"), world_size=1) == ["loss"]


def test_the_logit_learning_rate_is_an_option_unset_by_default(tmp_path):
    assert parse_config(REQUIRED).logit_lr is None
    assert parse_config([*REQUIRED, "--logit-lr", "0.02"]).logit_lr == 0.02
    config = TrainingConfig(model="unicl_tiny", batch_size=8, steps=2, output=tmp_path, image_folder=[tmp_path])
    with pytest.raises(ValueError, match=r"^--logit-lr must be >= 0; got -0\.1$"):
        check_options(dataclasses.replace(config, logit_lr=-0.1))
