"""Encoders, heads, the UniCL model, presets, and a short real training run on digits."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import unicl
from unicl.models import TextConfig, TextTransformer, get_config, projection_head

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _ids(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in unicl.list_models() if ":" not in name])  # presets
def test_every_preset_gives_normalised_embeddings_of_the_right_shape(name):
    torch.manual_seed(0)
    model = unicl.create_model(name).eval()
    config = model.config
    size = config.image.image_size if "swin" in name or name == "unicl_tiny" else 64
    images = torch.randn(2, config.image.in_chans, size, size)
    input_ids = _ids(2, 10, config.text.vocab_size)
    with torch.no_grad():
        out = model(images, input_ids, torch.ones_like(input_ids))
    assert set(out) == {"image_features", "text_features", "logit_scale"}
    for key in ("image_features", "text_features"):
        assert out[key].shape == (2, config.embed_dim)
        torch.testing.assert_close(out[key].norm(dim=1), torch.ones(2))
    assert model.encode_image(images, normalize=False).norm(dim=1).sub(1).abs().max() > 1e-3


def test_paper_presets_match_the_paper():
    for name in ("unicl_swin_tiny", "unicl_swin_base", "unicl_resnet50"):
        config = get_config(name)
        assert (config.text.layers, config.text.width, config.text.heads) == (12, 512, 8)
        assert (config.text.context_length, config.text.vocab_size, config.embed_dim) == (77, 49408, 512)
    assert get_config("unicl_swin_tiny").image.model_name.startswith("swin_tiny")


@pytest.mark.parametrize("causal", [True, False])
def test_padding_never_changes_text_features(causal):
    torch.manual_seed(1)
    encoder = TextTransformer(TextConfig(vocab_size=50, context_length=20, width=32, layers=2, heads=4, causal=causal))
    encoder.eval()
    ids = _ids(3, 7, 50, seed=2)
    short = encoder(ids, torch.ones_like(ids))
    for pad_value in (0, 17):
        padded = torch.full((3, 20), pad_value)
        padded[:, :7] = ids
        mask = torch.zeros(3, 20, dtype=torch.long)
        mask[:, :7] = 1
        torch.testing.assert_close(encoder(padded, mask), short, rtol=1e-5, atol=1e-5)


def test_pooling_uses_the_mask_not_the_largest_id():
    torch.manual_seed(3)
    encoder = TextTransformer(TextConfig(vocab_size=50, context_length=8, width=16, layers=1, heads=2)).eval()
    ids = torch.tensor([[1, 49, 5, 2, 0, 0, 0, 0]])  # the largest id sits before the end token
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]])
    torch.testing.assert_close(encoder(ids, mask), encoder(ids[:, :4], mask[:, :4]))


def test_temperature_starts_at_one_over_0_07_and_is_clamped_at_100():
    model = unicl.create_model("unicl_tiny")
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    out = model(torch.randn(1, 3, 32, 32), _ids(1, 5, 1000))
    assert out["logit_scale"].item() == 100.0


def test_loss_plumbing_reaches_every_parameter():
    torch.manual_seed(4)
    model = unicl.create_model("unicl_tiny")
    ids = _ids(6, 9, 1000)
    out = model(torch.randn(6, 3, 32, 32), ids, torch.ones_like(ids))
    unicl.UniCLLoss()(**out, labels=torch.tensor([0, 0, 1, -1, 2, 2])).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


def test_param_groups_keep_norms_biases_embeddings_and_temperature_out_of_decay():
    model = unicl.create_model("unicl_tiny")
    decay, no_decay = model.param_groups(weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model.logit_scale) in no_decay_ids
    assert id(model.text_encoder.token_embedding.weight) in no_decay_ids
    assert id(model.text_encoder.positional_embedding) in no_decay_ids
    assert all(p.dim() >= 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_state_dict_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(5)
    model = unicl.create_model("unicl_tiny").eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(6)
    restored = unicl.create_model("unicl_tiny").eval()
    restored.load_state_dict(torch.load(path))
    images, ids = torch.randn(2, 3, 32, 32), _ids(2, 8, 1000)
    for key, value in model(images, ids).items():
        assert torch.equal(restored(images, ids)[key], value)


def test_heads_and_freezing():
    assert projection_head(8, 4).bias is None
    mlp = projection_head(8, 4, "mlp")
    assert mlp(torch.randn(2, 8)).shape == (2, 4)
    frozen = unicl.create_model("unicl_tiny", image={"freeze": True})
    assert not any(p.requires_grad for p in frozen.image_encoder.parameters())


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (
            lambda: unicl.create_model("unicl_huge"),
            ValueError,
            "unknown model 'unicl_huge'; known models: unicl_resnet50",
        ),
        (lambda: unicl.create_model("unicl_tiny", depth=3), ValueError, "unknown model config field(s) ['depth']"),
        (lambda: unicl.create_model("unicl_tiny", text={"depth": 3}), ValueError, "unknown text config field(s)"),
        (lambda: unicl.create_model("unicl_tiny", image={"model_name": "no_such_net"}), ValueError, "not a timm model"),
        (lambda: unicl.create_model("unicl_tiny", projection="deep"), ValueError, "projection must be one of"),
        (
            lambda: unicl.create_model("unicl_tiny", image={"checkpoint_path": "/no/file.pt"}),
            FileNotFoundError,
            "/no/file.pt",
        ),
        (
            lambda: unicl.create_model("unicl_tiny", text={"width": 30, "heads": 4}),
            ValueError,
            "width must be divisible by heads",
        ),
    ],
)
def test_bad_configuration(call, error, words):
    with pytest.raises(error, match=re.escape(words)):
        call()


@pytest.fixture(scope="module")
def tiny_model():
    return unicl.create_model("unicl_tiny").eval()


@pytest.mark.parametrize(
    ("images", "ids", "mask", "words"),
    [
        (torch.randn(1, 3, 48, 48), _ids(1, 4, 1000), None, "takes 32x32 images (image_size in its config); got 48x48"),
        (torch.randn(1, 1, 32, 32), _ids(1, 4, 1000), None, "images must have 3 channels"),
        (torch.randn(3, 32, 32), _ids(1, 4, 1000), None, "images must be a [B, C, H, W] tensor"),
        (torch.randn(1, 3, 32, 32), _ids(1, 17, 1000), None, "input_ids are 17 tokens long; the context length is 16"),
        (
            torch.randn(1, 3, 32, 32),
            _ids(1, 4, 1000),
            torch.ones(1, 5),
            "attention_mask must have the shape of input_ids",
        ),
    ],
)
def test_bad_inputs(tiny_model, images, ids, mask, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        tiny_model(images, ids, mask)


@pytest.mark.slow
def test_short_training_on_digits_beats_chance_by_a_wide_margin(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import train_digits
    finally:
        sys.path.remove(str(EXAMPLES))
    results = train_digits.main(["--epochs", "8", "--out", str(tmp_path)])
    assert results["UniCL (label-aware targets)"] > 0.8  # chance is 0.1
    assert (tmp_path / "curves.png").stat().st_size > 0


# --- the preset registry -------------------------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch):
    """The preset registry, restored after the test (registrations do not leak into other tests)."""
    from unicl.models import presets

    monkeypatch.setattr(presets, "_PRESETS", dict(presets._PRESETS))
    return presets


def test_a_registered_config_is_a_preset_everywhere_and_never_shared(registry):
    config = get_config("unicl_tiny", embed_dim=24, image={"image_size": 48})
    preset = unicl.register_model("my_tiny", config, tokenizer="trained")
    assert preset.tokenizer == "trained"
    assert "my_tiny" in unicl.list_models() and unicl.list_models("my_*") == ["my_tiny"]
    model = unicl.create_model("my_tiny", text={"layers": 1})
    assert (model.config.embed_dim, model.config.text.layers) == (24, 1)
    # Each use gets its own copy: changing one (or the registered object) changes no other.
    config.embed_dim = 7
    model.config.image.timm_kwargs["depth"] = 9
    again = get_config("my_tiny")
    assert again.embed_dim == 24 and again.image.timm_kwargs["depth"] == 2
    assert again.text.layers == 2
    assert unicl.models.preset_tokenizer("my_tiny") == "trained"
    # Above 32 pixels the evaluation transform resizes and crops to the preset's image size.
    assert unicl.image_transform("my_tiny")(Image.new("RGB", (100, 80))).shape == (3, 48, 48)
    with pytest.raises(ValueError, match="my_tiny's tokenizer is trained on each run's own text"):
        unicl.get_tokenizer("my_tiny")


def _clip_sized(config):
    """``config`` with a text tower that embeds CLIP's 49,408 ids, as a preset with the default tokenizer needs."""
    config.text = dataclasses.replace(config.text, vocab_size=49408)
    return config


def test_a_registered_factory_is_called_for_each_model(registry):
    calls = []

    def factory():
        calls.append(1)
        return _clip_sized(get_config("unicl_tiny", embed_dim=16))

    unicl.register_model("counted", factory)
    assert len(calls) == 1  # checked once when registered
    assert unicl.create_model("counted").config.embed_dim == 16
    assert get_config("counted") is not get_config("counted")
    assert len(calls) == 4
    assert unicl.models.preset_tokenizer("counted") == "clip"  # the default


def test_a_duplicate_name_is_refused_unless_overwrite(registry):
    with pytest.raises(ValueError) as caught:
        unicl.register_model("unicl_tiny", get_config("unicl_tiny", embed_dim=8))
    assert str(caught.value) == "model 'unicl_tiny' is already registered; pass overwrite=True to replace it"
    assert get_config("unicl_tiny").embed_dim == 64  # unchanged
    unicl.register_model("unicl_tiny", get_config("unicl_tiny", embed_dim=8), tokenizer="trained", overwrite=True)
    assert get_config("unicl_tiny").embed_dim == 8


def test_unknown_names_list_the_known_ones_and_unregister_removes(registry):
    unicl.register_model("extra", _clip_sized(get_config("unicl_tiny")))
    for call in (get_config, unicl.create_model, unicl.models.preset_tokenizer, unicl.models.unregister_model):
        with pytest.raises(ValueError) as caught:
            call("unicl_huge")
        assert str(caught.value) == (
            "unknown model 'unicl_huge'; known models: extra, unicl_resnet50, unicl_swin_base, unicl_swin_tiny, "
            "unicl_tiny, hf:<dir>, open_clip:<arch>"
        )
    assert unicl.models.unregister_model("extra").tokenizer == "clip"
    assert "extra" not in unicl.list_models()


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (("", get_config("unicl_tiny")), ValueError, "name must be a non-empty string; got ''"),
        (("x", get_config("unicl_tiny"), "bpe"), ValueError, "tokenizer must be one of 'clip', 'trained'; got 'bpe'"),
        (("x", {"embed_dim": 8}), TypeError, "config_or_factory must be a UniCLConfig or a function returning one; "
                                             "got dict"),
        (("x", lambda: 3), TypeError, "config_or_factory of 'x' must return a UniCLConfig; it returned int"),
        (("x", get_config("unicl_tiny")), ValueError, "model 'x': its text tower embeds 1000 ids but CLIP's tokenizer "
                                                      "has 49,408; register it with tokenizer='trained' or a text "
                                                      "vocab_size of at least 49408"),
    ],
)  # fmt: skip
def test_bad_registrations_say_what_was_expected(registry, arguments, error, message):
    with pytest.raises(error) as caught:
        unicl.register_model(*arguments)
    assert str(caught.value) == message
    assert "x" not in unicl.list_models()


def test_the_logit_scale_bound_keeps_the_gradient_at_the_bound_and_projects_the_parameter():
    model = unicl.create_model("unicl_tiny")
    with torch.no_grad():
        model.logit_scale.fill_(math.log(model.config.max_logit_scale) + 0.5)
    assert float(model.clamped_logit_scale()) == pytest.approx(model.config.max_logit_scale)
    model.clamped_logit_scale().backward()
    assert model.logit_scale.grad is not None and float(model.logit_scale.grad) == 0.0  # frozen above the bound
    model.bound_logit_scale_()
    assert float(model.logit_scale) == pytest.approx(math.log(model.config.max_logit_scale), abs=1e-6)
    assert float(model.logit_scale.exp()) <= model.config.max_logit_scale
    model.logit_scale.grad = None
    model.clamped_logit_scale().backward()
    assert float(model.logit_scale.grad) == pytest.approx(model.config.max_logit_scale)  # d exp(x)/dx at the bound
    model.bound_logit_scale_()  # idempotent
    assert float(model.logit_scale.exp()) <= model.config.max_logit_scale
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.bound_logit_scale_()
    assert float(model.logit_scale) == 0.0
