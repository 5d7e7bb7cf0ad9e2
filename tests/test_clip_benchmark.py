"""clip_benchmark's own zero-shot code and command on unicl models, through `unicl.evaluation.clip_benchmark`, give
unicl's numbers on real digits (a unicl_tiny with random weights and a tokenizer trained on the prompts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import unicl
from unicl.evaluation.clip_benchmark import (
    MODEL_TYPE,
    ClipBenchmarkModel,
    attention_mask_from_ids,
    clip_benchmark_templates,
    fix_clip_benchmark_accuracy,
    load_unicl,
    register,
    top_k_accuracies,
)
from unicl.evaluation.inference import InferenceOptions
from unicl.evaluation.zeroshot import build_zeroshot_classifier, zeroshot_accuracy, zeroshot_logits
from unicl.text.prompts import unicl_templates
from unicl.text.tokenizer import Tokenizer, find_clip_merges

pytest.importorskip("clip_benchmark", reason="clip_benchmark is not installed (pip install clip-benchmark; dev extra)")
from clip_benchmark.metrics import zeroshot_classification

NAMES = ["zero", "one", "two", "three", "four", "five"]
#: Per-class complete prompts, as CuPL ships them.
PER_CLASS = {name: [f"A handwritten {name}.", f"the digit {name}, written by hand", f"{name}"] for name in NAMES}
#: clip_benchmark's logits are 100·normalize(f)·W with W from its classifier; unicl's classifier is the same
#: computation in another order, so the two agree to float32 rounding, scaled by 100 for the logits.
CLASSIFIER_ATOL = 2e-6
LOGIT_ATOL = 100 * 4e-6


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """``ROOT/val`` an ImageFolder of real digits (32x32 RGB PNGs, 6 per class) as clip_benchmark's
    ``imagenet1k-unverified`` reads it, a saved unicl_tiny with its trained tokenizer, and clip_benchmark's custom
    class-name and template files."""
    root = tmp_path_factory.mktemp("clip_benchmark")
    digits = load_digits()
    for class_id, name in enumerate(NAMES):
        folder = root / "val" / name
        folder.mkdir(parents=True)
        for index in (digits.target == class_id).nonzero()[0][:6]:
            pixels = (digits.images[index] * 255 / 16).astype("uint8")
            Image.fromarray(pixels).resize((32, 32), Image.NEAREST).convert("RGB").save(folder / f"{index}.png")
    corpus = [t.format(n) for t in unicl_templates() for n in NAMES] + [p for ps in PER_CLASS.values() for p in ps]
    tokenizer = Tokenizer.train(corpus, vocab_size=600, context_length=16)
    torch.manual_seed(0)
    unicl.create_model("unicl_tiny").save_pretrained(root / "model", tokenizer=tokenizer)
    (root / "names.json").write_text(json.dumps({"imagenet1k-unverified": NAMES}))
    templates = clip_benchmark_templates(unicl_templates())
    (root / "templates.json").write_text(json.dumps({"imagenet1k-unverified": templates}))
    return root


def _topk_reference(logits: torch.Tensor, targets: torch.Tensor, topk: tuple[int, ...]) -> list[float]:
    """clip_benchmark's top-k step written out here, independently of unicl: a row is a hit at ``k`` when its target
    is among ``torch.topk``'s ``k`` indices."""
    indices = torch.topk(logits, max(topk), dim=1).indices
    return [sum(int(t) in row[:k].tolist() for row, t in zip(indices, targets)) / len(targets) for k in topk]


def _their_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """clip_benchmark's own ``accuracy`` where it runs. With clip_benchmark 1.6.2 under NumPy >= 2.4 it raises
    ``TypeError`` (a ``float()`` of a one-element 1-D array; their issue 147) and cannot be run at all, so this
    falls back to `_topk_reference`, the same top-k step written in this file: never to unicl's own
    `top_k_accuracies`, which would compare unicl with itself."""
    try:
        return zeroshot_classification.accuracy(logits, targets, topk=(1, 5))
    except TypeError:
        return _topk_reference(logits, targets, (1, 5))


def test_the_loader_keeps_clip_benchmarks_contract(workspace):
    model, transform, tokenizer = load_unicl(str(workspace / "model"), "none", cache_dir=None, device="cpu")
    reference, reference_tokenizer = unicl.load_model(workspace / "model"), unicl.get_tokenizer(workspace / "model")
    assert isinstance(model, ClipBenchmarkModel) and not model.training
    texts = ["a photo of a zero.", "five", "a very long sentence about the handwritten digit three, " * 3]
    ids = tokenizer(texts)
    assert ids.dtype == torch.long and ids.shape == (3, 16)
    batch = reference_tokenizer(texts)
    assert torch.equal(ids, batch["input_ids"])
    with torch.no_grad():
        expected = reference.encode_text(batch["input_ids"], batch["attention_mask"], normalize=False)
        assert torch.equal(model.encode_text(ids), expected)
        image = transform(Image.open(next((workspace / "val" / "two").iterdir())))
        assert image.shape == (3, 32, 32)
        images = torch.stack([image, image.flip(-1)])
        assert torch.equal(model.encode_image(images), reference.encode_image(images, normalize=False))


_TOKENIZERS = [Tokenizer.train(["a photo of a cat", "a dog!"], vocab_size=280, context_length=9)]
if find_clip_merges() is not None:
    _TOKENIZERS.append(Tokenizer.clip(12))  # pads with id 0, also the id of "!"


@pytest.mark.parametrize("tokenizer", _TOKENIZERS, ids=lambda t: f"vocab{t.vocab_size}")
@given(texts=st.lists(st.text(st.sampled_from("ab !c.d"), max_size=40), min_size=1, max_size=5))
def test_the_mask_rebuilt_from_ids_is_the_tokenizers(tokenizer, texts):
    batch = tokenizer(texts)
    assert torch.equal(attention_mask_from_ids(batch["input_ids"], tokenizer.end_id), batch["attention_mask"])


def test_ids_without_an_end_token_are_refused():
    with pytest.raises(ValueError, match=r"^row 1 of input_ids has no end-of-text id 2; tokenize with the tokeni"):
        attention_mask_from_ids(torch.tensor([[1, 5, 2, 0], [1, 5, 6, 7]]), end_id=2)
    with pytest.raises(ValueError, match=r"^input_ids must be a \[B, L\] tensor; got torch.Size\(\[4\]\)$"):
        attention_mask_from_ids(torch.tensor([1, 5, 2, 0]), end_id=2)


@pytest.mark.slow
@pytest.mark.parametrize("templates", [unicl_templates(), PER_CLASS], ids=["unicl-81", "per-class"])
def test_clip_benchmarks_zero_shot_code_gives_unicls_numbers(workspace, templates):
    model, transform, tokenizer = load_unicl(str(workspace / "model"), "none")
    theirs = zeroshot_classification.zero_shot_classifier(
        model, tokenizer, NAMES, clip_benchmark_templates(templates), "cpu", amp=False
    )  # [D, C]
    dataset = ImageFolder(str(workspace / "val"), transform=transform)
    logits, targets = zeroshot_classification.run_classification(
        model, theirs, DataLoader(dataset, batch_size=7), "cpu", amp=False
    )
    reference, reference_tokenizer = unicl.load_model(workspace / "model"), unicl.get_tokenizer(workspace / "model")
    ours = build_zeroshot_classifier(reference, reference_tokenizer, NAMES, templates)
    torch.testing.assert_close(theirs.T, ours, rtol=0, atol=CLASSIFIER_ATOL)
    with torch.no_grad():
        features = reference.encode_image(torch.stack([image for image, _ in dataset]))
    our_logits = zeroshot_logits(features, ours)
    torch.testing.assert_close(logits, our_logits, rtol=0, atol=LOGIT_ATOL)
    # Random weights predict nearly one class for every image, so top-1 alone would test little: every image's whole
    # ranking of the classes must agree, and no two logits are so close that rounding could swap them: each side is
    # within LOGIT_ATOL of the other, so a gap above 2 * LOGIT_ATOL cannot close (with the 128-wide unicl_tiny of
    # 90fbc30 the smallest gap here is 0.0035, against 2 * 0.0004).
    assert torch.equal(logits.argsort(dim=1), our_logits.argsort(dim=1))
    assert float(our_logits.sort(dim=1).values.diff(dim=1).min()) > 2 * LOGIT_ATOL

    expected = zeroshot_accuracy(
        reference, dataset, NAMES, reference_tokenizer, templates=templates, inference=InferenceOptions(batch_size=5)
    )
    assert _their_accuracy(logits, targets) == [expected["top1"], expected["top5"]]
    labels = list(range(len(NAMES)))
    assert [top_k_accuracy_score(targets, logits, k=k, labels=labels) for k in (1, 5)] == _their_accuracy(
        logits, targets
    )


@given(st.integers(0, 2**31 - 1), st.integers(1, 30), st.integers(3, 8))  # scikit-learn takes 2 classes as 1-D
def test_top_k_accuracies_against_scikit_learn(seed, rows, classes):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=generator, dtype=torch.float64)  # no ties, almost surely
    targets = torch.randint(0, classes, (rows,), generator=generator)
    ks = sorted({1, 2, classes - 1})
    expected = [top_k_accuracy_score(targets, logits, k=k, labels=list(range(classes))) for k in ks]
    assert top_k_accuracies(logits, targets, topk=ks) == pytest.approx(expected, abs=1e-12)
    assert top_k_accuracies(logits, targets, topk=ks) == _topk_reference(logits, targets, tuple(ks))
    try:
        theirs = zeroshot_classification.accuracy(logits, targets, topk=ks)
    except TypeError:  # NumPy >= 2.4: their function cannot run (see _their_accuracy)
        return
    assert top_k_accuracies(logits, targets, topk=ks) == pytest.approx(theirs, abs=1e-12)


def test_the_accuracy_fix_replaces_only_a_broken_function(monkeypatch):
    original = zeroshot_classification.accuracy
    monkeypatch.setattr(zeroshot_classification, "accuracy", original)  # restored after the test
    try:
        original(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), topk=(1,))
        broken = False
    except TypeError:
        broken = True
    assert fix_clip_benchmark_accuracy() is broken
    assert (zeroshot_classification.accuracy is top_k_accuracies) is broken
    assert fix_clip_benchmark_accuracy() is False  # what stands now works


def test_register_makes_load_clip_load_unicl(workspace, monkeypatch):
    import clip_benchmark.models as registry

    monkeypatch.setattr(registry, "TYPE2FUNC", dict(registry.TYPE2FUNC))
    monkeypatch.setattr(registry, "MODEL_TYPES", list(registry.MODEL_TYPES))
    register()
    assert MODEL_TYPE in registry.MODEL_TYPES
    model, _, tokenizer = registry.load_clip(MODEL_TYPE, str(workspace / "model"), "none", None, "cpu")
    assert isinstance(model, ClipBenchmarkModel) and tokenizer(["zero"]).shape == (1, 16)
    with pytest.raises(SystemExit, match=r"^python -m unicl.evaluation.clip_benchmark: error: --model .* --pretrain"):
        registry.load_clip(MODEL_TYPE, str(workspace / "model"), "weights.pth", None, "cpu")


def test_load_unicl_refuses_what_does_not_fit(workspace, tmp_path):
    with pytest.raises(ValueError, match=r"^model '.*model' is a saved model directory with its weights: pass pre"):
        load_unicl(str(workspace / "model"), "weights.pth")
    with pytest.raises(ValueError, match=r"^unicl_tiny's tokenizer is trained on each run's own text"):
        load_unicl("unicl_tiny", "none")
    with pytest.raises(FileNotFoundError, match=r"^model '.*' is a directory without a saved model \(config.json\)$"):
        load_unicl(str(tmp_path), "none")
    # a preset with a saved directory as its weights reads that directory's tokenizer
    _, _, tokenizer = load_unicl("unicl_tiny", str(workspace / "model"))
    assert tokenizer.tokenizer.vocab_size == unicl.get_tokenizer(workspace / "model").vocab_size


def test_a_weights_file_brings_the_tokenizer_saved_beside_it(workspace):
    """The review's fault: only a directory's tokenizer was found, so ``RUN/final/model.safetensors`` as a preset's
    weights was refused for unicl_tiny (whose tokenizer is trained per run)."""
    model, _, tokenizer = load_unicl("unicl_tiny", str(workspace / "model" / "model.safetensors"))
    saved = unicl.get_tokenizer(workspace / "model")
    texts = ["a photo of a zero.", "the digit five, written by hand"]
    assert torch.equal(tokenizer(texts), saved(texts)["input_ids"])
    reference = unicl.load_model(workspace / "model")
    with torch.no_grad():
        expected = reference.encode_text(saved(texts)["input_ids"], saved(texts)["attention_mask"], normalize=False)
        assert torch.equal(model.encode_text(tokenizer(texts)), expected)


def _launch(workspace, *arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "unicl.evaluation.clip_benchmark", "eval", *arguments]
    return subprocess.run(command, cwd=workspace, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_command_runs_clip_benchmark_on_a_unicl_model(workspace):
    result = _launch(
        workspace, "--model", "model", "--pretrained", "none", "--dataset", "imagenet1k-unverified",
        "--dataset_root", ".", "--custom_classname_file", "names.json", "--custom_template_file", "templates.json",
        "--output", "result.json", "--no_amp", "--num_workers", "0", "--batch_size", "7", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reported = json.loads((workspace / "result.json").read_text())
    assert reported["task"] == "zeroshot_classification" and reported["model"] == "model"
    model, tokenizer = unicl.load_model(workspace / "model"), unicl.get_tokenizer(workspace / "model")
    dataset = ImageFolder(str(workspace / "val"), transform=unicl.image_transform(model))
    expected = zeroshot_accuracy(model, dataset, NAMES, tokenizer, templates=unicl_templates())
    assert reported["metrics"]["acc1"] == expected["top1"] and reported["metrics"]["acc5"] == expected["top5"]
    classifier = build_zeroshot_classifier(model, tokenizer, NAMES, unicl_templates())
    with torch.no_grad():
        predictions = (model.encode_image(torch.stack([image for image, _ in dataset])) @ classifier.T).argmax(1)
    recall = balanced_accuracy_score(dataset.targets, predictions)
    assert reported["metrics"]["mean_per_class_recall"] == pytest.approx(recall, abs=1e-12)

    refused = _launch(
        workspace, "--model", "model", "--pretrained", "weights.pth", "--dataset", "imagenet1k-unverified",
        "--dataset_root", ".", "--output", "refused.json", "--num_workers", "0", "--quiet",
    )  # fmt: skip
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    last_line = refused.stderr.strip().splitlines()[-1]
    assert last_line.startswith("python -m unicl.evaluation.clip_benchmark: error: --model model --pretrained weights")
    assert last_line.endswith("is a saved model directory with its weights: pass pretrained 'none', not 'weights.pth' "
                              "(weights go with a preset name)")  # fmt: skip
