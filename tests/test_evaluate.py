"""The evaluation commands end to end on digits saved as PNG files, against the Python API and independent
references (scikit-learn, a numpy 11-point AP, brute-force recall), and every bad input as one line."""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from torchvision.datasets import ImageFolder

import unicl
import unicl.evaluate
import unicl.evaluation.probe
import unicl.evaluation.zeroshot
from unicl.data.datasets import CaptionPairs
from unicl.evaluate import build_parser, main
from unicl.evaluation.inference import InferenceOptions
from unicl.evaluation.label_files import MultiLabelImages
from unicl.evaluation.probe import run_linear_probe
from unicl.evaluation.retrieval import retrieval_recall
from unicl.evaluation.zeroshot import build_zeroshot_classifier, zeroshot_accuracy, zeroshot_scores
from unicl.text.prompts import DEFAULT_TEMPLATES
from unicl.text.tokenizer import Tokenizer

NAMES = ["zero", "one", "two", "three", "four", "five"]
SHAPES = {"zero": ["round"], "one": ["straight"], "two": ["curved"], "three": ["curved"], "four": ["straight"],
          "five": ["curved", "straight"]}  # fmt: skip


def _save_digit(pixels, path: Path) -> None:
    Image.fromarray((pixels * 255 / 16).astype("uint8")).resize((32, 32), Image.NEAREST).convert("RGB").save(path)


def make_workspace(root: Path) -> Path:
    """Real digits written as: an ImageFolder (6 classes x 6 images), a second split of it (6 x 4), a two-class
    folder, a labels CSV (multi-label: shape words per digit), a caption CSV (one image with two captions), a
    tokenizer trained on the prompts and captions, and a model saved with it."""
    digits = load_digits()
    captions, labels = [], []
    for class_id, name in enumerate(NAMES):
        indices = (digits.target == class_id).nonzero()[0]
        for split, chosen in (("digits", indices[:6]), ("held-out", indices[6:10])):
            (root / split / name).mkdir(parents=True)
            for index in chosen:
                _save_digit(digits.images[index], root / split / name / f"{index}.png")
                if split == "digits":
                    captions.append((f"digits/{name}/{index}.png", f"a handwritten {name}"))
                    labels.append((f"digits/{name}/{index}.png", ";".join(SHAPES[name])))
        if name in ("zero", "one"):
            (root / "binary" / name).mkdir(parents=True)
            for index in indices[:8]:
                _save_digit(digits.images[index], root / "binary" / name / f"{index}.png")
    captions.append((captions[0][0], "the digit zero, written by hand"))  # a second caption of one image
    for file_name, header, rows in (("captions.csv", "caption", captions), ("labels.csv", "labels", labels)):
        with (root / file_name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", header])
            writer.writerows(rows)
    words = [*NAMES, "round", "straight", "curved"]
    corpus = [t.format(n) for t in DEFAULT_TEMPLATES for n in words] + [caption for _, caption in captions]
    tokenizer = Tokenizer.train(corpus, vocab_size=600, context_length=16)
    tokenizer.tokenizer.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    unicl.create_model("unicl_tiny").save_pretrained(root / "model", tokenizer=tokenizer)
    return root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("evaluate"))


def _main(*arguments) -> dict:
    """The command in this process (its options as a user types them), on the CPU without workers."""
    return main([*map(str, arguments), "--workers", "0", "--device", "cpu", "--no-progress"])


def _api_scores(workspace, dataset, class_names, templates=DEFAULT_TEMPLATES):
    model = unicl.load_model(workspace / "model")
    tokenizer = unicl.get_tokenizer(workspace / "model")
    dataset.transform = unicl.image_transform(model)
    classifier = build_zeroshot_classifier(model.eval(), tokenizer, class_names, templates)
    return zeroshot_scores(model, dataset, classifier, inference=InferenceOptions(batch_size=5))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1; got 0"),
        ({"batch_size": 2.0}, TypeError, "batch_size must be an int >= 1; got float 2.0"),
        ({"workers": -1}, ValueError, "workers must be an int >= 0; got -1"),
        ({"device": "gpu:0"}, ValueError, "device must be a torch.device or a device name such as 'cuda:0'; got 'gpu"),
        ({"precision": "fp16"}, ValueError, "precision must be one of 'fp32', 'bf16'; got 'fp16'"),
        ({"progress": 1}, TypeError, "progress must be a bool; got int"),
    ],
)
def test_bad_inference_options_give_one_line(options, error, message):
    with pytest.raises(error, match=re.escape(message)) as caught:
        InferenceOptions(**options)
    assert "\n" not in str(caught.value)


def test_every_evaluation_refuses_options_that_are_not_inference_options(workspace):
    model = unicl.load_model(workspace / "model")
    tokenizer = unicl.get_tokenizer(workspace / "model")
    dataset = ImageFolder(str(workspace / "digits"), transform=unicl.image_transform(model))
    options = {"batch_size": 5}
    for call in (
        lambda: zeroshot_accuracy(model, dataset, dataset.classes, tokenizer, inference=options),
        lambda: zeroshot_scores(model, dataset, torch.zeros(10, 8), inference=options),
        lambda: retrieval_recall(model, CaptionPairs.__new__(CaptionPairs), tokenizer, inference=options),
        lambda: run_linear_probe(model, dataset, dataset, inference=options),
    ):
        with pytest.raises(TypeError, match=r"^inference must be an InferenceOptions; got dict$"):
            call()  # type: ignore[arg-type]


def test_inference_options_keep_a_torch_device():
    assert InferenceOptions(device="cpu").device == torch.device("cpu")
    assert InferenceOptions(device=torch.device("cpu")) == InferenceOptions()


def test_zeroshot_command_reports_what_the_python_api_computes(workspace, capsys):
    reported = _main("zeroshot", "--model", workspace / "model", "--data", workspace / "digits",
                     "--json", workspace / "zeroshot.json", "--batch-size", "7")  # fmt: skip
    assert json.loads((workspace / "zeroshot.json").read_text()) == reported
    model = unicl.load_model(workspace / "model")
    tokenizer = unicl.get_tokenizer(workspace / "model")  # the model's own, the command's default
    dataset = ImageFolder(str(workspace / "digits"), transform=unicl.image_transform(model))
    expected = zeroshot_accuracy(model, dataset, dataset.classes, tokenizer, inference=InferenceOptions(batch_size=5))
    assert reported == expected
    assert set(reported) == {"top1", "top5", "metric", "images", "classes"} and reported["images"] == 36
    assert 0.0 <= reported["top1"] <= reported["top5"] <= 1.0 and reported["metric"] == "top1"
    assert f"top1={expected['top1']:.4f}" in capsys.readouterr().out
    # An explicit tokenizer file with the same vocabulary gives the same numbers.
    assert _main("zeroshot", "--model", workspace / "model", "--data", workspace / "digits",
                 "--tokenizer", workspace / "tokenizer.json") == expected  # fmt: skip


def test_class_names_file_and_preset_with_pretrained_weights(workspace, capsys):
    names = workspace / "names.txt"
    names.write_text("\n".join(sorted(NAMES)) + "\n")  # the folders' own names, in folder order
    preset = ["zeroshot", "--model", "unicl_tiny", "--pretrained", workspace / "model"]
    # The tokenizer: the --pretrained directory's own.
    with_names = _main(*preset, "--data", workspace / "digits", "--classnames", names)
    assert with_names == _main("zeroshot", "--model", workspace / "model", "--data", workspace / "digits")


def test_weights_file_of_a_run_brings_the_tokenizer_saved_beside_it(workspace, tmp_path):
    """The review's fault: ``--pretrained RUN/final/model.safetensors`` looked for a tokenizer only inside a directory,
    so unicl_tiny (whose tokenizer is trained per run) was refused, and a CLIP-tokenizer preset would have read the
    weights' text with CLIP's BPE instead of the tokenizer saved beside them."""
    weights = workspace / "model" / "model.safetensors"
    from_file = _main("zeroshot", "--model", "unicl_tiny", "--pretrained", weights, "--data", workspace / "binary")
    model = unicl.load_model(workspace / "model")
    tokenizer = Tokenizer.from_file(workspace / "tokenizer.json", context_length=16)  # what the model was saved with
    dataset = ImageFolder(str(workspace / "binary"), transform=unicl.image_transform(model))
    assert from_file == zeroshot_accuracy(model, dataset, dataset.classes, tokenizer)
    # A CLIP-vocabulary text tower (unicl_swin_tiny's) saved with a small trained tokenizer: CLIP's BPE would fit
    # its embedding, so nothing but the rule stops the wrong tokenizer; the saved one must be read.
    torch.manual_seed(0)
    clip_sized = unicl.create_model("unicl_tiny", text={"vocab_size": 49408})
    clip_sized.save_pretrained(tmp_path / "run" / "final", tokenizer=tokenizer)
    weights = tmp_path / "run" / "final" / "model.safetensors"
    args = build_parser().parse_args(["zeroshot", "--model", "unicl_tiny", "--pretrained", str(weights), "--data", "x"])
    chosen = unicl.evaluate._tokenizer(args, clip_sized)
    assert chosen.vocab_size == tokenizer.vocab_size < 49408
    texts = ["a photo of a zero.", "the digit five, written by hand"]
    assert torch.equal(chosen(texts)["input_ids"], tokenizer(texts)["input_ids"])


def test_class_names_are_counted_against_the_dataset_before_any_image_is_read(workspace, monkeypatch):
    model = unicl.load_model(workspace / "model")
    dataset = ImageFolder(str(workspace / "digits"), transform=unicl.image_transform(model))
    reads = []
    loader = dataset.loader
    dataset.loader = lambda path: reads.append(path) or loader(path)
    with pytest.raises(ValueError, match=r"^dataset has 6 classes but 5 class names were given$"):
        zeroshot_accuracy(model, dataset, NAMES[:5], unicl.get_tokenizer(workspace / "model"))
    assert reads == []


@pytest.mark.slow
def test_zeroshot_metrics_equal_scikit_learn_and_a_numpy_reference(workspace):
    folder = ImageFolder(str(workspace / "digits"))
    scores, targets = _api_scores(workspace, folder, folder.classes)
    reported = _main("zeroshot", "--model", workspace / "model", "--data", workspace / "digits",
                     "--metric", "mean_per_class_recall")  # fmt: skip
    assert reported["metric"] == "mean_per_class_recall"
    expected = balanced_accuracy_score(targets.numpy(), scores.argmax(1).numpy())
    assert reported["mean_per_class_recall"] == pytest.approx(expected, abs=1e-12)

    binary = ImageFolder(str(workspace / "binary"))
    scores, targets = _api_scores(workspace, binary, binary.classes)
    reported = _main("zeroshot", "--model", workspace / "model", "--data", workspace / "binary", "--metric", "roc_auc")
    expected = roc_auc_score(targets.numpy(), (scores[:, 1] - scores[:, 0]).double().numpy())
    assert reported["roc_auc"] == pytest.approx(expected, abs=1e-12) and "top5" not in reported

    multilabel = MultiLabelImages(workspace / "labels.csv")
    assert multilabel.classes == ["curved", "round", "straight"] and multilabel.targets.sum() == 42
    scores, targets = _api_scores(workspace, multilabel, multilabel.classes)
    reported = _main("zeroshot", "--model", workspace / "model", "--data", workspace / "labels.csv")
    assert reported["metric"] == "map_11_point" and set(reported) == {"map_11_point", "metric", "images", "classes"}
    assert reported["map_11_point"] == pytest.approx(_numpy_11_point_map(scores.numpy(), targets.numpy()), abs=1e-12)


def _numpy_11_point_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """VOC2007's devkit rule in float64: per class, the mean over t in 0, 0.1, ..., 1 of the best precision at a
    recall >= t, samples taken one at a time in score order (no ties in these scores)."""
    precisions = []
    for c in range(scores.shape[1]):
        order = np.argsort(-scores[:, c], kind="stable")
        hits = targets[order, c].astype(np.float64)
        tp = np.cumsum(hits)
        precision, recall = tp / np.arange(1, len(hits) + 1), tp / hits.sum()
        precisions.append(np.mean([precision[recall >= t].max(initial=0.0) for t in np.linspace(0, 1, 11)]))
    return float(np.mean(precisions))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sets(st.sampled_from(["dog", "person", "train", "cat", "tv monitor"])), min_size=1,
                max_size=8), st.booleans())  # fmt: skip
def test_a_labels_file_reads_back_its_label_sets(tmp_path_factory, label_sets, tsv):
    root = tmp_path_factory.mktemp("labels")
    Image.new("RGB", (4, 4)).save(root / "x.png")
    separator = "\t" if tsv else ","
    lines = [f"filepath{separator}labels"] + [f"x.png{separator}{' ; '.join(sorted(labels))}" for labels in label_sets]
    path = root / ("labels.tsv" if tsv else "labels.csv")
    path.write_text("\n".join(lines) + "\n")
    if not any(label_sets):
        with pytest.raises(ValueError, match="has no labels"):
            MultiLabelImages(path)
        return
    images = MultiLabelImages(path)
    assert images.classes == sorted(set().union(*label_sets))
    assert [{images.classes[c] for c in row.nonzero()[:, 0].tolist()} for row in images.targets] == label_sets
    assert len(images) == len(label_sets) and images.image_paths[0] == (root / "x.png").resolve()


def test_templates_file_is_used(workspace, tmp_path, monkeypatch):
    templates = tmp_path / "templates.txt"
    templates.write_text("a drawing of the digit {}.\n{}, handwritten.\n")
    used = []

    def recording(model, tokenizer, class_names, templates, **options):
        used.append(list(templates))
        return build_zeroshot_classifier(model, tokenizer, class_names, templates, **options)

    monkeypatch.setattr(unicl.evaluation.zeroshot, "build_zeroshot_classifier", recording)
    reported = _main("zeroshot", "--model", workspace / "model", "--data", workspace / "digits",
                     "--templates", templates)  # fmt: skip
    assert used == [["a drawing of the digit {}.", "{}, handwritten."]]
    folder = ImageFolder(str(workspace / "digits"))
    scores, targets = _api_scores(workspace, folder, folder.classes, used[0])
    assert reported["top1"] == pytest.approx(float((scores.argmax(1) == targets).double().mean()), abs=1e-12)
    _main("zeroshot", "--model", workspace / "model", "--data", workspace / "digits")
    assert used[1] == list(DEFAULT_TEMPLATES)


def test_a_per_class_prompt_mapping_is_used(workspace, tmp_path):
    mapping = {name: [f"A handwritten {name}.", f"The digit {name}, drawn."] for name in NAMES}
    (tmp_path / "prompts.json").write_text(json.dumps(mapping))
    reported = _main("zeroshot", "--model", workspace / "model", "--data", workspace / "digits",
                     "--templates", tmp_path / "prompts.json", "--metric", "mean_per_class_recall")  # fmt: skip
    folder = ImageFolder(str(workspace / "digits"))
    scores, targets = _api_scores(workspace, folder, folder.classes, mapping)
    expected = balanced_accuracy_score(targets.numpy(), scores.argmax(1).numpy())
    assert reported["mean_per_class_recall"] == pytest.approx(expected, abs=1e-12)


def test_retrieval_command_reports_what_the_python_api_computes(workspace):
    reported = _main("retrieval", "--model", workspace / "model", "--captions", workspace / "captions.csv",
                     "--json", workspace / "retrieval.json")  # fmt: skip
    model = unicl.load_model(workspace / "model")
    captions = CaptionPairs(workspace / "captions.csv", unicl.image_transform(model))
    tokenizer = unicl.get_tokenizer(workspace / "model")
    assert reported == retrieval_recall(model, captions, tokenizer, inference=InferenceOptions(batch_size=4))
    assert reported["images"] == 36 and reported["captions"] == 37
    for direction in ("image_to_text", "text_to_image"):
        recalls = [reported[f"{direction}_R@{k}"] for k in (1, 5, 10)]
        assert 0.0 <= recalls[0] <= recalls[1] <= recalls[2] <= 1.0


def test_one_caption_dataset_serves_pairs_and_distinct_images(tmp_path):
    """`CaptionPairs` is every row as an (image, caption) pair (training) and, by ``images``, every distinct image
    once with ``image_index`` pointing each row's caption at it (retrieval), also across files."""
    for shade in (0, 1, 2):
        Image.new("RGB", (4, 4), (80 * shade, 0, 0)).save(tmp_path / f"{shade}.png")
    (tmp_path / "a.csv").write_text("image,caption\n0.png,dark\n1.png,red\n0.png,black\n")
    (tmp_path / "b.tsv").write_text("filepath\ttitle\n2.png\tbright\n1.png\tcrimson\n")
    to_tensor = lambda image: torch.tensor(image.getpixel((0, 0)))  # noqa: E731
    pairs = CaptionPairs([tmp_path / "a.csv", tmp_path / "b.tsv"], to_tensor)
    assert len(pairs) == 5 and pairs.captions == ["dark", "red", "black", "bright", "crimson"]
    assert pairs.image_paths == [(tmp_path / f"{shade}.png").resolve() for shade in (0, 1, 2)]
    assert pairs.image_index == [0, 1, 0, 2, 1]
    images = pairs.images
    assert len(images) == 3
    for row in range(len(pairs)):
        image, caption = pairs[row]
        assert caption == pairs.captions[row]
        assert torch.equal(image, images[pairs.image_index[row]])
    assert [int(images[i][0]) for i in range(3)] == [0, 80, 160]
    # One file as a path, as the retrieval command reads it; the transform may come later (after the model).
    one = CaptionPairs(tmp_path / "a.csv")
    assert len(one) == 3 and len(one.images) == 2
    with pytest.raises(RuntimeError, match="transform is not set"):
        one.images[0]
    one.transform = to_tensor
    assert torch.equal(one.images[1], torch.tensor([80, 0, 0]))
    with pytest.raises(ValueError, match="non-empty sequence"):
        CaptionPairs([], to_tensor)


class _Lookup(torch.nn.Module):
    """Fixed embeddings: image ``i`` is ``images[i]``, a caption with id ``j`` is ``texts[j]``."""

    def __init__(self, images: torch.Tensor, texts: torch.Tensor) -> None:
        super().__init__()
        self.images, self.texts = images, texts

    def encode_image(self, index):
        return self.images[index.flatten(1)[:, 0].long()]

    def encode_text(self, ids, mask):
        return self.texts[ids[:, 1]]


class _Captions:
    def __init__(self, owners: list[int]) -> None:
        self.image_index, self.captions = owners, [str(j) for j in range(len(owners))]
        self.images = self  # the distinct images, as `CaptionPairs.images`

    def __len__(self):
        return max(self.image_index) + 1

    def __getitem__(self, index):
        return torch.full((1, 1, 1), float(index))


class _Ids:
    def __call__(self, texts):
        ids = torch.tensor([[0, int(t)] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.lists(st.integers(1, 3), min_size=2, max_size=12), st.integers(0, 2**31))
def test_retrieval_recall_equals_a_brute_force_reference(dim, captions_per_image, seed):
    """An image query is a hit when ANY of its captions is in its top k captions; a caption when its image is in
    its top k images (clip_benchmark's rule), checked against loops in float64."""
    generator = torch.Generator().manual_seed(seed)
    owners = [i for i, count in enumerate(captions_per_image) for _ in range(count)]
    images = torch.randn(len(captions_per_image), dim, generator=generator)
    texts = torch.randn(len(owners), dim, generator=generator)
    results = retrieval_recall(
        _Lookup(images, texts),  # type: ignore[arg-type]
        _Captions(owners),  # type: ignore[arg-type]
        _Ids(),  # type: ignore[arg-type]
        inference=InferenceOptions(batch_size=5),
    )
    similarity = (torch.nn.functional.normalize(images.double(), dim=1)
                  @ torch.nn.functional.normalize(texts.double(), dim=1).T).numpy()  # fmt: skip
    for k in (1, 5, 10):
        image_hits = [any(owners[j] == i for j in np.argsort(-similarity[i], kind="stable")[:k])
                      for i in range(len(images))]  # fmt: skip
        text_hits = [owners[j] in np.argsort(-similarity[:, j], kind="stable")[:k] for j in range(len(owners))]
        assert results[f"image_to_text_R@{k}"] == pytest.approx(np.mean(image_hits))
        assert results[f"text_to_image_R@{k}"] == pytest.approx(np.mean(text_hits))


def test_the_model_a_training_run_saved_evaluates_with_its_own_tokenizer(workspace, tmp_path):
    """The issue's fault: ``zeroshot --model RUN/final`` tokenised with CLIP's BPE (49,408 ids) for a text tower
    that embeds 1,000, and ended in an IndexError; the run's own tokenizer is now the default, and CLIP's BPE is
    refused by name."""
    from unicl.train import main as train

    final = train(["--model", "unicl_tiny", "--device", "cpu", "--tokenizer", str(workspace / "tokenizer.json"),
                   "--image-folder", str(workspace / "digits"), "--batch-size", "8", "--lr", "1e-3", "--warmup", "1",
                   "--steps", "2", "--workers", "0", "--output", str(tmp_path / "run"), "--no-progress",
                   "--no-tensorboard"])  # fmt: skip
    assert final == tmp_path / "run" / "final"
    reported = _main("zeroshot", "--model", final, "--data", workspace / "held-out")
    model = unicl.load_model(final)
    tokenizer = Tokenizer.from_file(workspace / "tokenizer.json", context_length=16)
    dataset = ImageFolder(str(workspace / "held-out"), transform=unicl.image_transform(model))
    assert reported == zeroshot_accuracy(model, dataset, dataset.classes, tokenizer)
    assert reported["images"] == 24


@pytest.mark.slow
def test_zeroshot_from_the_shell_on_a_run_that_trained_its_own_tokenizer(workspace, tmp_path):
    """Issue #21's check: ``python -m unicl.evaluate zeroshot --model RUN/final --data DIR`` with no tokenizer option
    on a run whose tokenizer the training command trained itself; the numbers are those of the run's tokenizer file."""
    from unicl.train import main as train

    final = train(["--model", "unicl_tiny", "--device", "cpu", "--image-folder", str(workspace / "digits"),
                   "--batch-size", "8", "--warmup", "1", "--steps", "2", "--workers", "0",
                   "--output", str(tmp_path / "run"), "--no-progress", "--no-tensorboard"])  # fmt: skip
    command = [sys.executable, "-m", "unicl.evaluate", "zeroshot", "--model", str(final), "--data",
               str(workspace / "held-out"), "--device", "cpu", "--workers", "0", "--no-progress",
               "--json", str(tmp_path / "zeroshot.json")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    reported = json.loads((tmp_path / "zeroshot.json").read_text())
    model = unicl.load_model(final)
    tokenizer = Tokenizer.from_file(final / "tokenizer.json", context_length=model.config.text.context_length)
    assert tokenizer.vocab_size <= model.config.text.vocab_size < 49408  # not CLIP's BPE
    dataset = ImageFolder(str(workspace / "held-out"), transform=unicl.image_transform(model))
    assert reported == zeroshot_accuracy(model, dataset, dataset.classes, tokenizer)
    assert f"top1={reported['top1']:.4f}" in result.stdout


@pytest.mark.slow
def test_linear_probe_command_reports_what_the_python_api_computes(workspace, tmp_path, capsys):
    model = unicl.load_model(workspace / "model")
    transform = unicl.image_transform(model)
    train = ImageFolder(str(workspace / "digits"), transform=transform)
    test = ImageFolder(str(workspace / "held-out"), transform=transform)
    reported = _main("linear-probe", "--model", workspace / "model", "--train", workspace / "digits",
                     "--test", workspace / "held-out", "--metric", "mean_per_class_recall")  # fmt: skip
    assert reported == run_linear_probe(model, train, test, metric="mean_per_class_recall")
    assert reported["feature_kind"] == "backbone" and reported["train"] == 36 and reported["test"] == 24
    assert f"mean_per_class_recall={reported['mean_per_class_recall']:.4f}" in capsys.readouterr().out

    # Few-shot over three seeds, features cached: the second run reads the cache and reports the same.
    few_shot = ["linear-probe", "--model", workspace / "model", "--train", workspace / "digits", "--test",
                workspace / "held-out", "--shots", "3", "--seeds", "0", "1", "2",
                "--cache-dir", tmp_path / "cache"]  # fmt: skip
    first = _main(*few_shot)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # the train and the test split
    assert _main(*few_shot) == first
    expected = run_linear_probe(model, train, test, shots=3, seeds=(0, 1, 2))
    assert first["mean"] == expected["mean"] and first["std"] == expected["std"] and first["shots"] == 3
    shown = capsys.readouterr().out
    assert f"top1={first['mean']['top1']:.4f}±{first['std']['top1']:.4f}" in shown

    # A zero-shot-initialised head: projected features by default.
    tokenizer = unicl.get_tokenizer(workspace / "model")
    text = _main("linear-probe", "--model", workspace / "model", "--train", workspace / "digits", "--test",
                 workspace / "held-out", "--init", "text")  # fmt: skip
    expected = run_linear_probe(model, train, test, features="projected", init="text", tokenizer=tokenizer)
    assert text == expected and text["feature_kind"] == "projected"


@pytest.mark.slow
def test_a_linear_probe_and_few_shot_run_on_a_model_saved_without_its_tokenizer(workspace, tmp_path, capsys):
    """A probe whose head starts at 0 reads no text; the model's vocabulary is not CLIP's, so no tokenizer would do."""
    model = unicl.load_model(workspace / "model")
    model.save_pretrained(tmp_path / "bare")
    assert not (tmp_path / "bare" / "tokenizer.json").exists()
    folders = ["--train", workspace / "digits", "--test", workspace / "held-out"]
    assert _main("linear-probe", "--model", tmp_path / "bare", *folders) == _main(
        "linear-probe", "--model", workspace / "model", *folders
    )
    few_shot = _main("linear-probe", "--model", tmp_path / "bare", *folders, "--shots", "2", "--seeds", "0", "1")
    assert few_shot["shots"] == 2
    # A head started from the class prompts' text does need the tokenizer, and says so.
    error = _error(capsys, "linear-probe", "--model", tmp_path / "bare", *folders, "--init", "text")
    assert "saved without its tokenizer" in error


def _error(capsys, *arguments) -> str:
    with pytest.raises(SystemExit) as stopped:
        _main(*arguments)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    prefix = f"python -m unicl.evaluate {arguments[0]}: error: "
    assert lines[-1].startswith(prefix), lines
    return lines[-1].removeprefix(prefix)


def _corrupt_model(workspace, tmp_path, content: bytes | None) -> Path:
    directory = tmp_path / "model"
    directory.mkdir(exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (workspace / "model" / name).is_file():
            (directory / name).write_bytes((workspace / "model" / name).read_bytes())
    if content is not None:
        (directory / "model.safetensors").write_bytes(content)
    return directory


BAD_INPUTS = {
    "missing data": (lambda w, t: ["zeroshot", "--model", w / "model", "--data", t / "missing"],
                     "--data '{t}/missing': does not exist"),
    "empty folder": (lambda w, t: ["zeroshot", "--model", w / "model", "--data", t],
                     "--data '{t}': Couldn't find any class folder"),
    "unknown model": (lambda w, t: ["zeroshot", "--model", "resnet", "--data", w / "digits"],
                      "--model 'resnet': is neither a model directory"),
    "no config": (lambda w, t: ["zeroshot", "--model", t, "--data", w / "digits"],
                  "--model '{t}': {t}/config.json does not exist"),
    "truncated weights": (lambda w, t: ["zeroshot", "--model", _corrupt_model(w, t, (w / "model/model.safetensors")
                                        .read_bytes()[:500]), "--data", w / "digits"],
                          "is not a readable safetensors file"),
    "foreign weights": (lambda w, t: ["zeroshot", "--model", _corrupt_model(w, t, b"PK\x03\x04 a zip"), "--data",
                                      w / "digits"], "is not a readable safetensors file"),
    "missing weights": (lambda w, t: ["zeroshot", "--model", _corrupt_model(w, t, None), "--data", w / "digits"],
                        "model.safetensors does not exist"),
    "pretrained with a directory": (lambda w, t: ["zeroshot", "--model", w / "model", "--pretrained", w / "model",
                                                  "--data", w / "digits"], "--pretrained"),
    "missing pretrained": (lambda w, t: ["zeroshot", "--model", "unicl_tiny", "--pretrained", t / "x.safetensors",
                                         "--data", w / "digits"], "--pretrained '{t}/x.safetensors'"),
    "preset without its tokenizer": (lambda w, t: ["zeroshot", "--model", "unicl_tiny", "--data", w / "digits"],
                                     "--tokenizer (default: the model's own) 'unicl_tiny': unicl_tiny's tokenizer is "
                                     "trained"),
    "tokenizer too big": (lambda w, t: ["zeroshot", "--model", w / "model", "--tokenizer", "clip", "--data",
                                        w / "digits"],
                          "--tokenizer has 49408 ids but the model's text tower embeds 1000"),
    "missing tokenizer": (lambda w, t: ["zeroshot", "--model", w / "model", "--tokenizer", t / "tok.json", "--data",
                                        w / "digits"], "--tokenizer '{t}/tok.json'"),
    "wrong caption columns": (lambda w, t: ["retrieval", "--model", w / "model", "--captions", _write(t / "c.csv",
                              "path,text\nx.png,hello\n")], "--captions '{t}/c.csv': '{t}/c.csv' needs a header"),
    "missing caption image": (lambda w, t: ["retrieval", "--model", w / "model", "--captions", _write(t / "c.csv",
                              "image,caption\nnowhere.png,hi\n")], "image 'nowhere.png' does not exist"),
    "class-name count": (lambda w, t: ["zeroshot", "--model", w / "model", "--data", w / "digits", "--classnames",
                                       _write(t / "n.txt", "one\ntwo\n")],
                         "--classnames '{t}/n.txt': has 2 names; --data has 6 classes"),
    "missing class names": (lambda w, t: ["zeroshot", "--model", w / "model", "--data", w / "digits",
                                          "--classnames", t / "n.txt"], "--classnames '{t}/n.txt'"),
    "templates without a slot": (lambda w, t: ["zeroshot", "--model", w / "model", "--data", w / "digits",
                                               "--templates", _write(t / "t.txt", "a photo\n")], "--templates"),
    "mapping without a class": (lambda w, t: ["zeroshot", "--model", w / "model", "--data", w / "digits", "--templates",
                                              _write(t / "p.json", '{"one": ["A one."]}')],
                                "--templates '{t}/p.json': templates: the per-class mapping has no prompts for "
                                "class 0"),
    "unknown metric": (lambda w, t: ["zeroshot", "--model", w / "model", "--data", w / "digits", "--metric", "f1"],
                       "argument --metric: invalid choice: 'f1'"),
    "mAP on single-label data": (lambda w, t: ["zeroshot", "--model", w / "model", "--data", w / "digits",
                                               "--metric", "map_11_point"],
                                 "--metric 'map_11_point': map_11_point is for multi-label data"),
    "roc_auc on 6 classes": (lambda w, t: ["zeroshot", "--model", w / "model", "--data", w / "digits", "--metric",
                                           "roc_auc"], "roc_auc scores binary data (2 classes); this data has 6"),
    "top1 on multi-label data": (lambda w, t: ["zeroshot", "--model", w / "model", "--data", w / "labels.csv",
                                               "--metric", "top1"], "multi-label data is scored with map_11_point"),
    "labels file without labels": (lambda w, t: ["zeroshot", "--model", w / "model", "--data",
                                                 _write(t / "l.csv", "image,tags\nx.png,a\n")], "a 'labels' column"),
    "unreadable image": (lambda w, t: ["zeroshot", "--model", w / "model", "--data", _broken_folder(t)],
                         "--data: cannot identify image file"),
    "bad batch size": (lambda w, t: ["zeroshot", "--model", w / "model", "--data", w / "digits", "--batch-size", "0"],
                       "--batch-size '0': must be >= 1"),
    "test classes differ": (lambda w, t: ["linear-probe", "--model", w / "model", "--train", w / "digits", "--test",
                                          w / "binary"], "--test '{w}/binary': must have --train's classes"),
    "bad shots": (lambda w, t: ["linear-probe", "--model", w / "model", "--train", w / "digits", "--test",
                                w / "held-out", "--shots", "0"], "--shots '0': must be >= 1"),
    "one shot without l2": (lambda w, t: ["linear-probe", "--model", w / "model", "--train", w / "digits", "--test",
                                          w / "held-out", "--shots", "1"], "--shots '1': leaves nothing to hold out"),
    "text init with backbone features": (lambda w, t: ["linear-probe", "--model", w / "model", "--train", w / "digits",
                                                       "--test", w / "held-out", "--init", "text", "--features",
                                                       "backbone"], "--features 'backbone': --init text"),
    "seeds without shots": (lambda w, t: ["linear-probe", "--model", w / "model", "--train", w / "digits", "--test",
                                          w / "held-out", "--seeds", "0", "1"], "several seeds need --shots"),
    "more shots than a class has": (lambda w, t: ["linear-probe", "--model", w / "model", "--train", w / "digits",
                                                  "--test", w / "held-out", "--shots", "7"],
                                    "--shots '7': shots=7 needs 7 training images per class; class 'five' (class 0) "
                                    "has 6 in --train"),
    "cache dir is a file": (lambda w, t: ["linear-probe", "--model", w / "model", "--train", w / "digits", "--test",
                                          w / "held-out", "--cache-dir", _write(t / "cache", "")],
                            "--cache-dir '{t}/cache': is not a directory"),
    "cache dir under a file": (lambda w, t: ["linear-probe", "--model", w / "model", "--train", w / "digits",
                                             "--test", w / "held-out", "--cache-dir", _write(t / "f", "") / "cache"],
                               "--cache-dir '{t}/f/cache': [Errno 20] Not a directory"),
}  # fmt: skip


def _broken_folder(root: Path) -> Path:
    for name in ("a", "b"):
        (root / "broken" / name).mkdir(parents=True)
        (root / "broken" / name / "x.png").write_text("not a PNG")
    return root / "broken"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_are_clear(workspace, tmp_path, capsys, case):
    """One line naming the argument, exit status 2, no traceback."""
    arguments, expected = BAD_INPUTS[case]
    message = _error(capsys, *arguments(workspace, tmp_path))
    assert expected.format(t=tmp_path, w=workspace) in message, message


def test_a_user_error_is_argparse_s_format_from_argparse_and_from_the_checks_alike(workspace, tmp_path, capsys):
    """One format for every user error: the sub-command's usage, then ``PROG COMMAND: error: ...``, exit status 2,
    whether argparse found it (an unknown choice) or a check after parsing did (a missing path, a bad suite)."""
    from unicl._checks import CommandError

    (tmp_path / "suite.json").write_text("{not json")
    cases = [
        ("zeroshot", ["--model", workspace / "model", "--data", workspace / "digits", "--metric", "f1"]),
        ("zeroshot", ["--model", workspace / "model", "--data", tmp_path / "missing"]),
        ("retrieval", ["--model", workspace / "model", "--captions", tmp_path / "missing.csv"]),
        ("suite", [tmp_path / "suite.json", "--model", workspace / "model", "--output", tmp_path / "out"]),
    ]
    for command, arguments in cases:
        with pytest.raises(CommandError) as stopped:
            _main(command, *arguments)
        assert stopped.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[0].startswith(f"usage: python -m unicl.evaluate {command} "), lines
        assert lines[-1] == str(stopped.value) and lines[-1].startswith(f"python -m unicl.evaluate {command}: error: ")
        assert "Traceback" not in "\n".join(lines)


def test_input_errors_come_before_the_model_loads(workspace, tmp_path, capsys, monkeypatch):
    def no_model(args):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(unicl.evaluate, "_load_model", no_model)
    for case in ("more shots than a class has", "cache dir is a file"):
        arguments, expected = BAD_INPUTS[case]
        assert expected.format(t=tmp_path, w=workspace) in _error(capsys, *arguments(workspace, tmp_path))
        for path in tmp_path.iterdir():
            path.unlink()


def test_run_time_errors_name_the_argument_they_come_from(workspace, tmp_path, capsys, monkeypatch):
    """The review's fault: every OSError or ValueError of a whole evaluation was reported as the data argument's."""
    probe = ["linear-probe", "--model", workspace / "model", "--train", workspace / "digits", "--test",
             workspace / "held-out", "--cache-dir", tmp_path / "cache"]  # fmt: skip

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "cache" / "x.safetensors"))

    monkeypatch.setattr(unicl.evaluation.probe, "run_linear_probe", denied)
    message = _error(capsys, *probe)
    assert message == f"--cache-dir '{tmp_path / 'cache'}': [Errno 13] Permission denied: " \
                      f"'{tmp_path / 'cache' / 'x.safetensors'}'", message  # fmt: skip

    def internal(*args, **kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(unicl.evaluation.probe, "run_linear_probe", internal)
    assert _error(capsys, *probe) == "an internal inconsistency"  # not blamed on --train/--test


@pytest.mark.slow
def test_an_unreadable_image_read_by_a_worker_is_one_line_naming_the_data(workspace, tmp_path, capsys):
    """A DataLoader worker re-raises the error with its traceback in the message: the line is the error's own."""
    with pytest.raises(SystemExit):
        main(["zeroshot", "--model", str(workspace / "model"), "--data", str(_broken_folder(tmp_path)),
              "--workers", "1", "--device", "cpu", "--no-progress"])  # fmt: skip
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("python -m unicl.evaluate zeroshot: error: --data: cannot identify image file "), last
    # From the shell the error's type lives in __main__, which the worker's traceback names without a module.
    command = [sys.executable, "-m", "unicl.evaluate", "zeroshot", "--model", str(workspace / "model"), "--data",
               str(tmp_path / "broken"), "--device", "cpu", "--workers", "1", "--no-progress"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m unicl.evaluate zeroshot: error: --data: cannot identify image file "), last


@pytest.mark.slow
def test_a_bad_input_prints_one_line_from_the_shell(workspace, tmp_path):
    command = [sys.executable, "-m", "unicl.evaluate", "zeroshot", "--model", str(workspace / "model"), "--data",
               str(tmp_path / "missing"), "--device", "cpu"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("python -m unicl.evaluate zeroshot: error: --data")


def test_help_explains_every_option():
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"zeroshot", "retrieval", "linear-probe", "suite", "wise-ft"}
    for name, command in commands.choices.items():
        for action in command._actions:
            if action.dest != "help":
                assert action.help and len(action.help) > 15, (name, action.dest)


@pytest.mark.slow
def test_the_evaluation_page_documents_every_option():
    page = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        assert f"`{name}`" in page, name
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert f"`{action.option_strings[0]}" in page, (name, action.option_strings[0])
