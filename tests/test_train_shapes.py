"""Batches that are not one text per image, from data to the training command: caption files with several captions
per image (`CaptionGroups`), hard negatives from a caption-file column, and ``--class-bank``."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image
from training_runs import assert_cached_run_matches

from unicl.data.batches import UnifiedCollate, append_class_bank
from unicl.data.datasets import CaptionGroups, CaptionPairs, read_hard_negatives
from unicl.text.prompts import LabelToPrompt
from unicl.text.tokenizer import Tokenizer
from unicl.train import main, parse_config
from unicl.training.options import check_options
from unicl.training.sampling import KeyedSamples

NAMES = ["zero", "one", "two"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    words = [template.format(name) for template in TEMPLATES for name in NAMES]
    return Tokenizer.train([*words, "caption zero one two three four", "negative"], vocab_size=300, context_length=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """An ImageFolder of 3 classes × 4 images, and a caption file over them: 3 captions per image, one row each,
    every row with a hard negative except each image's last."""
    root = tmp_path_factory.mktemp("shapes")
    rows = []
    generator = torch.Generator().manual_seed(0)
    for class_id, name in enumerate(NAMES):
        (root / "train" / name).mkdir(parents=True)
        for index in range(4):
            pixels = (torch.rand(32, 32, 3, generator=generator) * 255).to(torch.uint8)
            pixels[:, class_id * 10 : class_id * 10 + 10] = 255  # a class-specific bar, so the classes are learnable
            Image.fromarray(pixels.numpy()).save(root / "train" / name / f"{index}.png")
            for caption in range(3):
                negative = f"not a {name} {caption}" if caption < 2 else ""
                rows.append((f"train/{name}/{index}.png", f"a {name} caption {caption}", negative))
    with (root / "captions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "hard_negative"])
        writer.writerows(rows)
    return root


def _image(value: float) -> torch.Tensor:
    return torch.full((3, 2, 2), value)


# --- the collate ------------------------------------------------------------------------------------------------


def test_text_labelled_batches_put_each_text_where_its_label_says(tokenizer):
    """Labels and text labels against a construction by hand: prompts first, then the groups' captions, then their
    hard negatives; a group's label is its image id above the class ids."""
    prompts = LabelToPrompt(NAMES, templates=TEMPLATES)
    collate = UnifiedCollate(tokenizer, prompts, text_labels=True)
    samples = [
        (_image(0), 2),  # no text: a class bank's
        (_image(1), ["c0", "c1", "c2"], ["n0"], 4),
        (_image(2), "a photo of a one.", 1),
        (_image(3), ["d0"], [], 0),
        (_image(4), [], ["n1", "n2"], 7),  # an image whose captions were all dropped: no positive
    ]
    batch = collate(samples)
    texts = ["a photo of a one.", "c0", "c1", "c2", "d0", "n0", "n1", "n2"]
    expected_text_labels = [1, 3 + 4, 3 + 4, 3 + 4, 3 + 0, -1, -1, -1]
    assert batch["labels"].tolist() == [2, 3 + 4, 1, 3 + 0, 3 + 7]
    assert batch["text_labels"].tolist() == expected_text_labels
    assert torch.equal(batch["input_ids"], tokenizer(texts)["input_ids"])
    assert batch["images"][:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4]


def test_a_class_bank_appends_one_prompt_of_every_class(tokenizer):
    prompts = LabelToPrompt(NAMES, templates=TEMPLATES)
    batch = UnifiedCollate(tokenizer, prompts, text_labels=True)([(_image(0), 2), (_image(1), 0)])
    assert batch["input_ids"].shape == (0, 8)
    banked = append_class_bank(batch, prompts, tokenizer, random.Random(3))
    assert banked["text_labels"].tolist() == [0, 1, 2]
    assert banked["labels"].tolist() == [2, 0]
    # Each class's prompt is one of its two: decode by comparing with every candidate's tokens.
    for row, name in enumerate(NAMES):
        candidates = tokenizer([template.format(name) for template in TEMPLATES])["input_ids"]
        assert any(torch.equal(banked["input_ids"][row], candidate) for candidate in candidates)
    both = append_class_bank(batch, prompts, tokenizer, random.Random(3), per_class=5)  # more than there are
    assert both["text_labels"].tolist() == [0, 0, 1, 1, 2, 2]
    expected = [template.format(name) for name in NAMES for template in TEMPLATES]
    assert sorted(map(tuple, both["input_ids"].tolist())) == sorted(
        map(tuple, tokenizer(expected)["input_ids"].tolist())
    )
    with pytest.raises(ValueError, match="per_class must be an int >= 1; got 0"):
        append_class_bank(batch, prompts, tokenizer, random.Random(0), per_class=0)
    with pytest.raises(ValueError, match="per_class must be an int >= 1; got 0"):
        append_class_bank(batch, prompts, tokenizer, random.Random(0), per_class=0, absent_only=True)
    with pytest.raises(ValueError, match="batch must carry text_labels"):
        append_class_bank({"labels": torch.zeros(1)}, prompts, tokenizer, random.Random(0))


def test_an_absent_only_class_bank_appends_the_classes_no_text_stands_for(tokenizer):
    prompts = LabelToPrompt(NAMES, templates=TEMPLATES)
    collate = UnifiedCollate(tokenizer, prompts, text_labels=True)
    own = [(_image(0), "a photo of a two.", 2), (_image(1), "a drawing of a two.", 2)]
    caption = [(_image(2), ["caption zero"], [], 0)]  # its text label, 3 + 0, is no class id
    batch = collate(own + caption)
    assert batch["text_labels"].tolist() == [2, 2, 3]
    banked = append_class_bank(batch, prompts, tokenizer, random.Random(1), absent_only=True)
    assert banked["labels"].tolist() == batch["labels"].tolist()
    assert banked["text_labels"].tolist() == [2, 2, 3, 0, 1]
    assert torch.equal(banked["input_ids"][:3], batch["input_ids"])
    for row, name in ((3, "zero"), (4, "one")):
        candidates = tokenizer([template.format(name) for template in TEMPLATES])["input_ids"]
        assert any(torch.equal(banked["input_ids"][row], candidate) for candidate in candidates)
    every = collate([(_image(index), f"a photo of a {name}.", index) for index, name in enumerate(NAMES)])
    unchanged = append_class_bank(every, prompts, tokenizer, random.Random(1), per_class=2, absent_only=True)
    assert all(torch.equal(unchanged[key], every[key]) for key in every)


@pytest.mark.parametrize(
    ("sample", "words"),
    [
        ((torch.zeros(3), "a caption"), "a caption with text_labels comes as a group"),
        ((torch.zeros(3), "c", [], 1), "(image, list of captions, list of hard negatives, image_id >= 0)"),
        ((torch.zeros(3), ["c"], [], -1), "image_id >= 0"),
        ((torch.zeros(3),), "must be (image, class_id), (image, prompt, class_id) or"),
    ],
)
def test_a_sample_of_the_wrong_form_is_refused_in_one_line(tokenizer, sample, words):
    collate = UnifiedCollate(tokenizer, LabelToPrompt(NAMES, templates=TEMPLATES), text_labels=True)
    with pytest.raises(TypeError) as refused:
        collate([sample])
    assert words in str(refused.value) and "\n" not in str(refused.value)


def test_hashed_captions_and_text_labels_are_refused_together(tokenizer):
    with pytest.raises(ValueError, match="hash_captions and text_labels do not combine"):
        UnifiedCollate(tokenizer, None, hash_captions=True, text_labels=True)


# --- caption groups -----------------------------------------------------------------------------------------------


def test_caption_groups_hold_every_image_once_with_up_to_k_of_its_captions(data):
    pairs = CaptionPairs(data / "captions.csv", transform=lambda image: torch.zeros(1), hard_negatives=True)
    assert pairs.hard_negatives == read_hard_negatives(data / "captions.csv")
    for k in (1, 2, 3, 5):
        groups = KeyedSamples(CaptionGroups(pairs, k), seed=0)
        assert len(groups) == 12
        for index in range(12):
            _, captions, negatives, image_id = groups[(0, index)]
            name = NAMES[index // 4]
            assert image_id == index and len(captions) == min(k, 3)
            numbers = [int(caption.rsplit(" ", 1)[1]) for caption in captions]
            assert numbers == sorted(set(numbers)) and all(caption.startswith(f"a {name} ") for caption in captions)
            assert negatives == [f"not a {name} {number}" for number in numbers if number < 2]
            assert groups[(0, index)][1] == captions  # a pure function of the key
    draws = {tuple(KeyedSamples(CaptionGroups(pairs, 1), seed=0)[(epoch, 0)][1]) for epoch in range(20)}
    assert len(draws) > 1  # each epoch draws again


def test_caption_groups_refuse_a_bad_count_and_a_file_without_the_negative_column(data, tmp_path):
    pairs = CaptionPairs(data / "captions.csv")
    with pytest.raises(ValueError, match="captions_per_image must be an int >= 1; got 0"):
        CaptionGroups(pairs, 0)
    plain = tmp_path / "plain.csv"
    plain.write_text("image,caption\n" + f"{data / 'train/zero/0.png'},a zero\n")
    with pytest.raises(ValueError, match="needs a hard-negative column"):
        CaptionPairs(plain, hard_negatives=True)


# --- the command --------------------------------------------------------------------------------------------------


def _options(data: Path, output: Path, *extra: object) -> list[str]:
    return [
        "--model", "unicl_tiny", "--device", "cpu", "--batch-size", "4", "--lr", "1e-3", "--output", str(output),
        "--no-progress", "--no-tensorboard", "--log-every", "1", "--workers", "0", *map(str, extra),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--captions-per-image", "0", "--captions", "CAPTIONS"], "--captions-per-image must be >= 1; got 0"),
        (["--captions-per-image", "3", "--image-folder", "TRAIN"], "--captions-per-image samples --captions files"),
        (["--hard-negatives", "--image-folder", "TRAIN"], "--hard-negatives samples --captions files by image"),
        (["--class-bank", "--captions", "CAPTIONS"], "--class-bank contrasts --image-folder images"),
        (["--class-bank", "--image-folder", "TRAIN", "--hash-captions"], "--hash-captions does not combine"),
    ],
)
def test_bad_shape_options_are_refused_by_name(data, tmp_path, capsys, extra, words):
    places = {"CAPTIONS": str(data / "captions.csv"), "TRAIN": str(data / "train")}
    with pytest.raises(SystemExit) as stopped:
        main(_options(data, tmp_path / "run", "--steps", "2", *[places.get(word, word) for word in extra]))
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert words in error


def test_the_defaults_keep_one_text_per_image():
    config = check_options(parse_config(["--model", "unicl_tiny", "--batch-size", "2", "--steps", "1",
                                         "--output", "x", "--image-folder", "."]))  # fmt: skip
    assert (config.class_bank, config.captions_per_image, config.hard_negatives) == (False, 1, False)


def _records(output: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (output / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _same_weights(first: Path, second: Path) -> None:
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_three_captions_per_image_with_hard_negatives_train_stop_and_resume_bit_for_bit(data, tmp_path):
    """A caption file of three captions per image trains on batches of 4 images × 3 captions + their hard
    negatives, and a run stopped at step 3 and resumed from step 2's checkpoint ends with the same weights."""
    from unicl.training import Trainer
    from unicl.training.runtime import start_runtime

    shaped = ["--steps", "4", "--captions", data / "captions.csv", "--captions-per-image", "3", "--hard-negatives"]
    main(_options(data, tmp_path / "whole", *shaped))
    main(_options(data, tmp_path / "split", *shaped, "--save-every", "2", "--stop-after", "3"))
    main(_options(data, tmp_path / "split", *shaped, "--resume", "auto"))
    assert _records(tmp_path / "split", "resume")[0]["step"] == 2
    _same_weights(tmp_path / "whole" / "final", tmp_path / "split" / "final")
    losses = [record["loss"] for record in _records(tmp_path / "whole", "train")]
    assert len(losses) == 4 and all(loss > 0 for loss in losses)

    trainer = Trainer(check_options(parse_config(_options(data, tmp_path / "batches", *shaped))), start_runtime("cpu"))
    batch = next(trainer.batches)
    labels, text_labels = batch["labels"], batch["text_labels"]
    assert labels.shape == (4,) and len(set(labels.tolist())) == 4
    assert batch["input_ids"].shape[0] == text_labels.shape[0] == 4 * 3 + 4 * 2
    for label in labels.tolist():  # each image's three captions, then its two hard negatives at the end
        assert (text_labels == label).sum() == 3
    assert text_labels[12:].tolist() == [-1] * 8
    trainer.batches.close()
    trainer.log.close()


@pytest.mark.parametrize("shape", ["captions", "class-bank"])
def test_gradient_caching_trains_batches_of_other_shapes_as_the_whole_batch_does(data, tmp_path, shape):
    """--micro-batch 2 on batches of 4 images and more texts (three captions each plus hard negatives, or a class
    bank) trains as the same run on the whole batch (`training_runs.assert_cached_run_matches`)."""
    shaped = {
        "captions": ["--captions", data / "captions.csv", "--captions-per-image", "3", "--hard-negatives"],
        "class-bank": ["--image-folder", data / "train", "--captions", data / "captions.csv", "--class-bank"],
    }[shape]
    for name, extra in (("whole", []), ("cached", ["--micro-batch", "2"])):
        main(_options(data, tmp_path / name, "--steps", "3", *shaped, *extra))
    assert_cached_run_matches(tmp_path / "whole", tmp_path / "cached", steps=3, lr=1e-3)


@pytest.mark.slow
def test_a_class_bank_run_trains_on_every_class_prompt_and_resumes_bit_for_bit(data, tmp_path):
    from unicl.training import Trainer
    from unicl.training.runtime import start_runtime

    banked = ["--steps", "4", "--image-folder", data / "train", "--captions", data / "captions.csv", "--class-bank"]
    main(_options(data, tmp_path / "whole", *banked))
    main(_options(data, tmp_path / "split", *banked, "--save-every", "2", "--stop-after", "3"))
    main(_options(data, tmp_path / "split", *banked, "--resume", "auto"))
    _same_weights(tmp_path / "whole" / "final", tmp_path / "split" / "final")

    trainer = Trainer(check_options(parse_config(_options(data, tmp_path / "batches", *banked))), start_runtime("cpu"))
    for _ in range(3):
        batch = next(trainer.batches)
        labels, text_labels = batch["labels"], batch["text_labels"]
        # 2 labelled images with a prompt each, 2 caption groups of 1 caption, then the classes neither image has.
        assert bool((labels[:2] < 3).all()) and bool((labels[2:] >= 3).all())
        assert text_labels[:4].tolist() == labels.tolist()
        absent = sorted(set(range(3)) - set(labels[:2].tolist()))
        assert text_labels[4:].tolist() == absent and batch["input_ids"].shape[0] == 4 + len(absent)
    trainer.batches.close()
    trainer.log.close()
