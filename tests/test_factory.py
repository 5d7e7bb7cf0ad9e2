"""`unicl.create_model_and_transforms`: the model and its transforms, open_clip's order, against `image_transform`."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import unicl
from unicl.models import get_config


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = torch.randint(0, 256, (height, width, 3), generator=torch.Generator().manual_seed(seed))
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def test_a_preset_comes_with_image_transforms_train_and_eval_transforms():
    model, train, evaluate = unicl.create_model_and_transforms("unicl_tiny", embed_dim=32)
    assert isinstance(model, unicl.UniCLModel)
    assert model.config == get_config("unicl_tiny", embed_dim=32)
    image = _image(32, 32)  # images of 32 pixels or less are used at their size
    # The evaluation transform is deterministic: exactly image_transform's output.
    torch.testing.assert_close(evaluate(image), unicl.image_transform("unicl_tiny")(image), rtol=0, atol=0)
    # The training augmentation is random: the same draws as image_transform(train=True) under the same seed.
    reference = unicl.image_transform("unicl_tiny", train=True)
    torch.manual_seed(5)
    got = [train(image) for _ in range(4)]
    torch.manual_seed(5)
    expected = [reference(image) for _ in range(4)]
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert a.shape == (3, 32, 32)
    assert any(not torch.equal(got[0], other) for other in got[1:])  # it does augment
    # Open_clip's order: the model takes what the evaluation transform makes.
    with torch.no_grad():
        features = model.eval().encode_image(evaluate(image)[None])
    assert features.shape == (1, 32)


@pytest.mark.slow
def test_a_224_pixel_preset_gets_the_released_evaluation_transform():
    model, train, evaluate = unicl.create_model_and_transforms("unicl_resnet50")
    image = _image(320, 240, seed=1)
    torch.testing.assert_close(evaluate(image), unicl.image_transform("unicl_resnet50")(image), rtol=0, atol=0)
    assert evaluate(image).shape == train(image).shape == (3, 224, 224)
    assert model.config.image.model_name == "resnet50"


@pytest.mark.slow
def test_pretrained_weights_and_saved_directories(tmp_path):
    source = unicl.create_model("unicl_tiny")
    source.save_pretrained(tmp_path / "saved")
    for model in (
        unicl.create_model_and_transforms("unicl_tiny", pretrained=tmp_path / "saved")[0],
        unicl.create_model_and_transforms(tmp_path / "saved")[0],
        unicl.create_model_and_transforms(str(tmp_path / "saved"), device="cpu")[0],
    ):
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError) as caught:
        unicl.create_model_and_transforms(tmp_path / "saved", pretrained=tmp_path / "saved", embed_dim=8)
    assert str(caught.value) == (
        f"pretrained and overrides go with a preset name, but {str(tmp_path / 'saved')!r} is a saved model "
        "directory, loaded as saved (got pretrained, embed_dim)"
    )


def test_errors_are_create_models(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown model 'unicl_huge'; known models: unicl_resnet50"):
        unicl.create_model_and_transforms("unicl_huge")
    monkeypatch.setenv("UNICL_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pretrained='yfcc14m' of unicl_swin_tiny: .*yfcc14m\.pth does not "
                       r"exist; unicl downloads nothing, so fetch https://projects4jw"):  # fmt: skip
        unicl.create_model_and_transforms("unicl_swin_tiny", pretrained="yfcc14m")


def test_the_public_names_load_lazily_from_their_modules():
    from unicl.factory import create_model_and_transforms
    from unicl.models.presets import register_model
    from unicl.models.pretrained import list_pretrained

    assert unicl.create_model_and_transforms is create_model_and_transforms
    assert unicl.register_model is register_model
    assert unicl.list_pretrained is list_pretrained
    assert {"create_model_and_transforms", "register_model", "list_pretrained"} <= set(unicl.__all__)
