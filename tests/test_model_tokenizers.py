"""A model and its tokenizer: ``Tokenizer.save``/``from_pretrained``, ``save_pretrained(..., tokenizer=)``,
``get_tokenizer`` for every kind of source, and ``check_tokenizer_fits``."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unicl
from unicl.models import check_tokenizer_fits, get_config, model_tokenizer, preset_tokenizer
from unicl.text.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer

CORPUS = [f"a photo of a {name}." for name in ("cat", "dog", "seven", "zero", "bird")] + ["a blurry sketch of it"]


@pytest.fixture(scope="module")
def trained():
    return Tokenizer.train(CORPUS, vocab_size=300, context_length=12)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(text=st.text(max_size=40))
def test_a_saved_trained_tokenizer_gives_the_same_ids_for_any_text(tmp_path_factory, trained, text):
    again = Tokenizer.from_pretrained(trained.save(tmp_path_factory.mktemp("saved")))
    first, second = trained(text), again(text)
    assert torch.equal(first["input_ids"], second["input_ids"])
    assert torch.equal(first["attention_mask"], second["attention_mask"])


def test_a_saved_clip_tokenizer_keeps_its_clean_up_and_special_tokens(tmp_path):
    clip = Tokenizer.clip(context_length=20)
    again = Tokenizer.from_pretrained(clip.save(tmp_path))
    text = ["Hello,   World! &amp; <b>UniCL</b>", "A PHOTO of a Dog."]
    assert torch.equal(again(text)["input_ids"], clip(text)["input_ids"])
    assert (again.start_id, again.end_id, again.context_length) == (49406, 49407, 20)
    assert json.loads((tmp_path / TOKENIZER_CONFIG_FILE).read_text())["clean"] == "clip"


def test_a_custom_clean_up_cannot_be_saved(tmp_path, trained):
    custom = Tokenizer(trained.tokenizer, 12, clean=str.upper)
    with pytest.raises(ValueError, match="custom clean"):
        custom.save(tmp_path)


@pytest.mark.parametrize(
    ("settings_text", "words"),
    [("[1, 2]", "not a JSON object"), ("{", "not a tokenizer configuration"), ('{"colour": 1}', "unknown setting"),
     ('{"clean": "lower"}', "clean must be null or 'clip'")],
)  # fmt: skip
def test_bad_tokenizer_configurations_name_the_problem(tmp_path, trained, settings_text, words):
    trained.save(tmp_path)
    (tmp_path / TOKENIZER_CONFIG_FILE).write_text(settings_text)
    with pytest.raises(ValueError, match=words):
        Tokenizer.from_pretrained(tmp_path)


def test_get_tokenizer_reads_a_model_directory_saved_with_its_tokenizer(tmp_path, trained):
    model = unicl.create_model("unicl_tiny")
    model.save_pretrained(tmp_path, tokenizer=trained)
    assert {TOKENIZER_FILE, TOKENIZER_CONFIG_FILE} <= {path.name for path in tmp_path.iterdir()}
    found = unicl.get_tokenizer(tmp_path)
    assert found.context_length == 12 and torch.equal(found(CORPUS)["input_ids"], trained(CORPUS)["input_ids"])
    assert unicl.get_tokenizer(tmp_path / TOKENIZER_FILE).vocab_size == trained.vocab_size
    assert unicl.get_tokenizer(tmp_path, context_length=8).context_length == 8


@pytest.mark.slow
def test_get_tokenizer_of_presets_clip_and_directories_without_one(tmp_path):
    assert preset_tokenizer("unicl_swin_tiny") == "clip" and preset_tokenizer("unicl_tiny") == "trained"
    swin = unicl.get_tokenizer("unicl_swin_tiny")
    assert swin.vocab_size == 49408 and swin.context_length == get_config("unicl_swin_tiny").text.context_length
    assert unicl.get_tokenizer("clip").context_length == 77
    with pytest.raises(ValueError, match="unicl_tiny's tokenizer is trained on each run's own text"):
        unicl.get_tokenizer("unicl_tiny")
    # A model saved without a tokenizer: CLIP's BPE when its text tower embeds CLIP's ids, else a clear error.
    clip_sized = unicl.create_model("unicl_tiny", text={"vocab_size": 49408})
    clip_sized.save_pretrained(tmp_path / "clip-sized")
    assert unicl.get_tokenizer(tmp_path / "clip-sized").context_length == 16
    unicl.create_model("unicl_tiny").save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match="saved without its tokenizer and its text tower embeds 1000 ids"):
        unicl.get_tokenizer(tmp_path / "small")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds neither a tokenizer\.json nor a saved model"):
        unicl.get_tokenizer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither a saved model directory, a preset"):
        unicl.get_tokenizer(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="unknown model"):
        preset_tokenizer("resnet")


def test_check_tokenizer_fits_names_the_argument_and_the_model(trained):
    config = get_config("unicl_tiny")
    check_tokenizer_fits(trained, config)
    with pytest.raises(ValueError, match=r"^--tokenizer has 49408 ids but unicl_tiny's text tower embeds 1000;"):
        check_tokenizer_fits(Tokenizer.clip(16), config, model_name="unicl_tiny")
    with pytest.raises(ValueError, match="makes rows of 77 tokens but the model's text tower reads at most 16"):
        check_tokenizer_fits(Tokenizer.clip(), get_config("unicl_tiny", text={"vocab_size": 49408}))


def test_save_pretrained_refuses_a_foreign_tokenizer(tmp_path):
    with pytest.raises(TypeError, match=r"tokenizer must be a unicl\.text\.tokenizer\.Tokenizer"):
        unicl.create_model("unicl_tiny").save_pretrained(tmp_path, tokenizer=object())  # type: ignore[arg-type]


def test_model_tokenizer_follows_pretrained_weights_to_their_tokenizer(tmp_path, trained):
    """What the commands' --model/--pretrained pair reads: a saved directory's own tokenizer, the one saved beside a
    .safetensors file or in a weights directory, CLIP's for released checkpoints, the preset's otherwise."""
    clip_sized = unicl.create_model("unicl_tiny", text={"vocab_size": 49408})
    clip_sized.save_pretrained(tmp_path / "run", tokenizer=trained)
    for weights in (tmp_path / "run", tmp_path / "run" / "model.safetensors"):
        found = model_tokenizer("unicl_swin_tiny", weights)
        assert found.tokenizer.to_str() == trained.tokenizer.to_str()
    assert model_tokenizer(tmp_path / "run").tokenizer.to_str() == trained.tokenizer.to_str()
    assert model_tokenizer("unicl_swin_tiny", tmp_path / "release.pth").vocab_size == 49408
    unicl.create_model("unicl_tiny").save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match=r"have no tokenizer\.json with them, and unicl_tiny's tokenizer is trained"):
        model_tokenizer("unicl_tiny", tmp_path / "bare" / "model.safetensors")
