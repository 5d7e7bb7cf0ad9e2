"""The shipped prompt sets (against open_clip's copies of CLIP's lists), template files in their three formats,
per-class prompt mappings in the zero-shot classifier (against a float64 reference), and the data files in the
wheel."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from unicl.evaluation.zeroshot import build_zeroshot_classifier
from unicl.text.prompts import (
    CLASS_NAME_SETS,
    DEFAULT_TEMPLATES,
    PLAIN_TEMPLATES,
    TEMPLATE_SETS,
    check_class_prompts,
    check_templates,
    class_prompts,
    clip_templates,
    get_templates,
    imagenet_class_names,
    prompt_set_path,
    read_templates,
    unicl_templates,
)
from unicl.text.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "unicl" / "text" / "prompt_sets"


# --- the shipped sets ------------------------------------------------------------------------------------------------


def test_clip_lists_equal_open_clips():
    """A transcription error in our files fails here: open_clip holds the same lists as Python data."""
    metadata = pytest.importorskip("open_clip.zero_shot_metadata", reason="open_clip is not installed")
    assert imagenet_class_names("clip") == list(metadata.IMAGENET_CLASSNAMES)
    assert clip_templates() == tuple(template("{}") for template in metadata.OPENAI_IMAGENET_TEMPLATES)


def test_unicl_sets_are_clips_with_their_documented_differences():
    clip_names, unicl_names = imagenet_class_names("clip"), imagenet_class_names("unicl")
    assert len(clip_names) == len(unicl_names) == 1000
    differences = {i: (a, b) for i, (a, b) in enumerate(zip(clip_names, unicl_names)) if a != b}
    assert differences == {744: ("missile", "projectile"), 837: ("sunglasses", "dark glasses")}
    assert clip_names[657] == "missile" and clip_names[836] == "sunglasses"
    assert len(set(unicl_names)) == 1000 and len(set(clip_names)) == 998
    assert len(clip_templates()) == 80 and len(set(clip_templates())) == 80
    assert unicl_templates() == ("{}.", *clip_templates())
    assert check_templates(unicl_templates()) == unicl_templates()
    assert all(name == name.strip() and name and "," not in name and "_" not in name for name in unicl_names)


def test_each_call_returns_a_fresh_list_of_names():
    names = imagenet_class_names()
    names[0] = "changed"
    assert imagenet_class_names()[0] == "tench"
    with pytest.raises(ValueError, match=r"^source must be one of clip, unicl; got 'openai'$"):
        imagenet_class_names("openai")
    assert CLASS_NAME_SETS == ("clip", "unicl")


def test_shipped_files_read_back_through_the_file_readers():
    from unicl.data.datasets import read_class_names

    assert read_class_names(prompt_set_path("imagenet_classes_clip.txt"), 1000) == imagenet_class_names("clip")
    assert read_templates(prompt_set_path("imagenet_templates_unicl.txt")) == unicl_templates()
    assert read_templates(prompt_set_path("imagenet_templates_clip.txt")) == clip_templates()
    with pytest.raises(FileNotFoundError, match=r"^no shipped prompt-set file 'x.txt'; the files are "):
        prompt_set_path("x.txt")


def test_get_templates_names_and_files(tmp_path, monkeypatch):
    assert TEMPLATE_SETS == ("default", "plain", "clip", "unicl")
    assert get_templates("default") == DEFAULT_TEMPLATES and get_templates("plain") == PLAIN_TEMPLATES
    assert get_templates("clip") == clip_templates() and get_templates("unicl") == unicl_templates()
    monkeypatch.chdir(tmp_path)
    Path("clip").write_text("art of a {}.\n")
    assert get_templates("clip") == clip_templates()  # the name wins ...
    assert get_templates("./clip") == ("art of a {}.",)  # ... and a path reaches the file
    with pytest.raises(FileNotFoundError, match=r"^templates 'nope' is neither a template set \(default, plain, cl"):
        get_templates("nope")


# --- template files --------------------------------------------------------------------------------------------------

_WORD = st.text(st.sampled_from("abcdefgh -.'"), min_size=0, max_size=12)
_TEMPLATE = st.builds(lambda a, b: (a + "{}" + b).strip(), _WORD, _WORD)


@given(st.lists(_TEMPLATE, min_size=1, max_size=8))
def test_text_and_json_lists_read_back(tmp_path_factory, templates):
    folder = tmp_path_factory.mktemp("templates")
    (folder / "t.txt").write_text("\n\n".join(f"  {t}  " for t in templates) + "\n")
    (folder / "t.json").write_text(json.dumps(templates))
    assert read_templates(folder / "t.txt") == tuple(templates)
    assert read_templates(folder / "t.json") == tuple(templates)


def test_a_json_mapping_reads_as_per_class_prompts(tmp_path):
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps({"cat": ["A cat sleeps.", " A small cat}."], "dog": ["A dog barks."]}))
    assert read_templates(path) == {"cat": ("A cat sleeps.", " A small cat}."), "dog": ("A dog barks.",)}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.txt", "\n  \n", r" has no templates \(one per line, each with one '\{\}'\)$"),
        ("two.txt", "a {}.\n\nart of {} {}.\n", r" line 3: each template needs exactly one '\{\}' slot"),
        ("none.txt", "a photo.\n", r" line 1: each template needs exactly one '\{\}' slot"),
        ("bad.json", "[1, 2", " is not valid JSON: "),
        ("empty.json", "[]", " has no templates$"),
        ("scalar.json", '"a {}."', " must hold a JSON list of templates or an object mapping class names to prompt"),
        ("entry.json", '["a {}.", 3]', " entry 1: each template must be a str; got int 3$"),
        ("object.json", "{}", ": a per-class mapping must be a non-empty mapping of class names to prompt lists$"),
        ("string.json", '{"cat": "A cat."}', ": class 'cat' must map to a non-empty list of prompts; got 'A cat.'$"),
        ("nothing.json", '{"cat": []}', r": class 'cat' must map to a non-empty list of prompts; got \[\]$"),
        ("slot.json", '{"cat": ["a {}."]}', ": per-class prompts are complete sentences, but class 'cat' has 'a"),
        ("blank.json", '{"cat": [" "]}', ": class 'cat' has a prompt that is not a non-empty string: ' '$"),
        ("nested.json", '{"imagenet1k": {"cat": ["A cat."]}}', ": class 'imagenet1k' maps to a mapping, not a list"),
    ],
)
def test_bad_template_files_get_one_line_naming_the_problem(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=rf"^templates file '[^']*{name}'{message}") as raised:
        read_templates(tmp_path / name)
    assert "\n" not in str(raised.value)


def test_a_missing_template_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^templates file '.*missing.txt' does not exist$"):
        read_templates(tmp_path / "missing.txt")


# --- per-class prompts -----------------------------------------------------------------------------------------------


def test_classes_are_found_by_name_then_synonyms():
    prompts = {"tench": ["A tench."], "golden retriever": ["A dog."], "cat": ["A cat."], "unused": ["-"]}
    names = ["tench, Tinca tinca", "golden_retriever", ["kitty", "cat"]]
    assert class_prompts(names, prompts) == [["A tench."], ["A dog."], ["A cat."]]
    exact = {"tench, Tinca tinca": ["exact"], "tench": ["synonym"]}
    assert class_prompts(["tench, Tinca tinca"], exact) == [["exact"]]
    with pytest.raises(ValueError, match=r"^templates: the per-class mapping has no prompts for class 1 'dog' \(it h"):
        class_prompts(["cat", "dog"], {"cat": ["A cat."]})
    with pytest.raises(ValueError, match=r"^templates: class names must be non-empty strings; got 3$"):
        check_class_prompts({3: ["A cat."]})  # type: ignore[dict-item]


class _BagOfTokens(torch.nn.Module):
    """A text encoder whose float64 reference is easy to write: the mean of the embeddings under the mask."""

    def __init__(self, vocab: int, width: int = 6) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, width)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask[..., None].to(self.embedding.weight.dtype)
        return (self.embedding(input_ids) * mask).sum(1) / mask.sum(1)


@given(st.data())
def test_per_class_prompts_make_each_class_the_mean_of_its_own(data):
    words = ["cat", "dog", "bird", "fish", "small", "big", "photo", "drawing"]
    classes = data.draw(st.lists(st.sampled_from(words[:4]), min_size=1, max_size=4, unique=True))
    sentence = st.lists(st.sampled_from(words), min_size=1, max_size=5).map(" ".join)
    prompts = {name: data.draw(st.lists(sentence, min_size=1, max_size=4)) for name in classes}
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(words, vocab_size=270, context_length=8)
    model = _BagOfTokens(tokenizer.vocab_size)
    classifier = build_zeroshot_classifier(model, tokenizer, classes, prompts, batch_size=3)
    reference = model.double()
    expected = []
    for name in classes:
        batch = tokenizer(prompts[name])
        encoded = F.normalize(reference.encode_text(batch["input_ids"], batch["attention_mask"]), dim=-1)
        expected.append(F.normalize(encoded.mean(0), dim=0))
    model.float()
    assert classifier.dtype == torch.float32
    torch.testing.assert_close(classifier.double(), torch.stack(expected), rtol=0, atol=1e-6)


@given(st.lists(st.sampled_from(["a {}.", "art of the {}.", "a photo of my {}.", "{}."]), min_size=1, max_size=4))
def test_a_mapping_of_filled_templates_equals_the_templates(templates):
    classes = ["cat", "dog", "bird"]
    tokenizer = Tokenizer.train(["a photo of my cat dog bird art the"], vocab_size=270, context_length=10)
    torch.manual_seed(1)
    model = _BagOfTokens(tokenizer.vocab_size)
    filled = {name: [t.format(name) for t in templates] for name in classes}
    by_templates = build_zeroshot_classifier(model, tokenizer, classes, templates)
    assert torch.equal(build_zeroshot_classifier(model, tokenizer, classes, filled), by_templates)
    with pytest.raises(ValueError, match=r"^templates: the per-class mapping has no prompts for class 2 'bird'"):
        build_zeroshot_classifier(model, tokenizer, classes, {k: filled[k] for k in classes[:2]})


# --- packaging -------------------------------------------------------------------------------------------------------


def test_package_data_globs_cover_every_shipped_file():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["unicl"]
    shipped = sorted(path.relative_to(ROOT / "unicl").as_posix() for path in DATA.iterdir())
    assert shipped and all(any(fnmatch.fnmatch(name, glob) for glob in globs) for name in shipped), shipped


def test_the_wheel_holds_the_prompt_sets(tmp_path):
    """Build a wheel from a copy of the project (nothing written into the working tree, no build isolation so
    nothing is downloaded) and read the data back from inside it."""
    pytest.importorskip("build", reason="the build package (dev extra) is not installed")
    source = tmp_path / "source"
    shutil.copytree(ROOT / "unicl", source / "unicl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    command = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), "."]
    result = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("unicl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for path in DATA.iterdir():
            member = f"unicl/text/prompt_sets/{path.name}"
            assert member in names, member
            assert archive.read(member) == path.read_bytes()


def test_the_evaluation_command_s_torch_free_set_names_are_the_shipped_ones():
    """`unicl.evaluation.names` offers the sets to the command's parser and the suite reader without torch."""
    from unicl.evaluation import names

    assert set(names.CLASSNAMES_OPTIONS.values()) == set(CLASS_NAME_SETS)
    for source in names.CLASSNAMES_OPTIONS.values():
        assert len(imagenet_class_names(source)) == 1000
