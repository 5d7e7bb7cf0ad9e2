"""The zero-shot commands end to end on digits saved as PNG files, against the Python API."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.datasets import ImageFolder

import unicl
from unicl.evaluate import CaptionFile, retrieval_recall, zeroshot_accuracy
from unicl.prompts import DEFAULT_TEMPLATES
from unicl.tokenizer import Tokenizer

NAMES = ["zero", "one", "two", "three", "four", "five"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """An ImageFolder of real digits (32x32 RGB PNGs), a caption CSV over the same files, a saved model and a
    tokenizer file."""
    root = tmp_path_factory.mktemp("evaluate")
    digits = load_digits()
    rows = []
    for name_id, name in enumerate(NAMES):
        folder = root / "digits" / name
        folder.mkdir(parents=True)
        for index in (digits.target == name_id).nonzero()[0][:6]:
            pixels = (digits.images[index] * 255 / 16).astype("uint8")
            image = Image.fromarray(pixels).resize((32, 32), Image.NEAREST).convert("RGB")
            path = folder / f"{index}.png"
            image.save(path)
            rows.append((f"digits/{name}/{path.name}", f"a handwritten {name}"))
    rows.append((rows[0][0], "the digit zero, written by hand"))  # a second caption of one image
    with (root / "captions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    torch.manual_seed(0)
    model = unicl.create_model("unicl_tiny")
    model.save_pretrained(root / "model")
    corpus = [t.format(n) for t in DEFAULT_TEMPLATES for n in NAMES] + [caption for _, caption in rows]
    Tokenizer.train(corpus, vocab_size=600, context_length=16).tokenizer.save(str(root / "tokenizer.json"))
    return root


def _run(*arguments) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "unicl.evaluate", *map(str, arguments), "--workers", "0", "--device", "cpu"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_zeroshot_command_reports_what_the_python_api_computes(workspace):
    result = _run(
        "zeroshot", "--model", workspace / "model", "--data", workspace / "digits",
        "--tokenizer", workspace / "tokenizer.json", "--json", workspace / "zeroshot.json", "--batch-size", "7",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    reported = json.loads((workspace / "zeroshot.json").read_text())
    model = unicl.load_model(workspace / "model")
    tokenizer = Tokenizer.from_file(workspace / "tokenizer.json", context_length=16)
    dataset = ImageFolder(str(workspace / "digits"), transform=unicl.image_transform(model))
    expected = zeroshot_accuracy(model, dataset, dataset.classes, tokenizer, batch_size=5)
    assert reported == expected
    assert set(reported) == {"top1", "top5", "images", "classes"} and reported["images"] == 36
    assert 0.0 <= reported["top1"] <= reported["top5"] <= 1.0
    assert f"top1={expected['top1']:.4f}" in result.stdout


def test_class_names_file_and_preset_with_pretrained_weights(workspace):
    names = workspace / "names.txt"
    names.write_text("\n".join(sorted(NAMES)) + "\n")
    arguments = ["zeroshot", "--model", "unicl_tiny", "--pretrained", workspace / "model", "--data"]
    result = _run(*arguments, workspace / "digits", "--tokenizer", workspace / "tokenizer.json",
                  "--classnames", names, "--json", workspace / "named.json", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((workspace / "named.json").read_text()) == json.loads((workspace / "zeroshot.json").read_text())
    names.write_text("one\ntwo\n")
    result = _run(*arguments, workspace / "digits", "--tokenizer", workspace / "tokenizer.json", "--classnames", names)
    assert result.returncode != 0 and "has 2 names; the image folder has 6 classes" in result.stderr


def test_retrieval_command_reports_what_the_python_api_computes(workspace):
    result = _run(
        "retrieval", "--model", workspace / "model", "--captions", workspace / "captions.csv",
        "--tokenizer", workspace / "tokenizer.json", "--json", workspace / "retrieval.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    reported = json.loads((workspace / "retrieval.json").read_text())
    model = unicl.load_model(workspace / "model")
    tokenizer = Tokenizer.from_file(workspace / "tokenizer.json", context_length=16)
    captions = CaptionFile(workspace / "captions.csv", unicl.image_transform(model))
    assert reported == retrieval_recall(model, captions, tokenizer, batch_size=4)
    assert reported["images"] == 36 and reported["captions"] == 37
    for direction in ("image_to_text", "text_to_image"):
        recalls = [reported[f"{direction}_R@{k}"] for k in (1, 5, 10)]
        assert 0.0 <= recalls[0] <= recalls[1] <= recalls[2] <= 1.0


def test_retrieval_of_a_perfect_model_is_one():
    """Recall counts any caption of an image as a hit: with embeddings that pair each caption with its image, every
    recall is 1."""

    class Paired(torch.nn.Module):
        def encode_image(self, images):
            return images.flatten(1)[:, :4]

        def encode_text(self, ids, mask):
            return torch.nn.functional.one_hot(ids[:, 1] % 4, 4).float()

    class Captions:
        image_index = (0, 1, 2, 2)
        captions = ("a", "b", "c", "c2")

        def __len__(self):
            return 3

        def __getitem__(self, index):
            return torch.nn.functional.one_hot(torch.tensor(index), 4).float().reshape(1, 2, 2)

    class Ids:
        def __call__(self, texts):
            ids = torch.tensor([[0, {"a": 0, "b": 1, "c": 2, "c2": 2}[t]] for t in texts])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    results = retrieval_recall(Paired(), Captions(), Ids())  # type: ignore[arg-type]
    assert all(results[f"{d}_R@{k}"] == 1.0 for d in ("image_to_text", "text_to_image") for k in (1, 5, 10))


def test_bad_inputs_are_clear(workspace, tmp_path):
    result = _run("zeroshot", "--model", "unicl_tiny", "--data", tmp_path / "missing", "--tokenizer",
                  workspace / "tokenizer.json")  # fmt: skip
    assert result.returncode != 0 and "is not a directory" in result.stderr
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("path,text\nx.png,hello\n")
    with pytest.raises(ValueError, match="needs a header with an image column"):
        CaptionFile(bad_csv, unicl.image_transform("unicl_tiny"))
    missing_image = tmp_path / "missing.csv"
    missing_image.write_text("image,caption\nnowhere.png,hello\n")
    with pytest.raises(FileNotFoundError, match=r"image 'nowhere\.png' does not exist"):
        CaptionFile(missing_image, unicl.image_transform("unicl_tiny"))
