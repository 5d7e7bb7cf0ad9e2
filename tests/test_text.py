"""Prompts, tokenisation (with id-for-id parity against open_clip), unified batches and zero-shot classifiers."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from unicl import unicl_loss
from unicl.data.batches import PAIR_LABEL, UnifiedCollate
from unicl.evaluation.zeroshot import build_zeroshot_classifier, zeroshot_logits, zeroshot_predict
from unicl.text.prompts import DEFAULT_TEMPLATES, PLAIN_TEMPLATES, LabelToPrompt, check_templates, class_synonyms
from unicl.text.tokenizer import Tokenizer

open_clip = pytest.importorskip("open_clip")
CLIP_MERGES = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def _literal(text: str) -> str:
    return re.escape(text)


# --- prompts ---------------------------------------------------------------------------------------------------


def test_default_templates_are_many_distinct_and_valid():
    assert len(DEFAULT_TEMPLATES) >= 80
    assert len(set(DEFAULT_TEMPLATES)) == len(DEFAULT_TEMPLATES)
    check_templates(DEFAULT_TEMPLATES)
    check_templates(PLAIN_TEMPLATES)


@given(seed=st.integers(0, 2**20), ids=st.lists(st.integers(0, 2), min_size=1, max_size=30))
def test_draws_are_reproducible_and_contain_the_class_name(seed, ids):
    names = ["golden_retriever", "tabby cat, tabby", ["sports car", "race car"]]
    first, second = LabelToPrompt(names, seed=seed), LabelToPrompt(names, seed=seed)
    drawn = first(ids)
    assert drawn == second(ids)
    for class_id, prompt in zip(ids, drawn):
        assert any(synonym in prompt for synonym in first.synonyms[class_id])


class _PromptDataset(torch.utils.data.Dataset):
    def __init__(self, prompts: LabelToPrompt) -> None:
        self.prompts = prompts

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> str:
        return self.prompts.draw(index % self.prompts.num_classes)


def test_draws_differ_across_workers_and_epochs():
    prompts = LabelToPrompt([f"class {i}" for i in range(4)], seed=3)
    # Two workers, one sample per batch: worker 0 serves indices 0, 2, 4, 6 and worker 1 serves 1, 3, 5, 7.
    loader = DataLoader(_PromptDataset(prompts), batch_size=1, num_workers=2, multiprocessing_context="fork")
    drawn = [batch[0] for batch in loader]
    worker0, worker1 = drawn[0::2], drawn[1::2]
    templates = [
        [p.replace(f"class {i % 4}", "{}") for i, p in zip(range(w, 8, 2), ws)]
        for w, ws in ((0, worker0), (1, worker1))
    ]
    assert templates[0] != templates[1], "both workers drew the same template sequence"
    in_process = [prompts.draw(i % 4) for i in range(8)]
    prompts.set_epoch(1)
    assert [prompts.draw(i % 4) for i in range(8)] != in_process


def test_eval_mode_enumerates_every_template_and_synonym():
    prompts = LabelToPrompt(["dog", ["car", "automobile"]], templates=["a {}.", "art of a {}."])
    assert prompts.all_prompts(1) == ["a car.", "a automobile.", "art of a car.", "art of a automobile."]
    assert [len(p) for p in prompts] == [2, 4]


def test_class_name_clean_up():
    assert class_synonyms("  golden__retriever ") == ("golden retriever",)
    assert class_synonyms("tench, Tinca tinca") == ("tench", "Tinca tinca")
    assert class_synonyms("tench, Tinca tinca", split_commas=False) == ("tench, Tinca tinca",)
    assert class_synonyms(["cat", "cat ", "kitty"]) == ("cat", "kitty")


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: LabelToPrompt([]), ValueError, "class_names must be a non-empty sequence"),
        (lambda: LabelToPrompt(["a"], templates=["no slot"]), ValueError, "exactly one '{}' slot"),
        (lambda: LabelToPrompt(["a"], templates=["{} and {}"]), ValueError, "exactly one '{}' slot"),
        (lambda: LabelToPrompt(["a"], templates=[]), ValueError, "templates must not be empty"),
        (lambda: LabelToPrompt(["a", " _ "]), ValueError, "is empty after cleaning"),
        (lambda: LabelToPrompt(["a"]).draw(1), ValueError, "class id must be in [0, 1); got 1"),
        (lambda: LabelToPrompt(["a"]).draw(-1), ValueError, "class id must be in [0, 1); got -1"),
        (lambda: LabelToPrompt(["a"]).draw(0.5), TypeError, "class id must be an integer"),
    ],
)
def test_prompt_bad_input(call, error, words):
    with pytest.raises(error, match=_literal(words)):
        call()


# --- tokenizer -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_tokenizer() -> Tokenizer:
    return Tokenizer.from_clip_bpe(CLIP_MERGES)


def _varied_strings(count: int = 300) -> list[str]:
    rng = random.Random(0)
    pieces = [
        "a photo of a dog", "Hello, World!", "naïve café", "résumé", "Ångström", "東京タワー", "🐶🐱🚗", "👍🏽",
        "don't", "we'll", "it's", "12345", "3.14159", "$100.00", "e-mail", "C++", "#hashtag", "@user", "<b>bold</b>",
        "&amp;", "&lt;3", "tab\there", "new\nline", "UPPER case", "  padded  ", "...", "?!", "straße", "Ελληνικά",
        "русский", "العربية", "עברית", "한국어", "x" * 40, "¿qué?", "«quotes»", "“curly”", "—dash—", "½", "µm",
    ]  # fmt: skip
    texts = list(pieces)
    while len(texts) < count:
        texts.append(" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))))
    texts.append(" ".join(pieces) * 3)  # far beyond 77 tokens
    return texts


def test_clip_ids_equal_open_clip_id_for_id(clip_tokenizer):
    texts = _varied_strings()
    ours = clip_tokenizer(texts)["input_ids"]
    theirs = open_clip.tokenize(texts)
    mismatched = [t for t, a, b in zip(texts, ours, theirs) if not torch.equal(a, b)]
    assert mismatched == []
    assert clip_tokenizer.vocab_size == 49408


def test_truncation_keeps_the_end_token_and_the_mask_covers_start_to_end(clip_tokenizer):
    batch = clip_tokenizer(["word " * 200, "short text"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (2, 77) and ids.dtype == mask.dtype == torch.long
    assert ids[0, 0] == clip_tokenizer.start_id and ids[0, -1] == clip_tokenizer.end_id and bool(mask[0].all())
    length = int(mask[1].sum())
    assert ids[1, length - 1] == clip_tokenizer.end_id
    assert bool((ids[1, length:] == 0).all()) and bool((mask[1, length:] == 0).all())


def test_ascii_round_trip(clip_tokenizer):
    text = "a photo of a small red car parked near the old bridge"
    assert clip_tokenizer.decode(clip_tokenizer([text])["input_ids"][0]) == text


def test_trained_tokenizer_works_offline_and_round_trips(tmp_path):
    corpus = [f"a photo of a {name}" for name in ("cat", "dog", "car", "bird", "tree")] * 20
    tokenizer = Tokenizer.train(corpus, vocab_size=300, context_length=16)
    batch = tokenizer(["a photo of a bird", "A  Photo of a tree"])
    assert batch["input_ids"].shape == (2, 16)
    assert tokenizer.decode(batch["input_ids"][0]) == "a photo of a bird"
    assert tokenizer.decode(batch["input_ids"][1]) == "a photo of a tree"
    path = tmp_path / "tokenizer.json"
    tokenizer.tokenizer.save(str(path))
    reloaded = Tokenizer.from_file(path, context_length=16)
    assert torch.equal(reloaded(["a photo of a cat"])["input_ids"], tokenizer(["a photo of a cat"])["input_ids"])


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda p: Tokenizer.from_file(p / "missing.json"), FileNotFoundError, "missing.json' does not exist"),
        (lambda p: Tokenizer.from_clip_bpe(p / "missing.gz"), FileNotFoundError, "missing.gz' does not exist"),
        (
            lambda p: Tokenizer.from_clip_bpe(CLIP_MERGES, context_length=1),
            ValueError,
            "context_length must be an int >= 2",
        ),
        (
            lambda p: Tokenizer.from_file(_write(p / "bad.json", "not json")),
            ValueError,
            "is not a tokenizers JSON file",
        ),
        (
            lambda p: Tokenizer.from_clip_bpe(_write(p / "m.txt", "header\na b\n")),
            ValueError,
            "is not a CLIP merges file",
        ),
    ],
)
def test_tokenizer_bad_input(tmp_path, call, error, words):
    with pytest.raises(error, match=_literal(words)):
        call(tmp_path)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- unified batches -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_tokenizer() -> Tokenizer:
    corpus = [template.format(n) for template in DEFAULT_TEMPLATES for n in ("cat", "dog", "bird")]
    return Tokenizer.train([*corpus, "a cat sleeping on a sofa", "two dogs"], vocab_size=400, context_length=20)


def test_collate_shapes_and_label_rules(small_tokenizer):
    prompts = LabelToPrompt(["cat", "dog", "bird"], seed=1)
    samples = [(torch.rand(3, 8, 8), 2), (torch.rand(3, 8, 8), "a cat sleeping on a sofa"), (torch.rand(3, 8, 8), 0),
               (torch.rand(3, 8, 8), "two dogs"), (torch.rand(3, 8, 8), "two  dogs")]  # fmt: skip
    batch = UnifiedCollate(small_tokenizer, prompts)(samples)
    assert batch["images"].shape == (5, 3, 8, 8)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (5, 20)
    assert batch["labels"].tolist() == [2, PAIR_LABEL, 0, PAIR_LABEL, PAIR_LABEL]
    hashed = UnifiedCollate(small_tokenizer, prompts, hash_captions=True)(samples)["labels"]
    assert hashed[0] == 2 and hashed[2] == 0
    assert hashed[1] >= 3 and hashed[3] >= 3 and hashed[3] == hashed[4] != hashed[1]
    # A mixed batch goes through the loss.
    features = torch.randn(5, 16, requires_grad=True)
    loss = unicl_loss(features, torch.randn(5, 16), batch["labels"])
    loss.backward()
    assert torch.isfinite(loss) and features.grad is not None


@pytest.mark.parametrize(
    ("samples", "error", "words"),
    [
        ([(torch.zeros(1), 5)], ValueError, "samples[0]: class id must be in [0, 3); got 5"),
        ([(torch.zeros(1), 1.5)], TypeError, "samples[0]: class id must be an integer"),
        ([torch.zeros(1)], TypeError, "samples[0] must be (image, class_id or caption) or (image, prompt, class_id)"),
        ([(torch.zeros(1), 3, 1)], TypeError, "samples[0]: the prompt of a triple must be a str"),
        ([(torch.zeros(1), "a cat", 7)], ValueError, "samples[0]: class id must be in [0, 3); got 7"),
        ([], ValueError, "samples must not be empty"),
    ],
)
def test_collate_bad_input(small_tokenizer, samples, error, words):
    collate = UnifiedCollate(small_tokenizer, LabelToPrompt(["cat", "dog", "bird"]))
    with pytest.raises(error, match=_literal(words)):
        collate(samples)


def test_collate_keeps_the_prompt_a_labelled_triple_carries(small_tokenizer):
    prompts = LabelToPrompt(["cat", "dog"], templates=["a photo of a {}."])
    collate = UnifiedCollate(small_tokenizer, prompts)
    batch = collate([(torch.zeros(1), "a dog on grass", 1), (torch.ones(1), "a cat", 0), (torch.ones(1), "a dog")])
    assert batch["labels"].tolist() == [1, 0, PAIR_LABEL]
    expected = small_tokenizer(["a dog on grass", "a cat", "a dog"])
    assert torch.equal(batch["input_ids"], expected["input_ids"])


def test_prompt_draw_from_a_given_generator_ignores_the_stream():
    prompts = LabelToPrompt(["cat", ["dog", "puppy"]], seed=3)
    first = [prompts.draw(1, random.Random(f"key-{i}")) for i in range(20)]
    prompts.draw(0)  # advancing the worker stream changes nothing for keyed draws
    prompts.set_epoch(4)
    assert [prompts.draw(1, random.Random(f"key-{i}")) for i in range(20)] == first
    assert len(set(first)) > 1


# --- zero-shot -------------------------------------------------------------------------------------------------


class _KnownTextModel(torch.nn.Module):
    """Embeds a prompt as the one-hot of the first class word it contains, scaled by its length."""

    def __init__(self, tokenizer: Tokenizer, words: list[str]) -> None:
        super().__init__()
        self.tokenizer, self.words = tokenizer, words

    def encode_text(self, input_ids, attention_mask):
        rows = []
        for ids in input_ids:
            text = self.tokenizer.decode(ids)
            vector = torch.zeros(len(self.words) + 1)
            hits = [i for i, word in enumerate(self.words) if word in text]
            vector[hits[0] if hits else -1] = float(len(text))  # unnormalised on purpose
            vector[-1] += 0.5
            rows.append(vector)
        return torch.stack(rows)


def test_zeroshot_classifier_from_a_model_with_known_embeddings(small_tokenizer):
    words = ["cat", "dog", "bird"]
    model = _KnownTextModel(small_tokenizer, words)
    templates = ["a photo of a {}.", "art of the {}."]
    classifier = build_zeroshot_classifier(model, small_tokenizer, words, templates=templates, batch_size=3)
    assert classifier.shape == (3, 4)
    expected = []
    for word in words:
        prompts = [t.format(word) for t in templates]
        embedded = model.encode_text(small_tokenizer(prompts)["input_ids"], None)
        expected.append(torch.nn.functional.normalize(torch.nn.functional.normalize(embedded, dim=1).mean(0), dim=0))
    torch.testing.assert_close(classifier, torch.stack(expected))
    images = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 0.1, 0.0, 0.0]])
    assert zeroshot_predict(images, classifier).tolist() == [2, 0]
    assert zeroshot_predict(images, classifier, top_k=2).shape == (2, 2)
    assert zeroshot_logits(images, classifier).shape == (2, 3)
    with pytest.raises(ValueError, match="same D"):
        zeroshot_logits(torch.zeros(2, 5), classifier)
    with pytest.raises(ValueError, match="class_names must be a non-empty sequence"):
        build_zeroshot_classifier(model, small_tokenizer, [])


def test_clip_tokenizer_is_found_without_a_path():
    """Tokenizer.clip() finds open_clip's merges file (a dev dependency) and matches from_clip_bpe on it."""
    found = Tokenizer.clip(context_length=77)
    given = Tokenizer.from_clip_bpe(CLIP_MERGES, context_length=77)
    texts = ["a photo of a dog.", "Two CATS on a sofa!"]
    assert torch.equal(found(texts)["input_ids"], given(texts)["input_ids"])


def test_clip_tokenizer_falls_back_to_the_hugging_face_cache_then_says_how_to_get_one(tmp_path, monkeypatch):
    import gzip
    import importlib.util

    import unicl.text.tokenizer as tokenizer_module

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        tokenizer_module.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "open_clip" else real_find_spec(name, *args),
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pip install open_clip_torch"):
        Tokenizer.clip()
    snapshot = tmp_path / "models--openai--clip-vit-base-patch32" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    with gzip.open(CLIP_MERGES, "rt", encoding="utf-8") as handle:
        (snapshot / "merges.txt").write_text(handle.read(), encoding="utf-8")
    assert tokenizer_module.find_clip_merges() == snapshot / "merges.txt"
    from_cache = Tokenizer.clip(context_length=16)
    reference = Tokenizer.from_clip_bpe(CLIP_MERGES, context_length=16)
    assert torch.equal(from_cache("a red car")["input_ids"], reference("a red car")["input_ids"])
