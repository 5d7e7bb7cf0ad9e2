"""Model adapters (``open_clip:ARCH``, ``hf:DIR``): parity with open_clip's and transformers' own models on the same
weights and inputs, token ids, save/load round trips, one-line errors, and the training and evaluation commands.

Every model here is small and built on this machine: an open_clip ViT registered from a config dict and saved as a
state dict file, a transformers ``CLIPModel`` (with CLIP's real BPE, from open_clip's merges file) and a
``SiglipModel`` (with a fast tokenizer trained here) saved with ``save_pretrained``. Features and zero-shot heads are
compared with a fixed relative bound of 1e-5 in float32; the zero-shot reference head is the float64 normalised
mean of the library's own normalised prompt features.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import unicl
from unicl.evaluation.zeroshot import build_zeroshot_classifier
from unicl.text.tokenizer import CLIP_NUM_MERGES, Tokenizer, bytes_to_unicode, find_clip_merges

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402
from tokenizers import models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

#: The parity bound: relative error of the adapter's float32 result against the library's own.
RELATIVE = 1e-5
ARCH = "unicl-test-tiny-vit"
NAMES = ["cat", "dog", "small bird"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}"]
TEXTS = ["a photo of a cat", "Hello World! &amp; a very long caption " * 4, "ÜNICODE  spaces"]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest entry error over the largest entry, in float64."""
    actual, expected = actual.double(), expected.double()
    return float((actual - expected).abs().max() / expected.abs().max())


def _images(count: int, size: int = 40) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, size, size, 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(p.numpy()) for p in pixels]


def _reference_head(encode, class_names, templates) -> torch.Tensor:
    """The zero-shot head from the library's own text features: per class the normalised mean of the normalised
    prompt features, in float64."""
    rows = []
    for name in class_names:
        features = encode([template.format(name) for template in templates]).double()
        mean = torch.nn.functional.normalize(features, dim=-1).mean(0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def open_clip_file(folder) -> Path:
    """A tiny open_clip ViT registered as ``ARCH``, its random weights saved as a state dict file."""
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (folder / "configs").mkdir()
    (folder / "configs" / f"{ARCH}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "configs")
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)  # not the initial value, so loading it is checked
    torch.save(model.state_dict(), folder / "open_clip.pt")
    return folder / "open_clip.pt"


def _clip_tokenizer():
    """transformers' CLIPTokenizer on CLIP's real BPE (the merges file open_clip ships)."""
    with gzip.open(find_clip_merges(), "rt", encoding="utf-8") as handle:
        merges = [tuple(line.split()) for line in handle.read().split("\n")[1 : CLIP_NUM_MERGES + 1]]
    characters = list(bytes_to_unicode().values())
    tokens = characters + [c + "</w>" for c in characters] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return transformers.CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


@pytest.fixture(scope="module")
def clip_dir(folder) -> Path:
    torch.manual_seed(1)
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 49406,
                     "eos_token_id": 49407, "pad_token_id": 49407},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    directory = folder / "clip"
    transformers.CLIPModel(config).save_pretrained(directory)
    _clip_tokenizer().save_pretrained(directory)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def siglip_dir(folder) -> Path:
    """A SiglipModel with a fast tokenizer trained here: text, then ``</s>``, padded with ``<pad>``."""
    torch.manual_seed(2)
    base = HFTokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = normalizers.Lowercase()
    base.pre_tokenizer = pre_tokenizers.Metaspace()
    corpus = [template.format(name) for template in TEMPLATES for name in NAMES] + TEXTS
    base.train_from_iterator(corpus * 5, trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"]))
    base.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=base, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=16
    )
    config = transformers.SiglipConfig(
        text_config={"vocab_size": 120, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
    )  # fmt: skip
    directory = folder / "siglip"
    model = transformers.SiglipModel(config)
    with torch.no_grad():
        model.logit_bias.fill_(-3.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


@functools.cache
def _tokenizers(directory: Path):
    """transformers' own tokenizer of a model directory, read once."""
    return transformers.AutoTokenizer.from_pretrained(directory)


@functools.cache
def _ours(directory: Path) -> Tokenizer:
    """unicl's tokenizer of a model directory, read once."""
    return unicl.get_tokenizer(f"hf:{directory}")


def _open_clip_case(open_clip_file):
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=str(open_clip_file))
    tokenize = open_clip.get_tokenizer(ARCH)
    model.eval()

    def images(batch):
        return model.encode_image(torch.stack([preprocess(image) for image in batch]))

    def texts(batch):
        return model.encode_text(tokenize(batch))

    return f"open_clip:{ARCH}", {"pretrained": open_clip_file}, images, texts, tokenize


def _hf_case(directory, padding_mask: bool):
    model = transformers.AutoModel.from_pretrained(directory).eval()
    processor = transformers.AutoProcessor.from_pretrained(directory)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    length = model.config.text_config.max_position_embeddings

    def tokenize(batch):
        return tokenizer(batch, padding="max_length", max_length=length, truncation=True, return_tensors="pt")

    def images(batch):
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
        return model.get_image_features(pixel_values=pixels).pooler_output

    def texts(batch):
        encoded = tokenize(batch)
        mask = encoded["attention_mask"] if padding_mask else None
        return model.get_text_features(input_ids=encoded["input_ids"], attention_mask=mask).pooler_output

    return f"hf:{directory}", {}, images, texts, lambda batch: tokenize(batch)["input_ids"]


@pytest.fixture(scope="module", params=["open_clip", "hf-clip", "hf-siglip"])
def case(request, open_clip_file, clip_dir, siglip_dir):
    """``(name, create arguments, own image features, own text features, own token ids)`` of one library's model."""
    if request.param == "open_clip":
        return _open_clip_case(open_clip_file)
    # SigLIP reads no attention mask (its processor makes none); CLIP's text tower reads it.
    return _hf_case(clip_dir, True) if request.param == "hf-clip" else _hf_case(siglip_dir, False)


def _adapter_and_pixels(name, arguments, images):
    """The adapter model (in eval mode) and ``images`` through its own evaluation transform, ``[B, 3, S, S]``."""
    model, _, transform = unicl.create_model_and_transforms(name, **arguments)
    return model.eval(), torch.stack([transform(image) for image in images])


@torch.no_grad()
def test_features_and_zeroshot_head_equal_the_librarys_own(case):
    name, arguments, own_images, own_texts, _ = case
    images = _images(3)
    model, pixels = _adapter_and_pixels(name, arguments, images)
    adapter_images = model.encode_image(pixels, normalize=False)
    assert relative_error(adapter_images, own_images(images)) <= RELATIVE
    head = build_zeroshot_classifier(model, unicl.get_tokenizer(name), NAMES, TEMPLATES)
    assert head.dtype == torch.float32
    assert relative_error(head, _reference_head(own_texts, NAMES, TEMPLATES)) <= RELATIVE


def test_token_ids_are_the_librarys_own(case):
    name, _, _, _, own_ids = case
    tokenizer = unicl.get_tokenizer(name)
    assert torch.equal(tokenizer(TEXTS)["input_ids"], own_ids(TEXTS))


@pytest.mark.slow
@torch.no_grad()
def test_saved_model_reloads_without_the_original_files(case, tmp_path):
    name, arguments, _, _, _ = case
    model = unicl.create_model(name, **arguments).eval()
    model.save_pretrained(tmp_path / "saved")
    again = unicl.load_model(tmp_path / "saved").eval()
    assert type(again) is type(model)
    tokenizer = unicl.get_tokenizer(tmp_path / "saved")
    pixels = torch.randn(2, 3, 32, 32)
    ids = tokenizer(TEXTS[:2])
    assert torch.equal(again.encode_image(pixels), model.encode_image(pixels))
    assert torch.equal(again.encode_text(**ids), model.encode_text(**ids))
    assert torch.equal(ids["input_ids"], unicl.get_tokenizer(name)(TEXTS[:2])["input_ids"])
    assert torch.equal(again.clamped_logit_scale(), model.clamped_logit_scale())


@pytest.mark.slow
def test_forward_scale_bias_and_groups_follow_the_wrapped_model(case):
    name, arguments, _, _, _ = case
    model = unicl.create_model(name, **arguments)
    ids = unicl.get_tokenizer(name)(["a cat", "a dog"])
    outputs = model(torch.randn(2, 3, 32, 32), ids["input_ids"], ids["attention_mask"])
    assert outputs["image_features"].shape == outputs["text_features"].shape
    assert torch.allclose(outputs["image_features"].norm(dim=-1), torch.ones(2))
    assert ("logit_bias" in outputs) == ("siglip" in name)
    assert model.logit_scale is model.model.logit_scale
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.bound_logit_scale_()
    assert float(model.clamped_logit_scale().detach()) <= model.config.max_logit_scale
    groups = model.param_groups(0.1)
    grouped = [p for group in groups for p in group["params"]]
    assert len(grouped) == len(list(model.parameters())) == len({id(p) for p in grouped})
    assert all(p.dim() >= 2 for p in groups[0]["params"])


@pytest.mark.slow
@torch.no_grad()
def test_backbone_features_are_the_towers_output_before_its_projection(case):
    name, arguments, own_images, _, _ = case
    images = _images(2)
    model, pixels = _adapter_and_pixels(name, arguments, images)
    backbone = model.image_encoder(pixels)
    wrapped = model.model
    if name.startswith("open_clip:"):
        projected = backbone @ wrapped.visual.proj
    elif hasattr(wrapped, "visual_projection"):
        projected = wrapped.visual_projection(backbone)
    else:
        projected = backbone  # SigLIP's head output is its image embedding
    assert backbone.shape[1] != 16 or projected is backbone
    assert relative_error(projected, own_images(images)) <= RELATIVE


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(texts=st.lists(st.text(min_size=0, max_size=60), min_size=1, max_size=4))
def test_ids_equal_transformers_for_any_text(siglip_dir, clip_dir, texts):
    """Rows without a start token (SigLIP's), with one (CLIP's), truncated or padded: transformers' ids and mask, and
    the same after the tokenizer's saved state is read back."""
    for directory in (siglip_dir, clip_dir):
        ours = _ours(directory)
        theirs = _tokenizers(directory)(
            texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt"
        )
        encoded = ours(texts)
        assert torch.equal(encoded["input_ids"], theirs["input_ids"])
        assert torch.equal(encoded["attention_mask"], theirs["attention_mask"])
        again = Tokenizer.from_state(ours.to_state())
        assert torch.equal(again(texts)["input_ids"], encoded["input_ids"])


def test_list_models_shows_the_adapter_families():
    assert unicl.list_models("open_clip:*") == ["open_clip:<arch>"]
    assert "hf:<dir>" in unicl.list_models()


def test_bad_names_and_missing_files_get_one_line(tmp_path, open_clip_file):
    cases = [
        (lambda: unicl.create_model("open_clip:No-Such-Arch"), ValueError, "unknown open_clip architecture"),
        (lambda: unicl.create_model(f"open_clip:{ARCH}", pretrained=tmp_path / "missing.pt"), FileNotFoundError,
         "missing.pt"),
        (lambda: unicl.create_model(f"open_clip:{ARCH}", pretrained="laion2b_s34b_b79k"), FileNotFoundError,
         "downloads nothing"),
        (lambda: unicl.create_model(f"hf:{tmp_path / 'nothing'}"), FileNotFoundError, "nothing"),
        (lambda: unicl.get_tokenizer(f"hf:{tmp_path / 'nothing'}"), FileNotFoundError, "nothing"),
        (lambda: unicl.create_model("open_clip:"), ValueError, "names no architecture"),
        (lambda: unicl.create_model(f"open_clip:{ARCH}", embed_dim=8), ValueError, "embed_dim"),
        (lambda: unicl.create_model(f"open_clip:{ARCH}", logit_bias=-10.0), ValueError, "no logit bias"),
        (lambda: unicl.create_model("open_clip:ViT-B-32-SigLIP2-256"), ValueError, "Hugging Face hub"),
    ]  # fmt: skip
    bad = tmp_path / "bad.pt"
    torch.save({"nothing": torch.zeros(1)}, bad)
    cases.append((lambda: unicl.create_model(f"open_clip:{ARCH}", pretrained=bad), ValueError, "does not fit"))
    for call, error, words in cases:
        with pytest.raises(error) as raised:
            call()
        assert words in str(raised.value) and "\n" not in str(raised.value), str(raised.value)


def test_missing_library_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'unicl\[hf\]'"):
        unicl.create_model("hf:anything")
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match=r"pip install 'unicl\[open_clip\]'"):
        unicl.get_tokenizer("open_clip:ViT-B-32")


@pytest.mark.slow
def test_real_architecture_builds_without_weights():
    model, _, transform = unicl.create_model_and_transforms("open_clip:ViT-B-32")
    assert transform(Image.new("RGB", (300, 200))).shape == (3, 224, 224)
    ids = unicl.get_tokenizer("open_clip:ViT-B-32")(TEXTS)
    assert torch.equal(ids["input_ids"], open_clip.get_tokenizer("ViT-B-32")(TEXTS))
    assert model.encode_text(ids["input_ids"][:1]).shape == (1, 512)


def _image_folder(root: Path, count: int) -> Path:
    for index, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for number, image in enumerate(_images(count, size=32)):
            # A class-coloured corner, so the classes differ.
            image.paste((80 * index, 255 - 80 * index, 0), (0, 0, 8, 8))
            image.save(root / name / f"{number}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["open_clip", "hf-clip", "hf-siglip"])
def test_training_and_evaluation_commands(kind, tmp_path, open_clip_file, clip_dir, siglip_dir):
    from unicl.evaluate import main as evaluate
    from unicl.train import main as train

    train_folder, eval_folder = _image_folder(tmp_path / "train", 2), _image_folder(tmp_path / "eval", 1)
    model = {"open_clip": [f"open_clip:{ARCH}", "--pretrained", open_clip_file],
             "hf-clip": [f"hf:{clip_dir}"], "hf-siglip": [f"hf:{siglip_dir}"]}[kind]  # fmt: skip
    loss = ["--loss", "sigmoid"] if kind == "hf-siglip" else []
    run = tmp_path / "run"
    train([
        "--model", *map(str, model), "--image-folder", str(train_folder), "--eval-folder", str(eval_folder),
        "--steps", "2", "--batch-size", "4", "--output", str(run), "--workers", "0", "--no-progress",
        "--no-tensorboard", *loss,
    ])  # fmt: skip
    report = evaluate(["zeroshot", "--model", str(run / "final"), "--data", str(eval_folder), "--workers", "0",
                       "--device", "cpu", "--no-progress"])  # fmt: skip
    assert 0.0 <= report["top1"] <= 100.0
    assert type(unicl.load_model(run / "final")) is type(
        unicl.create_model(*map(str, model[:1]), **({"pretrained": open_clip_file} if kind == "open_clip" else {}))
    )


def test_training_a_siglip_model_with_the_softmax_objective_is_refused(tmp_path, siglip_dir, capsys):
    from unicl.train import main as train

    folder = _image_folder(tmp_path / "train", 1)
    with pytest.raises(SystemExit):
        train(["--model", f"hf:{siglip_dir}", "--image-folder", str(folder), "--steps", "1", "--batch-size", "2",
               "--output", str(tmp_path / "run"), "--workers", "0", "--no-progress", "--no-tensorboard"])  # fmt: skip
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--loss" in error and "--loss sigmoid" in error


def test_commands_name_the_model_argument_for_a_missing_directory(tmp_path, capsys):
    from unicl.evaluate import main as evaluate

    data = _image_folder(tmp_path / "eval", 1)
    with pytest.raises(SystemExit):
        evaluate(["zeroshot", "--model", f"hf:{tmp_path / 'gone'}", "--data", str(data), "--device", "cpu"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--model" in error and "gone" in error


@pytest.mark.slow
def test_gradient_caching_and_resume_train_an_adapter(tmp_path, clip_dir):
    from unicl.train import main as train

    folder = _image_folder(tmp_path / "train", 2)
    run = tmp_path / "run"
    common = ["--model", f"hf:{clip_dir}", "--image-folder", str(folder), "--batch-size", "4", "--micro-batch", "2",
              "--output", str(run), "--workers", "0", "--no-progress", "--no-tensorboard",
              "--save-every", "1"]  # fmt: skip
    train([*common, "--steps", "3", "--stop-after", "1"])
    final = train([*common, "--steps", "3", "--resume", "auto"])
    assert final is not None and type(unicl.load_model(final)).__name__ == "HFAdapter"
    assert json.loads((run / "final" / "training.json").read_text())["step"] == 3
