"""Linear and few-shot probes on real digits: against scikit-learn's tuned LogisticRegression and the float64
optimum, no test sample in any fit or choice, seeds, the text-initialised head, the feature cache, bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torchvision.datasets import ImageFolder

import unicl
import unicl.evaluation.features as features_module
import unicl.evaluation.logistic as logistic_module
import unicl.evaluation.protocols as protocols_module
from unicl.evaluation import (
    InferenceOptions,
    L2Search,
    choose_l2,
    few_shot,
    fit_logistic_regression,
    image_features,
    linear_probe,
    run_linear_probe,
    sample_shots,
    text_head,
)
from unicl.evaluation.logistic import stratified_split
from unicl.evaluation.protocols import check_shots
from unicl.text.prompts import DEFAULT_TEMPLATES
from unicl.text.tokenizer import Tokenizer

#: Inference in batches of 300 images (a whole tiny split at once), of 100, and of one image.
WHOLE_SPLIT, BATCHES_OF_100, ONE_BY_ONE = (InferenceOptions(batch_size=size) for size in (300, 100, 1))

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pixels():
    """Real digits' 64 pixels as features: the first 60% of each class to train, the rest to test."""
    digits = load_digits()
    train, test = [], []
    for c in range(10):
        members = np.flatnonzero(digits.target == c)
        cut = int(0.6 * len(members))
        train.extend(members[:cut])
        test.extend(members[cut:])
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target)
    return x[train], y[train], x[test], y[test]


def _sklearn_tuned(train_x, train_y, test_x, test_y, l2_values, seed=0):
    """scikit-learn's LogisticRegression (lbfgs) tuned over the same λ values (C = 1/(λ·n)) on the same stratified
    held-out split and standardisation, then refitted on the whole training split: its test top-1."""

    def fit(x, y, l2):
        mean, std = x.mean(0), x.std(0, correction=0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        model = LogisticRegression(C=1 / (l2 * len(x)), max_iter=5000).fit(((x - mean) / std).numpy(), y.numpy())
        return lambda z: model.predict(((z - mean) / std).numpy())

    part, held = stratified_split(train_y, fraction=0.2, seed=seed, classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at the weakest penalties
        scores = {l2: float((fit(train_x[part], train_y[part], l2)(train_x[held]) == train_y[held].numpy()).mean())
                  for l2 in l2_values}  # fmt: skip
        best = max(scores, key=lambda value: (scores[value], value))
        return float((fit(train_x, train_y, best)(test_x) == test_y.numpy()).mean())


@pytest.mark.slow
def test_linear_probe_is_at_least_scikit_learns_tuned_logistic_regression(pixels):
    result = linear_probe(*pixels, metric="mean_per_class_recall")
    tried = [value for value, _ in result["sweep"]]
    assert len(tried) == 9 + 6  # the coarse decades, then two trials per refinement step
    reference = _sklearn_tuned(*pixels, tried)
    assert result["top1"] >= reference - 0.01
    assert result["top1"] > 0.9  # real digits are easy for a linear model
    assert set(result) >= {"top1", "top5", "mean_per_class_recall", "l2", "sweep", "train", "test", "classes"}
    assert (result["train"], result["test"], result["classes"], result["feature_dim"]) == (1074, 723, 10, 64)


@pytest.mark.slow
# The float32 bounds are at least the float32 objective's own rounding over the 1,074 training rows (about
# √N·ε₃₂ = 4e-6 relative): below it, where the float32 solver stops depends on the BLAS's summation order (1e-6 failed
# with one torch thread on one machine and passed with two).
@pytest.mark.parametrize(("l2", "dtype", "bound"), [(1e-6, torch.float32, 1e-3), (1e-4, torch.float32, 1e-5),
                                                    (1e-2, torch.float32, 4e-6), (1.0, torch.float32, 4e-6),
                                                    (1e-4, torch.float64, 1e-7)])  # fmt: skip
def test_the_fit_reaches_the_float64_optimum(pixels, l2, dtype, bound):
    """Our objective at our weights against scikit-learn's lbfgs at tol 1e-12 on the same standardised features and
    penalty (C = 1/(λ·N)), both evaluated in float64."""
    x, y = pixels[0], pixels[1]
    head = fit_logistic_regression(x, y, l2, classes=10, dtype=dtype)
    z = head.standardize(x).double()
    reference = LogisticRegression(C=1 / (l2 * len(x)), tol=1e-12, max_iter=50000).fit(z.numpy(), y.numpy())

    def objective(weight, bias):
        return float(F.cross_entropy(z @ weight.T + bias, y) + l2 / 2 * weight.square().sum())

    # The better of the two float64 answers (scikit-learn's may stop short at the weakest penalty).
    tight = fit_logistic_regression(x, y, l2, classes=10, dtype=torch.float64, tolerance=1e-12, max_iter=5000)
    optimum = min(objective(torch.tensor(reference.coef_), torch.tensor(reference.intercept_)),
                  objective(tight.weight, tight.bias))  # fmt: skip
    ours = objective(head.weight.double(), head.bias.double())
    assert ours <= optimum * (1 + bound)
    assert abs(head.loss - ours) <= 1e-6 * ours  # the reported loss: float32 logits summed in float64


@pytest.mark.parametrize(("metric", "classes"), [("roc_auc", (0, 1)), ("map_11_point", (3, 5, 8))])
def test_binary_and_one_hot_metrics_of_a_probe(pixels, metric, classes):
    train_x, train_y, test_x, test_y = pixels
    train, test = torch.isin(train_y, torch.tensor(classes)), torch.isin(test_y, torch.tensor(classes))
    relabel = torch.full((10,), -1).index_put_((torch.tensor(classes),), torch.arange(len(classes)))
    result = linear_probe(train_x[train], relabel[train_y[train]], test_x[test], relabel[test_y[test]], metric=metric)
    assert result["metric"] == metric and 0.97 <= result[metric] <= 1.0 and "top5" not in result


def test_the_fit_is_deterministic(pixels):
    first = fit_logistic_regression(pixels[0], pixels[1], 1e-3, classes=10)
    second = fit_logistic_regression(pixels[0], pixels[1], 1e-3, classes=10)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)


def _spy_on_fits(monkeypatch):
    """Record every feature matrix a head is fitted on, in the sweep and in the refit."""
    seen: list[torch.Tensor] = []
    original = logistic_module.fit_logistic_regression

    def spy(x, *args, **kwargs):
        seen.append(x.clone())
        return original(x, *args, **kwargs)

    monkeypatch.setattr(logistic_module, "fit_logistic_regression", spy)
    monkeypatch.setattr(protocols_module, "fit_logistic_regression", spy)
    return seen


def test_no_test_sample_is_fitted_on_or_chooses_l2(pixels, monkeypatch):
    train_x, train_y, test_x, test_y = pixels
    seen = _spy_on_fits(monkeypatch)
    clean = linear_probe(train_x, train_y, test_x, test_y)
    # Poisoned test features (far outside the pixels' 0..16) must change nothing but the test scores.
    poisoned = linear_probe(train_x, train_y, test_x * -50 + 1000, test_y)
    assert all(float(x.max()) <= 16 for x in seen) and len(seen) == 2 * (len(clean["sweep"]) + 1)
    assert clean["sweep"] == poisoned["sweep"] and clean["l2"] == poisoned["l2"]
    assert clean["top1"] != poisoned["top1"]


def test_few_shot_uses_only_its_shots_differs_by_seed_and_never_sees_test(pixels, monkeypatch):
    train_x, train_y, test_x, test_y = pixels
    seen = _spy_on_fits(monkeypatch)
    result = few_shot(train_x, train_y, test_x * -50 + 1000, test_y, shots=5, seeds=[0, 1, 2], metric="top1")
    assert len(result["runs"]) == 3 and [run["seed"] for run in result["runs"]] == [0, 1, 2]
    assert all(run["train"] == 50 and run["test"] == len(test_y) for run in result["runs"])
    # Every fit, the sweep's on the held-out split of the 5-shot samples included, sees at most those 50 samples.
    shot_rows = {seed: {tuple(row.tolist()) for row in train_x[sample_shots(train_y, 5, seed, classes=10)]}
                 for seed in (0, 1, 2)}  # fmt: skip
    assert all(float(x.max()) <= 16 and len(x) <= 50 for x in seen)
    assert all(any({tuple(r.tolist()) for r in x} <= rows for rows in shot_rows.values()) for x in seen)
    assert len({tuple(sample_shots(train_y, 5, seed, classes=10).tolist()) for seed in (0, 1, 2)}) == 3
    clean = few_shot(train_x, train_y, test_x, test_y, shots=5, seeds=[0, 1, 2])
    top1 = [run["top1"] for run in clean["runs"]]
    assert len(set(top1)) > 1 and clean["std"]["top1"] > 0
    assert abs(clean["mean"]["top1"] - np.mean(top1)) < 1e-12 and abs(clean["std"]["top1"] - np.std(top1)) < 1e-12
    assert [run["l2"] for run in clean["runs"]] == [run["l2"] for run in result["runs"]]


@given(targets=st.lists(st.integers(0, 4), min_size=2, max_size=60), seed=st.integers(0, 1000),
       fraction=st.floats(0.05, 0.95))  # fmt: skip
def test_stratified_split_partitions_each_class(targets, seed, fraction):
    y = torch.tensor(targets)
    counts = torch.bincount(y, minlength=5)
    if int(counts.max()) < 2:
        with pytest.raises(ValueError, match="pass l2="):
            stratified_split(y, fraction=fraction, seed=seed, classes=5)
        return
    train, held = stratified_split(y, fraction=fraction, seed=seed, classes=5)
    assert sorted(torch.cat([train, held]).tolist()) == list(range(len(y)))
    for c in range(5):
        n_held = int((y[held] == c).sum())
        if counts[c] >= 2:
            assert 1 <= n_held <= counts[c] - 1 and abs(n_held - fraction * counts[c]) <= max(1, 0.5 + 1e-9)
        else:
            assert n_held == 0


@given(targets=st.lists(st.integers(0, 3), min_size=1, max_size=50), shots=st.integers(1, 4), seed=st.integers(0, 99))
def test_sample_shots_draws_k_distinct_samples_of_every_class(targets, shots, seed):
    y = torch.tensor(targets)
    counts = torch.bincount(y, minlength=4)
    if int(counts.min()) < shots:
        with pytest.raises(ValueError, match=f"class {int((counts < shots).nonzero()[0, 0])} has"):
            sample_shots(y, shots, seed, classes=4)
        return
    chosen = sample_shots(y, shots, seed, classes=4)
    assert len(set(chosen.tolist())) == 4 * shots
    assert torch.bincount(y[chosen], minlength=4).tolist() == [shots] * 4
    assert torch.equal(chosen, sample_shots(y, shots, seed, classes=4))


def test_a_head_started_from_weights_is_pulled_to_them():
    """With a huge λ the weights stay at the start: the logits are the start's up to a per-class bias."""
    generator = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(200, 16, generator=generator), dim=-1)
    y = torch.randint(4, (200,), generator=generator)
    start = 10 * torch.randn(4, 16, generator=generator)
    head = fit_logistic_regression(x, y, 1e6, classes=4, init=start)
    difference = head(x) - x @ start.T
    assert float((difference - difference[:1]).abs().max()) <= 1e-3 * float((x @ start.T).abs().max())
    free = fit_logistic_regression(x, y, 1e-3, classes=4)
    pulled = fit_logistic_regression(x, y, 1e-3, classes=4, init=start)
    assert not torch.allclose(free.weight, pulled.weight, atol=1e-2)  # the penalty's centre moves the optimum


def _save_digit(pixels, path: Path) -> None:
    Image.fromarray((pixels * 255 / 16).astype("uint8")).resize((32, 32), Image.NEAREST).convert("RGB").save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Real digits as ImageFolders (10 classes, 30 train and 15 test images each) and a tokenizer."""
    root = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    for c, name in enumerate(NAMES):
        members = np.flatnonzero(digits.target == c)
        for split, chosen in (("train", members[:30]), ("test", members[30:45])):
            (root / split / name).mkdir(parents=True)
            for index in chosen:
                _save_digit(digits.images[index], root / split / name / f"{index}.png")
    corpus = [template.format(name) for template in DEFAULT_TEMPLATES for name in NAMES]
    Tokenizer.train(corpus, vocab_size=600, context_length=16).tokenizer.save(str(root / "tokenizer.json"))
    return root


def _datasets(root: Path):
    transform = unicl.image_transform("unicl_tiny")
    return ImageFolder(root / "train", transform), ImageFolder(root / "test", transform)


def _model():
    torch.manual_seed(0)
    return unicl.create_model("unicl_tiny")


@pytest.mark.slow
def test_probe_of_model_features_on_image_folders(folders):
    model = _model()
    train, test = _datasets(folders)
    result = run_linear_probe(model, train, test, features="backbone")
    train_x, train_y = image_features(model, train, kind="backbone")
    test_x, test_y = image_features(model, test, kind="backbone")
    assert train_x.shape == (300, model.image_encoder.num_features)
    assert torch.equal(train_y, torch.tensor(train.targets))
    assert result["top1"] >= _sklearn_tuned(train_x, train_y, test_x, test_y, [v for v, _ in result["sweep"]]) - 0.01
    assert result["feature_kind"] == "backbone" and result["init"] == "random" and result["classes"] == 10
    projected, _ = image_features(model, test, kind="projected")
    with torch.no_grad():
        expected = model.encode_image(torch.stack([image for image, _ in test]), normalize=False)
    torch.testing.assert_close(projected, expected, rtol=1e-5, atol=1e-5)


def test_text_initialised_few_shot(folders):
    model = _model()
    train, test = _datasets(folders)
    tokenizer = Tokenizer.from_file(folders / "tokenizer.json", context_length=16)
    result = run_linear_probe(model, train, test, features="projected", init="text", shots=3, seeds=[0, 1],
                              tokenizer=tokenizer, class_names=NAMES)  # fmt: skip
    assert result["init"] == "text" and result["shots"] == 3 and len(result["runs"]) == 2
    assert all(run["train"] == 30 for run in result["runs"])
    head = text_head(model, tokenizer, NAMES)
    assert head.shape == (10, model.config.embed_dim)
    scale = model.logit_scale.exp().clamp(max=model.config.max_logit_scale)
    torch.testing.assert_close(head.norm(dim=1), scale.expand(10).detach())


def _count_forwards(model) -> list[int]:
    calls = [0]
    model.image_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_feature_cache_hits_and_misses(folders, tmp_path):
    model = _model()
    calls = _count_forwards(model)
    train, _ = _datasets(folders)
    first = image_features(model, train, inference=BATCHES_OF_100, cache_dir=tmp_path)
    assert calls[0] == 3 and len(list(tmp_path.glob("*.safetensors"))) == 1
    again = image_features(model, train, inference=BATCHES_OF_100, cache_dir=tmp_path)
    assert calls[0] == 3 and torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    image_features(model, train, inference=BATCHES_OF_100, kind="projected", cache_dir=tmp_path)
    assert calls[0] == 6  # another kind misses
    changed = ImageFolder(folders / "train", unicl.image_transform("unicl_tiny", train=True))
    image_features(model, changed, inference=BATCHES_OF_100, cache_dir=tmp_path)
    assert calls[0] == 9  # another transform misses
    with torch.no_grad():
        next(model.image_encoder.parameters()).add_(0.5)
    retrained = image_features(model, train, inference=BATCHES_OF_100, cache_dir=tmp_path)
    assert calls[0] == 12 and not torch.equal(retrained[0], first[0])  # other weights miss


def test_a_touched_image_or_a_corrupt_file_is_recomputed(folders, tmp_path):
    model = _model()
    calls = _count_forwards(model)
    train, _ = _datasets(folders)
    first = image_features(model, train, inference=WHOLE_SPLIT, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.safetensors")
    cached.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable"):
        recomputed = image_features(model, train, inference=WHOLE_SPLIT, cache_dir=tmp_path)
    assert calls[0] == 2 and torch.equal(recomputed[0], first[0])
    image = Path(train.samples[0][0])
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    try:
        touched = ImageFolder(folders / "train", unicl.image_transform("unicl_tiny"))
        image_features(model, touched, inference=WHOLE_SPLIT, cache_dir=tmp_path)
        assert calls[0] == 3
    finally:
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: linear_probe(x, y, x, y, metric="accuracy"), "metric must be one of top1, top5"),
        (lambda x, y: linear_probe(x, y, x[:, :3], y), "test_features must have the training features' 64 columns"),
        (lambda x, y: linear_probe(x, y[:5], x, y), r"train_targets must have one class id per row"),
        (lambda x, y: linear_probe(x, y, x, y, classes=5), r"train_targets must be class ids in \[0, 5\)"),
        (lambda x, y: linear_probe(x, y, x, y, l2=-1.0), "l2 must be a finite number > 0"),
        (lambda x, y: linear_probe(x, y, x, y, metric="roc_auc"), "needs a binary task"),
        (lambda x, y: linear_probe(x, y, x, y, init_weights=torch.zeros(10, 3)), r"init must be a tensor of shape"),
        (lambda x, y: few_shot(x, y, x, y, shots=1000, class_names=NAMES), r"class 'zero' \(class 0\) has 106"),
        (lambda x, y: few_shot(x, y, x, y, shots=1), "choosing l2 needs a class with at least 2"),
        (lambda x, y: few_shot(x, y, x, y, shots=2, seeds=[]), "seeds must be a non-empty list"),
        (lambda x, y: L2Search(grid=()), "grid must be a non-empty sequence of finite numbers > 0"),
        (lambda x, y: L2Search(grid=[1.0, -1.0]), "grid must be a non-empty sequence of finite numbers > 0"),
        (lambda x, y: L2Search(refine=(0.5, float("nan"))), "refine must be a sequence of finite numbers > 0"),
        (lambda x, y: L2Search(validation_fraction=1.5), r"validation_fraction must be a number in \(0, 1\)"),
        (lambda x, y: L2Search(max_iter=0), "max_iter must be an int >= 1"),
        (lambda x, y: L2Search(tolerance=0.0), "tolerance must be a finite number > 0"),
        (lambda x, y: L2Search(sweep_tolerance=float("inf")), "sweep_tolerance must be a finite number > 0"),
        (lambda x, y: stratified_split(y, fraction=0.0, seed=0), r"validation_fraction must be a number in \(0, 1\)"),
        (lambda x, y: fit_logistic_regression(x.clone().fill_(float("nan")), y, 1.0, classes=10), "must be finite"),
    ],
)  # fmt: skip
def test_bad_inputs_give_one_line(pixels, call, message):
    with pytest.raises(ValueError, match=message) as caught:
        call(pixels[0], pixels[1])
    assert "\n" not in str(caught.value)


def test_search_options_reach_the_sweep_and_the_fits(pixels):
    """The `L2Search` given is the sweep `linear_probe` runs (its grid, its refinement, its held-out split) and the
    one `choose_l2` runs alone; a search that is not an `L2Search` is refused in one line."""
    x, y = pixels[0][::5], pixels[1][::5]
    search = L2Search(validation_fraction=0.3, grid=[1e-3, 1.0], refine=(0.5,), max_iter=50)
    result = linear_probe(x, y, x, y, search=search, seed=3)
    scores = dict(result["sweep"])
    best = max((1e-3, 1.0), key=lambda value: (scores[value], value))
    assert list(scores) == pytest.approx(sorted([1e-3, 1.0, best * 10**0.5, best * 10**-0.5]))
    assert result["iterations"] <= 50
    assert choose_l2(x, y, classes=10, seed=3, search=search, score=None)[0] == result["l2"]
    with pytest.raises(TypeError, match="search must be an L2Search; got dict") as caught:
        linear_probe(x, y, x, y, search={"grid": (1.0,)})  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_bad_run_options_give_one_line(folders):
    model = _model()
    train, test = _datasets(folders)
    for options, message in [
        ({"init": "text"}, "init='text' needs features='projected'"),
        ({"init": "text", "features": "projected"}, "needs class_names .* and a tokenizer"),
        ({"features": "pooled"}, "features must be one of 'backbone', 'projected'"),
        ({"seeds": [0, 1]}, "the full linear probe takes one seed"),
        ({"init": "zeros"}, "init must be one of 'random', 'text'"),
    ]:
        with pytest.raises(ValueError, match=message) as caught:
            run_linear_probe(model, train, test, **options)
        assert "\n" not in str(caught.value)
    with pytest.raises(TypeError, match="cache_dir needs a torchvision ImageFolder"):
        image_features(model, torch.utils.data.TensorDataset(torch.zeros(2, 3, 32, 32), torch.zeros(2)),
                       cache_dir="unused")  # fmt: skip


def _counting_folder(root: Path, reads: list[str]) -> ImageFolder:
    """An ImageFolder that records every image file it reads."""

    def loader(path: str) -> Image.Image:
        reads.append(path)
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")

    return ImageFolder(root, unicl.image_transform("unicl_tiny"), loader=loader)


def _count_images(model) -> list[int]:
    images = [0]
    model.image_encoder.register_forward_hook(lambda _, inputs, __: images.__setitem__(0, images[0] + len(inputs[0])))
    return images


@pytest.mark.slow
def test_few_shot_encodes_only_the_drawn_images(folders, tmp_path):
    model = _model()
    images = _count_images(model)
    train_reads: list[str] = []
    train = _counting_folder(folders / "train", train_reads)
    _, test = _datasets(folders)
    result = run_linear_probe(model, train, test, shots=3, seeds=[0, 1], inference=ONE_BY_ONE, cache_dir=tmp_path)
    targets = torch.tensor(train.targets)
    drawn = [sample_shots(targets, 3, seed, classes=10) for seed in (0, 1)]
    union = sorted(set(torch.cat(drawn).tolist()))
    assert sorted(train_reads) == sorted(train.samples[i][0] for i in union) and len(union) < len(train)
    assert images[0] == len(union) + len(test)
    # The same runs as the protocol on the whole split's features (batch_size=1: each image's features alike).
    full_x, full_y = image_features(model, _datasets(folders)[0], inference=ONE_BY_ONE)
    test_x, test_y = image_features(model, test, inference=ONE_BY_ONE)
    reference = few_shot(full_x, full_y, test_x, test_y, shots=3, seeds=[0, 1], classes=10)
    assert [run["top1"] for run in result["runs"]] == [run["top1"] for run in reference["runs"]]
    assert [run["l2"] for run in result["runs"]] == [run["l2"] for run in reference["runs"]]
    # The subset's cache: a rerun encodes the test split only (its own cache file is there too: nothing at all).
    images[0], train_reads[:] = 0, []
    again = run_linear_probe(model, train, test, shots=3, seeds=[0, 1], inference=ONE_BY_ONE, cache_dir=tmp_path)
    assert images[0] == 0 and train_reads == [] and again["runs"] == result["runs"]


def test_too_few_shots_fail_before_any_image_is_encoded(folders):
    model = _model()
    images = _count_images(model)
    reads: list[str] = []
    train = _counting_folder(folders / "train", reads)
    _, test = _datasets(folders)
    message = r"^shots=31 needs 31 training images per class; class 'zero' \(class 0\) has 30$"
    with pytest.raises(ValueError, match=message):
        run_linear_probe(model, train, test, shots=31, seeds=[0], class_names=NAMES)
    assert images[0] == 0 and reads == []


@given(targets=st.lists(st.integers(0, 3), max_size=40), shots=st.integers(1, 5))
def test_check_shots_refuses_exactly_the_short_classes(targets, shots):
    counts = [targets.count(c) for c in range(4)]
    short = [c for c in range(4) if counts[c] < shots]
    if not short:
        check_shots(targets, shots, classes=4)
        return
    with pytest.raises(ValueError, match=f"class '{NAMES[short[0]]}' \\(class {short[0]}\\) has {counts[short[0]]}$"):
        check_shots(torch.tensor(targets), shots, class_names=NAMES[:4])


def test_a_bf16_cpu_run_shares_the_fp32_cache(folders, tmp_path):
    """On the CPU "bf16" runs in float32 (inference_autocast), so it must read and write the fp32 entry."""
    model = _model()
    calls = _count_forwards(model)
    train, _ = _datasets(folders)
    first = image_features(model, train, inference=WHOLE_SPLIT, cache_dir=tmp_path)
    bf16 = InferenceOptions(batch_size=300, precision="bf16", device="cpu")
    again = image_features(model, train, inference=bf16, cache_dir=tmp_path)
    assert calls[0] == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1 and torch.equal(first[0], again[0])


class _Named(torch.utils.data.TensorDataset):
    def __init__(self, identity: str, *tensors: torch.Tensor) -> None:
        super().__init__(*tensors)
        self.identity = identity

    def cache_identity(self) -> str:
        return self.identity


def test_a_key_beyond_the_safetensors_header_limit_still_caches(tmp_path):
    """A key of 101 MB (a large folder's every file), more than a safetensors header takes, is stored as its digest."""
    model = _model()
    calls = _count_forwards(model)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dataset = _Named("x" * 101_000_000, images, torch.arange(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = image_features(model, dataset, cache_dir=tmp_path)
        again = image_features(model, dataset, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.safetensors")
    assert calls[0] == 1 and torch.equal(first[0], again[0]) and cached.stat().st_size < 1_000_000


def test_a_cache_that_cannot_be_written_warns_and_returns_the_features(folders, tmp_path, monkeypatch):
    model = _model()
    train, _ = _datasets(folders)
    expected = image_features(model, train, inference=WHOLE_SPLIT)

    class SafetensorError(Exception):  # what safetensors raises: neither an OSError nor a ValueError
        pass

    def refuse(*args, **kwargs):
        raise SafetensorError("header too large")

    monkeypatch.setattr(features_module, "save_file", refuse)
    with pytest.warns(UserWarning, match="could not be written .*header too large"):
        features, targets = image_features(model, train, inference=WHOLE_SPLIT, cache_dir=tmp_path)
    assert torch.equal(features, expected[0]) and torch.equal(targets, expected[1])
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind
    monkeypatch.undo()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.warns(UserWarning, match="could not be written"):
        features, _ = image_features(model, train, inference=WHOLE_SPLIT, cache_dir=blocked / "cache")
    assert torch.equal(features, expected[0])


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import torch
    from unicl.evaluation import fit_logistic_regression

    def status(field):  # bytes, from the kernel's accounting of this process
        with open("/proc/self/status") as lines:
            return 1024 * int(next(line for line in lines if line.startswith(field)).split()[1])
    torch.set_num_threads(1)
    n, f, c = 40_000, 256, 50
    generator = torch.Generator().manual_seed(0)
    y = torch.randint(c, (n,), generator=generator)
    x = torch.randn(n, f, generator=generator)
    x[torch.arange(n), y] += 3.0  # separable enough to need iterations
    fit_logistic_regression(x[:500], y[:500] % 2, 1e-3, classes=2, max_iter=3)  # one-off allocations first
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak resident size to the present one
    before = status("VmRSS:")
    fit_logistic_regression(x, y, 1e-4, classes=c, max_iter=20)
    print(status("VmHWM:") - before)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak resident size reset")
def test_a_fit_holds_one_feature_sized_matrix_beyond_its_input():
    """Peak memory of a 40,000 x 256, 50-class fit above its inputs, in a fresh process whose large allocations
    are all returned to the system when freed (so the peak resident size, reset before the fit, follows the live
    tensors): the
    preconditioned features (one N x F matrix), the logits and their softmax (two N x C), blocks of 2^20 numbers.
    Keeping the standardised features beside their product, or the loss's N x C float64 logits, breaks it."""
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "OMP_NUM_THREADS": "1"}
    output = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], env=environment, capture_output=True, text=True,
                            check=True)  # fmt: skip
    peak = int(output.stdout.split()[-1])
    n_f, n_c = 40_000 * 256 * 4, 40_000 * 50 * 4
    assert peak <= n_f + 3 * n_c + 8 * 2**20, f"peak {peak / 2**20:.1f} MiB"
